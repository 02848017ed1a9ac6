"""Learning-rate schedules with linear warm-up, as `LambdaLR` factories for Hydra partials."""

from __future__ import annotations

import math

import torch
from torch.optim.lr_scheduler import LambdaLR


def _check(warmup_steps: int, total_steps: int | None = None) -> None:
    if warmup_steps < 0:
        raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps!r}")
    if total_steps is not None and total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps!r}")


def warmup_constant(optimizer: torch.optim.Optimizer, warmup_steps: int = 5000) -> LambdaLR:
    """Linear warm-up from 0 over `warmup_steps`, then constant (Ho et al. 2020, App. B: 5000)."""
    _check(warmup_steps)
    return LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / max(1, warmup_steps)))


def warmup_cosine(
    optimizer: torch.optim.Optimizer,
    warmup_steps: int = 1000,
    total_steps: int = 100_000,
    min_lr_ratio: float = 0.0,
) -> LambdaLR:
    """Linear warm-up, then cosine decay to `min_lr_ratio` x the base lr at `total_steps`
    (Loshchilov & Hutter 2017)."""
    _check(warmup_steps, total_steps)

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return LambdaLR(optimizer, factor)
