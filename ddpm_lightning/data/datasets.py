"""Small `Dataset` wrappers: items are bare float32 tensors, or `(image, label)` pairs.

Batches in this package are plain tensors unless class labels are asked for, so the default
collate stacks them directly: in-memory tensors are served item by item (`TensorItems`, unlike
`TensorDataset`'s 1-tuples), torchvision's labelled datasets lose their label (`ImagesOnly`).
With `labels=True` a datamodule pairs each image with its class (`WithLabels`, from one label
tensor, so no image is decoded to read a label) and `collate_pairs` makes the batch the tuple
`(images, labels)`. The only augmentation, a horizontal flip, wraps the training split alone
(`RandomHFlip`), so validation and FID samples stay unaugmented; it flips the image of a pair
and keeps its label.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import Dataset, default_collate, get_worker_info

from ddpm_lightning.data.resumable import epoch_seed


class TensorItems(Dataset):
    """Rows of one tensor (N, ...) as items (...)."""

    def __init__(self, data: torch.Tensor) -> None:
        self.data = data

    def __len__(self) -> int:
        return self.data.shape[0]

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.data[i]


class ImagesOnly(Dataset):
    """Item 0 of every `(image, target)` pair of a labelled dataset (torchvision's)."""

    def __init__(self, data: Dataset) -> None:
        self.data = data

    def __len__(self) -> int:
        return len(self.data)  # type: ignore[arg-type]

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.data[i][0]


class WithLabels(Dataset):
    """Item i of `data` paired with `labels[i]`: `(image, label)`, the label a 0-d int64 tensor."""

    def __init__(self, data: Dataset, labels: torch.Tensor) -> None:
        if len(data) != len(labels):  # type: ignore[arg-type]
            raise ValueError(f"{len(labels)} labels for {len(data)} items")  # type: ignore[arg-type]
        self.data = data
        self.labels = labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.data[i], self.labels[i]


def collate_pairs(items: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    """`(image, label)` items -> the tuple `(images (B, ...), labels (B,) int64)`.

    The default collate would return a list; a tuple is what `images, labels = batch` reads
    and what the module is given. A module-level function, so spawned workers can pickle it."""
    images, labels = default_collate(items)
    return images, labels


class RandomHFlip(Dataset):
    """Mirror each image (C, H, W) left-right with probability `p`.

    The flips draw from the wrapper's own generator, seeded from (seed, epoch) at every epoch
    (`set_epoch`, which `EpochSampler` calls), not from torch's global one: they are then a
    function of the seed, the epoch and the position in it, and `state_dict` / `load_state_dict`
    carry that position (torchdata's `StatefulDataLoader` saves it in a checkpoint), so a
    resumed run flips the same images as an uninterrupted one. Inside a DataLoader worker the
    generator is reseeded from the worker's seed at its first item (unless a saved state was
    loaded there), so workers do not repeat each other's flips. Of an `(image, label)` item only
    the image is flipped, with the same draws as the image alone, so labels change no flip.
    """

    def __init__(self, data: Dataset, p: float = 0.5, seed: int = 0) -> None:
        self.data = data
        self.p = p
        self.seed = seed
        self.epoch = 0
        self.generator = torch.Generator().manual_seed(epoch_seed(seed, 0))
        self._worker_id: int | None = None  # the worker the generator was seeded for

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:  # the same epoch again (Lightning, after a resume) keeps the position
            self.epoch = epoch
            self.generator.manual_seed(epoch_seed(self.seed, epoch))

    def __len__(self) -> int:
        return len(self.data)  # type: ignore[arg-type]

    def __getitem__(self, i: int) -> Any:
        info = get_worker_info()
        if info is not None and self._worker_id != info.id:
            self.generator.manual_seed(info.seed)
            self._worker_id = info.id
        item = self.data[i]
        flip = torch.rand((), generator=self.generator) < self.p  # one draw per item, labelled or not
        if isinstance(item, tuple):  # (image, label): a mirrored cat is still a cat
            image, *rest = item
            return (image.flip(-1) if flip else image, *rest)
        return item.flip(-1) if flip else item

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state(), "epoch": self.epoch}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
        self.epoch = state["epoch"]
        info = get_worker_info()
        self._worker_id = info.id if info is not None else None
