"""The real half of FID and KID: feature statistics (and KID's features) of real data, computed
once per key and then loaded from disk. The one path by which the FID callback and
`python -m ddpm_lightning.evaluate` get them, so training and evaluation share the files.

For Inception the real half is the slow half (minutes for 10k images on CPU), and it is the same
at every evaluation. `RealStatsCache(cache_dir).get_or_compute(key, images, feature)` returns
the statistics and whether they came from disk; with `keep_features=True` the statistics carry
the (N, D) features too, stored in the same file, so KID's real features are cached as well. A
different key (another data set, split, image size, sample count, feature space or weights
file: see `real_stats_key`) is a different file, computed afresh.

Not DDP-aware by itself (no collectives): call it on one rank (the FID callback uses rank 0, the
others wait in the metric's sync), or on every rank (each computes; writes are atomic).
"""

from __future__ import annotations

import hashlib
import re
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from .feature_stats import FeatureStats, Images, compute_feature_stats

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def real_stats_key(datamodule: Any, split: str, n: int, feature: str, weights_path: str | Path | None = None) -> str:
    """The cache key of real statistics: the datamodule's `cache_key(split, n)` (dataset, split,
    shape, count, split settings) + the feature space (+ a hash of an explicit weights file)."""
    key = f"{datamodule.cache_key(split, n)}-{feature}"
    if weights_path is not None:
        key += "-w" + hashlib.sha1(str(Path(weights_path).expanduser().resolve()).encode()).hexdigest()[:8]
    return key


class RealStatsCache:
    """Feature statistics stored as `<cache_dir>/<key>.npz`; `cache_dir=None` stores nothing (every
    call computes). `num_computed` counts cache misses."""

    def __init__(self, cache_dir: str | Path | None):
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir is not None else None
        self.num_computed = 0

    def path(self, key: str) -> Path:
        if not key:
            raise ValueError("stats cache key must be a non-empty string")
        if self.cache_dir is None:
            raise ValueError("this cache stores nothing (cache_dir=None)")
        safe = _UNSAFE.sub("_", key)
        if safe != key:
            # Two keys that sanitise alike must not share a file.
            safe += "-" + hashlib.sha1(key.encode()).hexdigest()[:8]
        return self.cache_dir / f"{safe}.npz"

    def load(self, key: str, dim: int | None = None, need_features: bool = False) -> FeatureStats | None:
        """Stored statistics for `key`, or None if absent, for another key, of another dimension,
        or without the features when they are needed."""
        if self.cache_dir is None:
            return None
        path = self.path(key)
        if not path.is_file():
            return None
        with np.load(path) as data:
            stored_key = str(data["key"]) if "key" in data.files else None
        stats = FeatureStats.load(path, features=need_features)
        if stored_key != key or (dim is not None and stats.dim != dim):
            warnings.warn(f"ignoring stale statistics file {str(path)!r} (key {stored_key!r}, dim {stats.dim})")
            return None
        if need_features and (stats.features is None or len(stats.features) != stats.n):
            return None  # computed for FID alone: KID's features are not in it
        return stats

    def save(self, key: str, stats: FeatureStats) -> Path | None:
        if self.cache_dir is None:
            return None
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
        *,
        keep_features: bool = False,
        progress: bool = False,
        desc: str = "real features",
        small_sample: str = "warn",
    ) -> tuple[FeatureStats, bool]:
        """(statistics, loaded_from_cache). `images` may be a callable so a hit never loads data.
        With `keep_features`, the statistics hold the features too (from the file or computed)."""
        dim = getattr(feature, "num_features", None)
        stats = self.load(key, dim=dim if isinstance(dim, int) else None, need_features=keep_features)
        if stats is not None:
            return stats, True
        stats = compute_feature_stats(images, feature, batch_size=batch_size, device=device, small_sample=small_sample,
                                      keep_features=keep_features, progress=progress, desc=desc)
        self.num_computed += 1
        self.save(key, stats)
        return stats, False
