"""`DigitsDataModule`: scikit-learn's bundled 8x8 handwritten digits, the default dataset.

1797 grayscale images ship inside scikit-learn, so this trains anywhere, offline, in minutes on
a CPU. Pixels (integers 0..16) are scaled to [0, 1], resized to `image_size` with bilinear
interpolation (antialiased, so sizes below 8 do not alias), then scaled to [-1, 1]. The whole
set lives in memory as one tensor, and so do the labels (the digit, 0..9): batches carry them
with `labels=True` (class-conditional training); `labels(split)` serves them to a digit
classifier (e.g. a classifier-based metric).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from ddpm_lightning.data.datamodule import DiffusionDataModule, check_positive_int
from ddpm_lightning.data.datasets import TensorItems
from ddpm_lightning.data.transforms import to_signed


class DigitsDataModule(DiffusionDataModule):
    """sklearn `load_digits()` as (1, image_size, image_size) images in [-1, 1].

    Args:
        image_size: output side in pixels (8 is native; 16 and 32 are upsampled bilinearly).
        hflip: random horizontal flips in training; off by default because digits are not
            mirror-symmetric (a flipped 3 is not a 3).
        **kwargs: the loader and split arguments of `DiffusionDataModule` (`labels=True`:
            `(images, digits)` batches).

    `num_classes` is 10, `class_names` "0".."9". After `setup()`: `images` (1797, 1, S, S) and
    `targets` (1797,) in scikit-learn's order; `labels(split)` gives the targets in the same
    order as `real_samples(n, split)`.
    """

    is_image = True

    def __init__(self, image_size: int = 16, hflip: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.image_size = check_positive_int("image_size", image_size)
        self.hflip = bool(hflip)
        self.name = "digits"
        self.data_shape = (1, image_size, image_size)
        self.num_classes = 10
        self.class_names = [str(d) for d in range(10)]
        self.images: torch.Tensor | None = None
        self.targets: torch.Tensor | None = None
        self._check_labels()

    def _build_pool(self) -> Dataset:
        from sklearn.datasets import load_digits  # bundled with scikit-learn: no download

        digits = load_digits()
        x = torch.as_tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0  # (N, 1, 8, 8)
        if self.image_size != 8:
            x = F.interpolate(
                x, size=(self.image_size,) * 2, mode="bilinear", align_corners=False, antialias=True
            ).clamp(0.0, 1.0)  # bilinear cannot overshoot, but antialiasing filters may, slightly
        self.images = to_signed(x)  # (N, 1, S, S) in [-1, 1]
        self.targets = torch.as_tensor(digits.target, dtype=torch.long)  # (N,)
        return TensorItems(self.images)

    def _pool_labels(self) -> torch.Tensor:
        assert self.targets is not None  # set by _build_pool, which setup ran first
        return self.targets

    def labels(self, split: str = "train") -> torch.Tensor:
        """Digit labels (0..9) of all of `split`, aligned with `real_samples(n, split)`
        (`real_labels(n, split)` gives the first n)."""
        indices = self.split_indices(split)
        assert self.targets is not None  # set by setup(), which split_indices ran
        return self.targets[indices]
