"""Identity features for 2-D toy data: the FID of a toy model is the Fréchet distance of its points.

For 2-D data sets (two moons, rings, Gaussian mixtures) the coordinates are already a feature
space, so FID/KID here compare the Gaussian fit (FID) or the kernel statistics (KID) of the
samples and of the data directly. The numbers only compare runs on the same toy data set; they
are NOT comparable to published (Inception) FIDs.
"""

from __future__ import annotations

import torch
from torch import nn

TOY2D_FEATURES = 2


class Toy2dFeatures(nn.Module):
    """(B, 2) points -> (B, 2) float32 features (the points themselves)."""

    num_features = TOY2D_FEATURES  # read by torchmetrics

    def forward(self, points: torch.Tensor) -> torch.Tensor:
        if not isinstance(points, torch.Tensor) or points.ndim != 2 or points.shape[1] != TOY2D_FEATURES:
            shape = tuple(points.shape) if isinstance(points, torch.Tensor) else type(points).__name__
            raise ValueError(f"toy2d features expect points of shape (B, 2), got {shape}")
        if not points.is_floating_point():
            raise TypeError(f"toy2d points must be a float tensor, got dtype {points.dtype}")
        return points.detach().float()
