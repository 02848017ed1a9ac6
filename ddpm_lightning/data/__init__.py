"""Datamodules for diffusion training: batches are float32 tensors, images in [-1, 1]
`(B, C, H, W)` or 2-D points `(B, 2)`, or with `labels=True` the tuples `(images, labels)`,
labels `(B,)` int64. `data_shape` and `num_classes` are known right after construction."""

from ddpm_lightning.data.datamodule import DiffusionDataModule, data_shape_of
from ddpm_lightning.data.digits import DigitsDataModule
from ddpm_lightning.data.image_folder import IMAGE_EXTENSIONS, ImageFolderDataModule
from ddpm_lightning.data.torchvision_data import TORCHVISION_DATASETS, TorchvisionDataModule
from ddpm_lightning.data.toy2d import TOY_DATASETS, Toy2DDataModule

__all__ = [
    "IMAGE_EXTENSIONS",
    "TORCHVISION_DATASETS",
    "TOY_DATASETS",
    "DiffusionDataModule",
    "DigitsDataModule",
    "ImageFolderDataModule",
    "Toy2DDataModule",
    "TorchvisionDataModule",
    "data_shape_of",
]
