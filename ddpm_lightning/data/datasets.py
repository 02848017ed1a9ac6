"""Small `Dataset` wrappers that make every item a bare float32 tensor.

Batches in this package are plain tensors, so the default collate stacks them directly:
in-memory tensors are served item by item (`TensorItems`, unlike `TensorDataset`'s 1-tuples),
labelled datasets lose their label (`ImagesOnly`), and the only augmentation, a horizontal flip,
wraps the training split alone (`RandomHFlip`), so validation and FID samples stay unaugmented.
"""

from __future__ import annotations

import torch
from torch.utils.data import Dataset


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


class RandomHFlip(Dataset):
    """Mirror each image (C, H, W) left-right with probability `p`.

    Draws from torch's global generator, which Lightning's `seed_everything` seeds and
    DataLoader workers re-seed per worker, so runs are reproducible with workers too.
    """

    def __init__(self, data: Dataset, p: float = 0.5) -> None:
        self.data = data
        self.p = p

    def __len__(self) -> int:
        return len(self.data)  # type: ignore[arg-type]

    def __getitem__(self, i: int) -> torch.Tensor:
        x = self.data[i]
        return x.flip(-1) if torch.rand(()) < self.p else x
