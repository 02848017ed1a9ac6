"""A directory of real-data feature statistics, keyed by a string, computed once and then loaded.

The real half of FID is the same at every evaluation, and for Inception it is the slow half
(minutes for 10k images on CPU). `RealStatsCache.get_or_compute(key, images, feature)` returns
the statistics and whether they came from disk; a different key (another data set, split, image
size, sample count or feature space) is a different file, so it is computed afresh. Keys are
built by `stats_key` so that every axis that changes the statistics is part of the name.

Not DDP-aware by itself (no collectives): call it on every rank (each computes, writes are
atomic) or on rank zero followed by a barrier, then load.
"""

from __future__ import annotations

import hashlib
import re
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
from torch import nn

from .feature_stats import FeatureStats, Images, compute_feature_stats

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def stats_key(dataset: str, split: str, size: int, count: int, feature: str) -> str:
    """E.g. stats_key("cifar10", "train", 32, 50000, "inception") -> 'cifar10-train-32px-n50000-inception'."""
    return f"{dataset}-{split}-{size}px-n{count}-{feature}"


class RealStatsCache:
    """Feature statistics stored as `<cache_dir>/<key>.npz`; `num_computed` counts cache misses."""

    def __init__(self, cache_dir: str | Path):
        self.cache_dir = Path(cache_dir).expanduser()
        self.num_computed = 0

    def path(self, key: str) -> Path:
        if not key:
            raise ValueError("stats cache key must be a non-empty string")
        safe = _UNSAFE.sub("_", key)
        if safe != key:
            # Two keys that sanitise alike must not share a file.
            safe += "-" + hashlib.sha1(key.encode()).hexdigest()[:8]
        return self.cache_dir / f"{safe}.npz"

    def load(self, key: str, dim: int | None = None) -> FeatureStats | None:
        """Stored statistics for `key`, or None if absent, for another key, or of another dimension."""
        path = self.path(key)
        if not path.is_file():
            return None
        with np.load(path) as data:
            stored_key = str(data["key"]) if "key" in data.files else None
        stats = FeatureStats.load(path)
        if stored_key != key or (dim is not None and stats.dim != dim):
            warnings.warn(f"ignoring stale statistics file {str(path)!r} (key {stored_key!r}, dim {stats.dim})")
            return None
        return stats

    def save(self, key: str, stats: FeatureStats) -> Path:
        path = self.path(key)
        stats.save(path, key=key)
        return path

    def get_or_compute(
        self,
        key: str,
        images: Images | Callable[[], Images],
        feature: nn.Module,
        batch_size: int = 64,
        device=None,
    ) -> tuple[FeatureStats, bool]:
        """(statistics, loaded_from_cache). `images` may be a callable so a hit never loads data."""
        dim = getattr(feature, "num_features", None)
        stats = self.load(key, dim=dim if isinstance(dim, int) else None)
        if stats is not None:
            return stats, True
        stats = compute_feature_stats(images, feature, batch_size=batch_size, device=device)
        self.num_computed += 1
        self.save(key, stats)
        return stats, False
