"""`DiffusionDataModule`: the contract every dataset of this package follows, and `data_shape_of`.

An unconditional diffusion model needs only one thing from its data: a stream of float32
tensors, images `(B, C, H, W)` in [-1, 1] or points `(B, 2)`, so by default batches are plain
tensors. A class-conditional one (`conditioning=class`, which sets `labels=True`) also needs each
example's class: batches are then tuples `(images, labels)`, labels `(B,)` int64 in
[0, num_classes). `num_classes` (None: the data has no classes) is known right after
construction, like `data_shape`, because the model's class embedding is built from it.

Subclasses only say how to build the *pool* (the official training data, unaugmented, one
tensor per item), its labels, and which augmentation the training split gets; this class splits
the pool into train / val, builds the loaders and serves fixed real samples (and their labels)
for FID and for class-conditional sampling.

The split is deterministic: a `torch.Generator` seeded with `split_seed` permutes the pool once;
the first `round(val_fraction * N)` permuted items are validation, the rest training. Each split
keeps that permuted order, so "the first n examples of a split" (`real_samples`) is a fixed
random subset rather than, say, the first class of a folder sorted by class.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset

from ddpm_lightning.data.datasets import RandomHFlip, WithLabels, collate_pairs
from ddpm_lightning.data.resumable import ResumableLoader, resumable_loader, run_seed

SPLITS = ("train", "val")

# What `labels=True` can be used with, for the error message of data without classes.
LABELLED_DATA = ("digits, mnist, fashion_mnist, kmnist, cifar10, cifar100, svhn, folder with one "
                 "subfolder per class, toy2d with dataset=moons or 8gaussians")


def check_positive_int(name: str, value: Any) -> int:
    """`value` as an int, or a one-line ValueError naming `name` and the bad value."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


def check_choice(name: str, value: Any, choices: Any) -> Any:
    """`value` if it is one of `choices`, else a ValueError naming it and the choices."""
    if value not in choices:
        raise ValueError(f"{name}={value!r} is not supported; choose one of {sorted(choices)}")
    return value


class DiffusionDataModule(L.LightningDataModule):
    """Base class: train / val loaders of float32 tensors, fixed real samples, a cache key.

    Args:
        batch_size: examples per training and validation batch.
        num_workers: DataLoader worker processes (0 loads in the main process).
        pin_memory: page-locked host memory, faster host-to-GPU copies.
        persistent_workers: keep workers alive between epochs; only used when num_workers > 0.
        val_fraction: share of the training pool held out for validation, in [0, 1); 0 means
            no validation loader (an empty list, which Lightning skips).
        split_seed: seed of the generator that makes the train / val split.
        drop_last: drop the last incomplete training batch, so every step sees `batch_size`.
        shuffle_seed: seed of the training order and flips (order of epoch e: a permutation
            seeded `shuffle_seed + e`); None: the run's `seed` (0 without one).
        labels: make every training and validation batch `(images, labels)`; needs data with
            classes (`num_classes` not None), else a ValueError at construction. Stored as
            `with_labels` (digits' `labels(split)` is a method).

    Subclasses set `name`, `data_shape`, `is_image` and, for data with classes, `num_classes`
    (and `class_names` where cheap) in `__init__` (before `setup`, since the model is built from
    them), end `__init__` with `self._check_labels()`, and implement `_build_pool()` and, with
    classes, `_pool_labels()`.
    """

    name: str = "data"
    is_image: bool = True
    data_shape: tuple[int, ...]
    num_classes: int | None = None  # classes of the labels; None: the data has none
    class_names: list[str] | None = None  # names of classes 0..num_classes-1, where known cheaply

    def __init__(
        self,
        batch_size: int = 128,
        num_workers: int = 0,
        pin_memory: bool = False,
        persistent_workers: bool = False,
        val_fraction: float = 0.1,
        split_seed: int = 0,
        drop_last: bool = True,
        shuffle_seed: int | None = None,
        labels: bool = False,
    ) -> None:
        super().__init__()
        self.batch_size = check_positive_int("batch_size", batch_size)
        if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
            raise ValueError(f"num_workers must be an integer >= 0, got {num_workers!r}")
        if not isinstance(val_fraction, (int, float)) or not 0.0 <= val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction!r}")
        if isinstance(split_seed, bool) or not isinstance(split_seed, int):
            raise ValueError(f"split_seed must be an integer, got {split_seed!r}")
        if shuffle_seed is not None and (isinstance(shuffle_seed, bool) or not isinstance(shuffle_seed, int)):
            raise ValueError(f"shuffle_seed must be an integer or null, got {shuffle_seed!r}")
        if not isinstance(labels, bool):
            raise ValueError(f"labels must be true or false, got {labels!r}")
        self.num_workers = num_workers
        self.pin_memory = bool(pin_memory)
        self.persistent_workers = bool(persistent_workers)
        self.val_fraction = float(val_fraction)
        self.split_seed = split_seed
        self.drop_last = bool(drop_last)
        self.shuffle_seed = shuffle_seed
        self.hflip = False  # subclasses with images may turn it on
        self.with_labels = labels
        self._pool: Dataset | None = None
        self._targets: torch.Tensor | None = None  # (N,) int64 labels of the pool, with classes
        self._indices: dict[str, torch.Tensor] = {}

    # -- what subclasses provide -------------------------------------------------------------

    def _build_pool(self) -> Dataset:
        """The whole training pool, unaugmented: item i is a float32 tensor of `data_shape`."""
        raise NotImplementedError

    def _pool_labels(self) -> torch.Tensor:
        """Labels (N,) int64 in [0, num_classes) of the pool `_build_pool()` just built, in its
        order; called only when `num_classes` is not None."""
        raise NotImplementedError(f"{type(self).__name__} sets num_classes but has no _pool_labels()")

    def _no_labels_reason(self) -> str:
        """Why this data has no classes, the start of the `labels=True` error message."""
        return f"data={self.name} has no class labels"

    def _check_labels(self) -> None:
        """The one-line ValueError of `labels=True` on data without classes (`num_classes` None)."""
        if self.with_labels and self.num_classes is None:
            raise ValueError(f"{self._no_labels_reason()}; conditioning=class needs labelled data: {LABELLED_DATA}")

    def _cache_tags(self) -> list[str]:
        """Extra settings that change the data (beyond name, shape and split), for cache_key."""
        return []

    # -- Lightning hooks ---------------------------------------------------------------------

    def setup(self, stage: str | None = None) -> None:
        """Build the pool and the split once; later calls (one per Trainer stage) are no-ops."""
        if self._pool is not None:
            return
        self._check_labels()  # again, for a subclass that does not call it in __init__
        pool = self._build_pool()
        n = len(pool)
        targets = None if self.num_classes is None else self._checked_labels(self._pool_labels(), n)
        n_val = round(self.val_fraction * n)
        if self.val_fraction > 0:
            n_val = max(n_val, 1)  # a requested validation split is never silently empty
        n_train = n - n_val
        if n_train < 1 or (self.drop_last and n_train < self.batch_size):
            raise ValueError(
                f"{self.name}: {n_train} training examples (of {n}, val_fraction="
                f"{self.val_fraction}) cannot fill one batch of batch_size={self.batch_size}"
                f"{' with drop_last=True' if self.drop_last else ''}; lower data.batch_size"
            )
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(self.split_seed))
        self._indices = {"val": perm[:n_val], "train": perm[n_val:]}
        self._targets = targets
        self._pool = pool

    def _checked_labels(self, labels: torch.Tensor, n: int) -> torch.Tensor:
        labels = torch.as_tensor(labels)
        if labels.shape != (n,) or labels.dtype != torch.long:
            raise ValueError(f"{self.name}: labels must be (N,)=({n},) int64, got {tuple(labels.shape)} {labels.dtype}")
        if n and not 0 <= int(labels.min()) <= int(labels.max()) < self.num_classes:  # type: ignore[operator]
            raise ValueError(f"{self.name}: labels must be in [0, {self.num_classes}), got "
                             f"[{int(labels.min())}, {int(labels.max())}]")
        return labels

    def train_dataloader(self) -> ResumableLoader:
        """The shuffled training split, resumable mid-epoch (see `ddpm_lightning.data.resumable`).

        Under DDP (a Trainer attached) each rank gets its share, as Lightning's injected
        `DistributedSampler` would give it. With `labels`, batches are `(images, labels)`."""
        seed = run_seed(self.shuffle_seed)
        data: Dataset = self._subset("train", self.with_labels)
        if self.hflip:
            # a seed apart from the order's: flips and permutations are independent streams
            data = RandomHFlip(data, seed=int(np.random.SeedSequence([seed, 1]).generate_state(1)[0]))
        trainer = self.trainer
        return resumable_loader(
            data,
            self.batch_size,
            seed,
            drop_last=self.drop_last,
            num_replicas=trainer.world_size if trainer is not None else 1,
            rank=trainer.global_rank if trainer is not None else 0,
            epoch_done=(lambda: trainer.fit_loop.epoch_loop.batch_progress.is_last_batch) if trainer is not None else None,
            collate_fn=collate_pairs if self.with_labels else None,
            **self._worker_kwargs(),
        )

    def val_dataloader(self) -> DataLoader | list:
        """The validation split in order, unaugmented; with `labels`, `(images, labels)` batches."""
        if len(self.split_indices("val")) == 0:
            return []  # val_fraction=0: Lightning skips validation
        return self._loader(self._subset("val", self.with_labels), shuffle=False, drop_last=False)

    # -- the rest of the public API ----------------------------------------------------------

    def split_indices(self, split: str = "train") -> torch.Tensor:
        """Indices (into the pool, in split order) of `split`; sets the data up if needed."""
        check_choice("split", split, SPLITS)
        self.setup()
        return self._indices[split]

    def real_samples(self, n: int, split: str = "train") -> torch.Tensor:
        """The first `n` examples of `split`, unaugmented, as one float32 tensor (n, *data_shape).

        The same call always returns the same tensor (the split order is seeded), which makes
        it a fixed FID reference set and a fixed picture of the forward process. Images only,
        with `labels` or without (`real_labels` gives their labels).
        """
        indices = self._first(n, split, "real_samples")
        loader = self._loader(Subset(self._pool, indices.tolist()), shuffle=False)  # (n, ...)
        return torch.cat(list(loader))

    def real_labels(self, n: int, split: str = "train") -> torch.Tensor:
        """The labels (n,) int64 of `real_samples(n, split)`, in the same order."""
        if self.num_classes is None:
            raise ValueError(f"real_labels: {self._no_labels_reason()} (num_classes is None)")
        indices = self._first(n, split, "real_labels")
        assert self._targets is not None  # set by setup(), which _first ran
        return self._targets[indices]

    def _first(self, n: int, split: str, caller: str) -> torch.Tensor:
        """Pool indices of the first `n` examples of `split`, or a one-line ValueError."""
        check_positive_int("n", n)
        indices = self.split_indices(split)
        if n > len(indices):
            raise ValueError(
                f"{caller}(n={n}, split={split!r}): the {split} split of {self.name} has only "
                f"{len(indices)} examples"
            )
        return indices[:n]

    def cache_key(self, split: str, n: int) -> str:
        """A filesystem-safe id of (dataset, split, shape, n, split settings), e.g.
        `digits-train-1x16x16-n1000-seed0-val0.1`, for statistics cached on disk."""
        check_choice("split", split, SPLITS)
        check_positive_int("n", n)
        shape = "x".join(str(d) for d in self.data_shape) if self.is_image else "2d"
        parts = [self.name, split, shape, f"n{n}", f"seed{self.split_seed}",
                 f"val{self.val_fraction:g}", *self._cache_tags()]
        return re.sub(r"[^A-Za-z0-9._=-]+", "_", "-".join(parts))

    # -- helpers -----------------------------------------------------------------------------

    def _subset(self, split: str, labelled: bool = False) -> Subset:
        """`split` of the pool; `labelled`: its items are `(image, label)` pairs."""
        indices = self.split_indices(split).tolist()  # first: it runs setup(), which sets _pool
        if labelled:
            assert self._targets is not None  # labels=True implies num_classes (checked in __init__)
            return Subset(WithLabels(self._pool, self._targets), indices)
        return Subset(self._pool, indices)

    def _loader(self, data: Dataset, shuffle: bool, drop_last: bool = False) -> DataLoader:
        labelled = isinstance(data, Subset) and isinstance(data.dataset, WithLabels)
        return DataLoader(
            data,
            batch_size=self.batch_size,
            shuffle=shuffle,
            drop_last=drop_last,
            collate_fn=collate_pairs if labelled else None,
            **self._worker_kwargs(),
        )

    def _worker_kwargs(self) -> dict[str, Any]:
        return {
            "num_workers": self.num_workers,
            "pin_memory": self.pin_memory,
            # PyTorch refuses persistent workers without workers, so the flag is ignored there.
            "persistent_workers": self.persistent_workers and self.num_workers > 0,
        }


def data_shape_of(data: DiffusionDataModule | Mapping[str, Any]) -> tuple[int, ...]:
    """`data_shape` of a datamodule, or of a Hydra `data` config node, without `setup()`.

    A config is instantiated, which is cheap: constructors only read their arguments; files
    are opened in `prepare_data` / `setup`.
    """
    if isinstance(data, DiffusionDataModule):
        return tuple(data.data_shape)
    if isinstance(data, Mapping):  # DictConfig is a Mapping too
        from hydra.utils import instantiate

        return data_shape_of(instantiate(data))
    raise ValueError(
        f"data_shape_of expects a DiffusionDataModule or a Hydra config with _target_, "
        f"got {type(data).__name__}"
    )
