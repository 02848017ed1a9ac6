"""`TorchvisionDataModule`: standard image benchmarks (MNIST, CIFAR-10, CelebA, ...) by name.

Training uses each dataset's official training split (`TORCHVISION_DATASETS` says which); the
validation split is `val_fraction` of it (see `DiffusionDataModule`), so the official test
split stays untouched for a final evaluation. Files are downloaded only in `prepare_data()`
(Lightning runs it once per node, before `setup`) and only with `download=True`; the
constructor touches no files, so building the model from `data_shape` needs no data.

(Named `torchvision_data.py`, not `torchvision.py`, so that it can never shadow the library.)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torchvision.datasets
from torch.utils.data import Dataset

from ddpm_lightning.data.datamodule import DiffusionDataModule, check_choice, check_positive_int
from ddpm_lightning.data.datasets import ImagesOnly
from ddpm_lightning.data.transforms import MODES, image_transform


@dataclass(frozen=True)
class TorchvisionSpec:
    """How to load one dataset: the torchvision class name, its training-split arguments, the
    native channel count and the default side length."""

    cls: str
    channels: int
    image_size: int
    train_kwargs: dict[str, Any] = field(default_factory=dict)


TORCHVISION_DATASETS: dict[str, TorchvisionSpec] = {
    "mnist": TorchvisionSpec("MNIST", 1, 28, {"train": True}),
    "fashion_mnist": TorchvisionSpec("FashionMNIST", 1, 28, {"train": True}),
    "kmnist": TorchvisionSpec("KMNIST", 1, 28, {"train": True}),
    "cifar10": TorchvisionSpec("CIFAR10", 3, 32, {"train": True}),
    "cifar100": TorchvisionSpec("CIFAR100", 3, 32, {"train": True}),
    "svhn": TorchvisionSpec("SVHN", 3, 32, {"split": "train"}),
    # CelebA is 178x218; 64 is the usual generative size. target_type=[] skips the labels.
    "celeba": TorchvisionSpec("CelebA", 3, 64, {"split": "train", "target_type": []}),
    # STL-10's 100k unlabelled images are the ones generative models train on.
    "stl10": TorchvisionSpec("STL10", 3, 96, {"split": "unlabeled"}),
}


class TorchvisionDataModule(DiffusionDataModule):
    """A torchvision dataset as (channels, image_size, image_size) images in [-1, 1].

    Args:
        dataset: a key of `TORCHVISION_DATASETS` (mnist, fashion_mnist, kmnist, cifar10,
            cifar100, svhn, celeba, stl10).
        data_dir: root folder handed to torchvision (it adds its own sub-folder per dataset).
        download: fetch missing files in `prepare_data()`; off so runs never hit the network
            unless asked.
        image_size: output side; None keeps the dataset's native size (64 for CelebA).
        channels: 1 (grayscale) or 3 (RGB); None keeps the dataset's own.
        center_crop: centre square (source pixels) cut before resizing; None resizes the
            shorter side to `image_size` and crops the centre.
        hflip: random horizontal flips in training.
        **kwargs: the loader and split arguments of `DiffusionDataModule`.
    """

    is_image = True

    def __init__(
        self,
        dataset: str = "cifar10",
        data_dir: str = "data",
        download: bool = False,
        image_size: int | None = None,
        channels: int | None = None,
        center_crop: int | None = None,
        hflip: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.spec = TORCHVISION_DATASETS[check_choice("dataset", dataset, TORCHVISION_DATASETS)]
        self.dataset = dataset
        self.data_dir = str(data_dir)
        self.download = bool(download)
        self.image_size = check_positive_int(
            "image_size", self.spec.image_size if image_size is None else image_size
        )
        self.channels = check_choice(
            "channels", self.spec.channels if channels is None else channels, MODES
        )
        if center_crop is not None:
            check_positive_int("center_crop", center_crop)
        self.center_crop = center_crop
        self.hflip = bool(hflip)
        self.name = dataset
        self.data_shape = (self.channels, self.image_size, self.image_size)

    def _dataset(self, download: bool, transform=None) -> Dataset:
        # Looked up at call time, so tests can substitute a fake class on torchvision.datasets.
        cls = getattr(torchvision.datasets, self.spec.cls)
        return cls(self.data_dir, download=download, transform=transform, **self.spec.train_kwargs)

    def prepare_data(self) -> None:
        """Download the training split if asked (Lightning calls this on one process per node)."""
        if self.download:
            Path(self.data_dir).mkdir(parents=True, exist_ok=True)
            self._dataset(download=True)

    def _build_pool(self) -> Dataset:
        transform = image_transform(self.image_size, self.channels, self.center_crop)
        try:
            data = self._dataset(download=False, transform=transform)
        except RuntimeError as err:  # torchvision: "Dataset not found ... download=True ..."
            hint = (
                "call prepare_data() first (the Trainer does)"
                if self.download
                else "pass data.download=true to download it"
            )
            raise ValueError(
                f"{self.dataset} not found under data_dir={self.data_dir!r} ({err}); {hint}, "
                f"or point data.data_dir at an existing copy"
            ) from err
        return ImagesOnly(data)

    def _cache_tags(self) -> list[str]:
        return [] if self.center_crop is None else [f"crop{self.center_crop}"]
