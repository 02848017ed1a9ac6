"""`Toy2DDataModule`: 2-D point clouds (moons, swiss roll, 8 gaussians) for fast experiments.

Points are generated once, noise-free, from a fixed seed (scikit-learn's `make_moons`, the
(x, z) plane of `make_swiss_roll`, or 8 points evenly spaced on a circle), then standardised:
the mean is subtracted per coordinate and both coordinates are divided by *one* scalar, the
overall standard deviation, so the shapes keep their aspect ratio and the cloud has zero mean
and unit scale, like the N(0, I) prior. Gaussian noise of standard deviation `noise` is added
last, in those standardised units, so one noise value means the same thing for every dataset.

Classes (`labels=True`): moons has 2 (`make_moons`' label: 0 the upper moon, 1 the lower),
8gaussians 8 (the mode: class c is the mode at angle c * 2 pi / 8, counter-clockwise from the
+x axis), swiss_roll none (a single curve).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from ddpm_lightning.data.datamodule import DiffusionDataModule, check_choice, check_positive_int
from ddpm_lightning.data.datasets import TensorItems

TOY_DATASETS = ("moons", "swiss_roll", "8gaussians")

# Class names per dataset; None: no classes.
TOY_CLASSES: dict[str, list[str] | None] = {
    "moons": ["upper", "lower"],
    "swiss_roll": None,
    "8gaussians": [f"{45 * c}deg" for c in range(8)],
}


def clean_points(dataset: str, n_samples: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray | None]:
    """Noise-free points (n_samples, 2) of `dataset`, in the generator's own units, and their
    classes (n_samples,) (None for swiss_roll)."""
    seed = int(rng.integers(2**31 - 1))  # scikit-learn wants an int seed
    if dataset == "moons":
        from sklearn.datasets import make_moons

        return make_moons(n_samples, noise=0.0, random_state=seed)
    if dataset == "swiss_roll":
        from sklearn.datasets import make_swiss_roll

        xyz = make_swiss_roll(n_samples, noise=0.0, random_state=seed)[0]  # (n, 3)
        return xyz[:, [0, 2]], None  # the spiral lies in the x-z plane; y is the roll's length
    if dataset == "8gaussians":
        modes = rng.integers(8, size=n_samples)  # (n,) the class
        angles = modes * (2 * np.pi / 8)
        return np.stack([np.cos(angles), np.sin(angles)], axis=1), modes  # modes on the unit circle
    check_choice("dataset", dataset, TOY_DATASETS)
    raise AssertionError("unreachable")


def standardise(points: np.ndarray) -> np.ndarray:
    """Zero mean per coordinate, unit overall standard deviation (one scale for both axes)."""
    centred = points - points.mean(axis=0)
    return centred / np.sqrt((centred**2).mean())


class Toy2DDataModule(DiffusionDataModule):
    """Standardised 2-D points `(2,)`; batches are `(B, 2)`.

    Args:
        dataset: one of "moons", "swiss_roll", "8gaussians".
        n_samples: size of the generated pool, before the validation split.
        noise: std of the Gaussian noise added after standardisation (standardised units).
        seed: seed of the generator, so the pool is the same on every run and every rank.
        **kwargs: the loader and split arguments of `DiffusionDataModule` (`labels=True`:
            `(points, classes)` batches, for moons and 8gaussians).
    """

    is_image = False

    def __init__(
        self,
        dataset: str = "moons",
        n_samples: int = 10000,
        noise: float = 0.1,
        seed: int = 0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.dataset = check_choice("dataset", dataset, TOY_DATASETS)
        self.n_samples = check_positive_int("n_samples", n_samples)
        if not isinstance(noise, (int, float)) or noise < 0:
            raise ValueError(f"noise must be a number >= 0, got {noise!r}")
        self.noise = float(noise)
        self.seed = int(seed)
        self.name = dataset
        self.data_shape = (2,)
        self.class_names = TOY_CLASSES[dataset]
        self.num_classes = None if self.class_names is None else len(self.class_names)
        self._labels: torch.Tensor | None = None
        self._check_labels()

    def _build_pool(self) -> Dataset:
        rng = np.random.default_rng(self.seed)
        points, labels = clean_points(self.dataset, self.n_samples, rng)
        points = standardise(points)
        points = points + self.noise * rng.standard_normal(points.shape)
        self._labels = None if labels is None else torch.as_tensor(labels, dtype=torch.long)  # (n_samples,)
        return TensorItems(torch.as_tensor(points, dtype=torch.float32))  # (n_samples, 2)

    def _pool_labels(self) -> torch.Tensor:
        assert self._labels is not None  # set by _build_pool, which setup ran first
        return self._labels

    def _no_labels_reason(self) -> str:
        return f"data=toy2d dataset={self.dataset} has no class labels"

    def _cache_tags(self) -> list[str]:
        return [f"pool{self.n_samples}", f"noise{self.noise:g}", f"gen{self.seed}"]
