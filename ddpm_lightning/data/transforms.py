"""Pixel scaling to [-1, 1] and the one PIL-image pipeline shared by file-based datasets.

DDPM (Ho et al. 2020, sec. 3.3) scales pixels linearly to [-1, 1] so the data has the scale of
the N(0, I) prior; every datamodule here uses `to_signed` for that.
"""

from __future__ import annotations

import torch
from torchvision import transforms as T

# PIL mode for each supported channel count.
MODES = {1: "L", 3: "RGB"}


def to_signed(x: torch.Tensor) -> torch.Tensor:
    """[0, 1] -> [-1, 1]."""
    return x * 2.0 - 1.0


class ConvertMode:
    """PIL `img.convert(mode)` as a picklable callable (a lambda would break DataLoader workers
    started with `spawn`, the default on macOS and Windows)."""

    def __init__(self, mode: str) -> None:
        self.mode = mode

    def __call__(self, img):
        return img.convert(self.mode)

    def __repr__(self) -> str:
        return f"ConvertMode({self.mode!r})"


def image_transform(image_size: int, channels: int, center_crop: int | None = None) -> T.Compose:
    """PIL image -> float32 tensor (channels, image_size, image_size) in [-1, 1].

    The shorter side is resized to `image_size` (antialiased, so small outputs do not alias),
    then the centre square is cropped: the aspect ratio is kept and nothing is stretched.
    `center_crop`, if given, first cuts a centre square of that many source pixels (the
    140-pixel CelebA face crop of NCSN, Song & Ermon 2019).
    """
    steps: list = [ConvertMode(MODES[channels])]
    if center_crop is not None:
        steps.append(T.CenterCrop(center_crop))
    steps += [
        T.Resize(image_size, interpolation=T.InterpolationMode.BILINEAR, antialias=True),
        T.CenterCrop(image_size),
        T.ToTensor(),  # (C, H, W) float32 in [0, 1]
        T.Lambda(to_signed),
    ]
    return T.Compose(steps)
