"""Post-processing of the predicted x_0 before a sampler step: static clipping and dynamic
thresholding (Saharia et al. 2022, "Imagen", sec. 2.3)."""

from __future__ import annotations

import torch


def clip_x0(x0: torch.Tensor, clip_range: float = 1.0) -> torch.Tensor:
    """Static thresholding: clamp x0_hat to the data range [-r, r] (Ho et al.'s `clip_denoised`)."""
    return x0.clamp(-clip_range, clip_range)


def dynamic_threshold(
    x0: torch.Tensor, ratio: float = 0.995, max_value: float | None = None
) -> torch.Tensor:
    """Imagen's dynamic thresholding: s = the `ratio` quantile of |x0_hat| per sample, s >= 1
    (and <= max_value if given); clamp x0_hat to [-s, s] and divide by s."""
    b = x0.shape[0]
    flat = x0.reshape(b, -1).float()  # quantile needs float32/64 (no half)
    s = torch.quantile(flat.abs(), ratio, dim=1)
    s = s.clamp(min=1.0) if max_value is None else s.clamp(min=1.0, max=max_value)
    s = s.reshape(b, *((1,) * (x0.ndim - 1)))
    return (flat.reshape(x0.shape).clamp(-s, s) / s).to(x0.dtype)
