"""Feature statistics (mean, covariance, count) of an image set, and their `.npz` files.

FID only needs the mean and covariance of each set's features, so the real data's statistics
are computed once (`compute_feature_stats`, streaming, no grad) and stored; KID needs the
features themselves, which `compute_feature_stats(..., keep_features=True)` keeps in
`FeatureStats.features`. The `.npz` layout is `mu` (D,), `sigma` (D, D), `n` (), all float64 /
int64, and `features` (N, D) float32 when kept: the `mu`/`sigma` keys are those of pytorch-fid's
and guided-diffusion's statistics files, so `FeatureStats.load` also reads theirs (which carry no
`n`; it is then None and sample-size checks are skipped).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from .frechet import check_sample_size, frechet_distance

Images = torch.Tensor | Iterable  # a (N, ...) tensor, or an iterable of batches (e.g. a DataLoader)


@dataclass(frozen=True, eq=False)  # eq on arrays would be ambiguous
class FeatureStats:
    """Gaussian fit of a feature set: mean (D,), covariance (D, D) (float64) and sample count;
    and the (N, D) float32 features themselves when they were kept (KID)."""

    mu: np.ndarray
    sigma: np.ndarray
    n: int | None
    features: torch.Tensor | None = None

    @property
    def dim(self) -> int:
        return int(self.mu.shape[0])

    @classmethod
    def from_sums(cls, total: torch.Tensor, outer: torch.Tensor, n: int, features: torch.Tensor | None = None) -> FeatureStats:
        """From sum of features (D,) and sum of outer products (D, D), as torchmetrics keeps them."""
        check_sample_size(n, total.shape[0], policy="ignore")  # n < 2 is an error even here
        mu = total.double() / n
        sigma = (outer.double() - n * torch.outer(mu, mu)) / (n - 1)
        return cls(mu.cpu().numpy(), sigma.cpu().numpy(), int(n), features)

    @classmethod
    def from_features(cls, features: torch.Tensor | np.ndarray) -> FeatureStats:
        """From a (N, D) feature matrix."""
        f = torch.as_tensor(features).double()
        if f.ndim != 2:
            raise ValueError(f"features must have shape (N, D), got {tuple(f.shape)}")
        return cls.from_sums(f.sum(0), f.T @ f, f.shape[0])

    def save(self, path: str | Path, **extra: str) -> None:
        """Write `mu`, `sigma`, `n` (and string metadata) to an .npz, atomically."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        # Write-then-rename: a reader (another rank, a crashed run) never sees half a file.
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".npz.tmp")
        os.close(fd)
        try:
            with open(tmp, "wb") as f:
                kept = {} if self.features is None else {"features": self.features.float().cpu().numpy()}
                np.savez(f, mu=self.mu, sigma=self.sigma, n=np.int64(-1 if self.n is None else self.n), **kept, **extra)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)

    @classmethod
    def load(cls, path: str | Path, features: bool = True) -> FeatureStats:
        """Read a statistics file (ours, pytorch-fid's, guided-diffusion's); `features=False`
        leaves stored features on disk."""
        with np.load(path) as data:
            missing = {"mu", "sigma"} - set(data.files)
            if missing:
                raise KeyError(f"{str(path)!r} has no {sorted(missing)} (keys: {data.files}); not a statistics file")
            n = int(data["n"]) if "n" in data.files else -1
            kept = torch.from_numpy(data["features"]) if features and "features" in data.files else None
            return cls(data["mu"].astype(np.float64), data["sigma"].astype(np.float64), None if n < 0 else n, kept)

    def frechet_distance(self, other: FeatureStats, method: str = "sqrtm", small_sample: str = "warn") -> float:
        """FID-style distance to `other`, after checking both sample counts against the dimension."""
        for stats, name in ((self, "first set"), (other, "second set")):
            if stats.n is not None:
                check_sample_size(stats.n, stats.dim, what=f"features ({name})", policy=small_sample)
        return frechet_distance(self.mu, self.sigma, other.mu, other.sigma, method=method)


def _batches(images: Images, batch_size: int) -> Iterable[torch.Tensor]:
    if isinstance(images, torch.Tensor):
        yield from images.split(batch_size)
        return
    for batch in images:
        # DataLoaders of labelled data yield (images, labels): keep the images.
        yield batch[0] if isinstance(batch, (tuple, list)) else batch


@torch.no_grad()
def compute_feature_stats(
    images: Images | Callable[[], Images],
    feature: nn.Module,
    batch_size: int = 64,
    device: torch.device | str | None = None,
    small_sample: str = "warn",
    *,
    keep_features: bool = False,
    progress: bool = False,
    desc: str = "features",
) -> FeatureStats:
    """Mean and covariance of `feature(images)`, accumulated in float64 batch by batch: the one
    feature pass of the FID callback and of `python -m ddpm_lightning.evaluate`.

    Args:
        images: a (N, ...) tensor, an iterable of batches (a DataLoader, a generator of samples
            that are dropped after their batch), or a zero-argument callable returning either
            (so that callers can defer loading the data).
        feature: a feature extractor, e.g. `make_feature_extractor("inception")`.
        batch_size: batch size when `images` is a tensor.
        device: where to run `feature` (default: where its parameters are, else CPU).
        keep_features: also return the (N, D) features (CPU float32) in `.features` (KID).
        progress, desc: a progress bar over the batches.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if callable(images) and not isinstance(images, torch.Tensor):
        images = images()
    if device is None:
        param = next(feature.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
    total = len(images) // batch_size + bool(len(images) % batch_size) if isinstance(images, torch.Tensor) else None
    sum_f = outer = None
    kept, n = [], 0
    for batch in tqdm(_batches(images, batch_size), desc=desc, total=total, disable=not progress, unit="batch", leave=False):
        f = feature(batch.to(device))  # (B, D)
        if keep_features:
            kept.append(f.float().cpu())
        f = f.double()
        sum_f = f.sum(0) if sum_f is None else sum_f + f.sum(0)
        outer = f.T @ f if outer is None else outer + f.T @ f
        n += f.shape[0]
    if sum_f is None:
        raise ValueError(f"no images given: cannot compute feature statistics of an empty set ({desc})")
    check_sample_size(n, sum_f.shape[0], policy=small_sample)
    return FeatureStats.from_sums(sum_f, outer, n, torch.cat(kept) if keep_features else None)
