"""`TorchvisionDataModule`: standard image benchmarks (MNIST, CIFAR-10, CelebA, ...) by name.

Training uses each dataset's official training split (`TORCHVISION_DATASETS` says which); the
validation split is `val_fraction` of it (see `DiffusionDataModule`), so the official test
split stays untouched for a final evaluation. Files are downloaded only in `prepare_data()`
(Lightning runs it once per node, before `setup`) and only with `download=True`; the
constructor touches no files, so building the model from `data_shape` needs no data.

Classes (`labels=True`): the dataset's own targets (MNIST-family and CIFAR `targets`, SVHN
`labels`, digit 0 for SVHN's "10"), read from that array, so no image is decoded for them.
`num_classes` comes from `TORCHVISION_DATASETS`; CelebA (attributes, not classes) and STL-10's
unlabeled split have none.

(Named `torchvision_data.py`, not `torchvision.py`, so that it can never shadow the library.)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torchvision.datasets
from torch.utils.data import Dataset

from ddpm_lightning.data.datamodule import DiffusionDataModule, check_choice, check_positive_int
from ddpm_lightning.data.datasets import ImagesOnly
from ddpm_lightning.data.transforms import MODES, image_transform


@dataclass(frozen=True)
class TorchvisionSpec:
    """How to load one dataset: the torchvision class name, its training-split arguments, the
    native channel count, the default side length, the number of classes (None: unlabelled)
    and their names where torchvision's class does not carry them (`classes`) without files."""

    cls: str
    channels: int
    image_size: int
    train_kwargs: dict[str, Any] = field(default_factory=dict)
    num_classes: int | None = None
    class_names: tuple[str, ...] | None = None


# torchvision reads CIFAR-10's names from the downloaded batches.meta; they are these.
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


TORCHVISION_DATASETS: dict[str, TorchvisionSpec] = {
    "mnist": TorchvisionSpec("MNIST", 1, 28, {"train": True}, 10),
    "fashion_mnist": TorchvisionSpec("FashionMNIST", 1, 28, {"train": True}, 10),
    "kmnist": TorchvisionSpec("KMNIST", 1, 28, {"train": True}, 10),
    "cifar10": TorchvisionSpec("CIFAR10", 3, 32, {"train": True}, 10, CIFAR10_CLASSES),
    "cifar100": TorchvisionSpec("CIFAR100", 3, 32, {"train": True}, 100),
    "svhn": TorchvisionSpec("SVHN", 3, 32, {"split": "train"}, 10, tuple(str(d) for d in range(10))),
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
        hflip: random horizontal flips in training (of the image; a label is kept).
        **kwargs: the loader and split arguments of `DiffusionDataModule` (`labels=True`:
            `(images, classes)` batches; not for celeba and stl10).
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
        self.num_classes = self.spec.num_classes
        self.class_names = self._class_names()
        self._labelled: Dataset | None = None  # torchvision's dataset, (image, target) items
        self._check_labels()

    def _class_names(self) -> list[str] | None:
        """The spec's names, else the torchvision class's own `classes` (a class attribute of
        the MNIST family), else None; never reads files."""
        names = self.spec.class_names or getattr(getattr(torchvision.datasets, self.spec.cls, None), "classes", None)
        if self.num_classes is None or not isinstance(names, (list, tuple)) or len(names) != self.num_classes:
            return None
        return [str(n) for n in names]

    def _no_labels_reason(self) -> str:
        what = "attributes, not classes" if self.dataset == "celeba" else "the unlabeled split"
        return f"data dataset={self.dataset} has no class labels ({what})"

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
        self._labelled = data
        return ImagesOnly(data)

    def _pool_labels(self) -> torch.Tensor:
        data = self._labelled
        targets = getattr(data, "targets", None)
        if targets is None:
            targets = getattr(data, "labels", None)  # SVHN
        if targets is None:  # an unknown dataset: read each item's target (decodes every image)
            targets = [int(data[i][1]) for i in range(len(data))]  # type: ignore[arg-type, index]
        return torch.as_tensor(targets).long()

    def _cache_tags(self) -> list[str]:
        return [] if self.center_crop is None else [f"crop{self.center_crop}"]
