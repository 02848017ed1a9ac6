"""Image batches in guided-diffusion's evaluation format: an `.npz` whose `arr_0` is (N, H, W, C) uint8.

guided-diffusion (Dhariwal & Nichol 2021) publishes its reference sets, and expects samples, as
`.npz` files holding `arr_0`, uint8 images in NHWC order; its reference files also hold
precomputed `mu`/`sigma` pool_3 statistics (read them with `FeatureStats.load`). These helpers
convert between that layout and our (N, C, H, W) tensors and compute feature statistics of such
a file with any of our feature spaces.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from .feature_stats import FeatureStats, compute_feature_stats
from .image_input import check_image_batch, to_0_255


def load_reference_images(path: str | Path, key: str = "arr_0") -> torch.Tensor:
    """`arr_0` of a guided-diffusion .npz as a (N, C, H, W) uint8 tensor."""
    with np.load(path) as data:
        if key not in data.files:
            raise KeyError(f"{str(path)!r} has no {key!r} array (keys: {data.files})")
        arr = data[key]
    if arr.dtype != np.uint8 or arr.ndim != 4 or arr.shape[-1] not in (1, 3):
        raise ValueError(
            f"{str(path)!r}[{key!r}] must be uint8 images (N, H, W, C) with C in (1, 3), "
            f"got dtype {arr.dtype}, shape {arr.shape}"
        )
    return torch.from_numpy(arr).permute(0, 3, 1, 2).contiguous()  # (N, C, H, W)


def save_reference_images(path: str | Path, images: torch.Tensor) -> None:
    """Write (N, C, H, W) uint8 or [-1, 1] float images as guided-diffusion's `arr_0` (NHWC uint8)."""
    check_image_batch(images)
    arr = to_0_255(images.detach().cpu()).to(torch.uint8).permute(0, 2, 3, 1).numpy()  # (N, H, W, C)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, arr_0=arr)


def reference_stats(path: str | Path, feature: nn.Module, batch_size: int = 64, device=None) -> FeatureStats:
    """Feature statistics of the images in a guided-diffusion .npz (not its stored mu/sigma)."""
    return compute_feature_stats(load_reference_images(path), feature, batch_size=batch_size, device=device)
