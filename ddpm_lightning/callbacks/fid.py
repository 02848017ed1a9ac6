"""`FID`: Fréchet distance (and optionally KID) of the model's samples while training, with the EMA
weights, logged as `val/fid` so that checkpoints and sweeps can optimise it.

Every `every_n_steps` (at a validation) the callback draws `num_samples` samples from a fixed set
of starting noises, maps them to a feature space batch by batch, and compares their statistics
with those of `num_real` real images of the datamodule. It samples in `on_validation_batch_end`
of the first validation batch: inside the validation epoch, where Lightning's weight-averaging
callback has swapped the EMA weights in, whatever the callback order. `val/fid` is logged with
`pl_module.log` (allowed in that hook), so it is in `trainer.callback_metrics` at the end of the
validation: `ModelCheckpoint(monitor="val/fid")` and `optimized_metric=val/fid` work.

Feature spaces (`ddpm_lightning.metrics`): "inception" (the published-FID network, ~10 images/s
on 2 CPU cores), "digits" (a digit classifier, for the digits data), "toy2d" (the points
themselves), or "auto": digits for the digits data, toy2d for 2-D points, inception otherwise.
Only "inception" numbers are comparable to published FIDs.

The real statistics (and, with `kid=True`, the real features) are computed once and cached on
disk by `metrics.RealStatsCache`, keyed by `metrics.real_stats_key` (dataset, split, shape,
count, split settings, feature space): the same path and files as `python -m
ddpm_lightning.evaluate`. Sample i starts from `noise.fixed_noise` and draws its step noise from
its own generator (`noise.fixed_samples`), so a sample is the same at any batch size or rank
count, and the same as the sample and evaluate commands draw. The feature network and the
metrics live in this callback, never in the LightningModule, so their weights stay out of
checkpoints.

A class-conditional model draws sample i with class i mod K (class-balanced, at the model's
`conditioning.guidance_scale`); an image-conditioned model restores the validation images: sample
i is conditioned on the condition of validation image i mod V (V = min(num_samples, the
validation size), `image_conditions`), against the real statistics of `real_split` as usual.

Under DDP each rank generates samples r::world of the fixed noise (no duplicates, no padding),
updates its metric with its own features, and every rank calls `compute()`, which sums the
feature statistics over ranks. The real statistics are held by rank 0 only
(`set_real_stats(owner=trainer.is_global_zero)`); rank 0 computes them on a cache miss while the
other ranks wait in `compute()` (within the process group's timeout, 30 min by default).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_info
from torch import nn
from tqdm.auto import tqdm

from torchmetrics.image.kid import KernelInceptionDistance

from ddpm_lightning.metrics import (
    FEATURE_DIMS,
    FEATURES,
    FeatureStats,
    FrechetDistance,
    PrecomputedFeatures,
    RealStatsCache,
    auto_feature,
    check_feature_available,
    check_feature_for_data,
    check_sample_size,
    make_feature_extractor,
    make_metric,
    real_stats_key,
)
from ddpm_lightning.noise import fixed_samples

SPLITS = ("train", "val")


def _one_tensor_per_list(metric: KernelInceptionDistance, dim: int, device) -> None:
    """Concatenate KID's feature lists to exactly one tensor per rank. torchmetrics all-gathers
    list states element by element, so ranks holding lists of different lengths (rank 0 alone
    holds real features; shares may need different numbers of batches) would deadlock."""
    for name in ("real_features", "fake_features"):
        items = getattr(metric, name)
        setattr(metric, name, [torch.cat(items) if items else torch.zeros(0, dim, device=device)])


def positive_int(name: str, value: Any, minimum: int = 1) -> int:
    """`value` if it is an integer >= minimum (not a bool), else one line naming `name`."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


class FID(Callback):
    """Log `val/fid` (and `val/kid_mean`, `val/kid_std`) of EMA samples at validations.

    Args:
        every_n_steps: minimum number of optimizer steps between two evaluations (they happen at
            validations, so set `trainer.val_check_interval` accordingly). The first validation
            after the sanity check always evaluates; `trainer.validate()` always does.
        num_samples: generated samples per evaluation (published FIDs use 10k-50k; at least the
            feature dimension: 2048 inception, 64 digits, 2 toy2d).
        feature: "inception", "digits", "toy2d" or "auto" (see the module docstring).
        sampler: a sampler spec ({"name": "ddim", "num_steps": 50}) or a name; None: the model's.
        batch_size: samples generated and scored per forward pass.
        num_real: real images for the statistics (default: num_samples).
        real_split: "train" (the usual reference) or "val".
        cache_dir: where real statistics are cached; None: recomputed at every run.
        kid: also log the kernel inception distance (torchmetrics KID; it keeps the real features
            in memory; they are cached on disk beside the FID statistics).
        kid_subset_size: KID subset size (capped at the sample counts); kid_subsets: their number.
        weights_path: explicit Inception weights or digit-classifier file (None: the installed ones).
        small_sample: "warn" (default) or "error" when a count is below the feature dimension.
        seed: seed of the fixed starting noise.
        progress: show progress bars (rank 0 only).
    """

    def __init__(
        self,
        every_n_steps: int = 1000,
        num_samples: int = 1000,
        feature: str = "auto",
        sampler: dict[str, Any] | str | None = None,
        batch_size: int = 250,
        num_real: int | None = None,
        real_split: str = "train",
        cache_dir: str | Path | None = None,
        kid: bool = False,
        kid_subset_size: int = 1000,
        kid_subsets: int = 100,
        weights_path: str | Path | None = None,
        small_sample: str = "warn",
        seed: int = 0,
        progress: bool = True,
    ) -> None:
        self.every_n_steps = positive_int("every_n_steps", every_n_steps)
        self.num_samples = positive_int("num_samples", num_samples, minimum=2)
        self.batch_size = positive_int("batch_size", batch_size)
        self.num_real = positive_int("num_real", num_real, minimum=2) if num_real is not None else num_samples
        self.kid_subset_size = positive_int("kid_subset_size", kid_subset_size)
        self.kid_subsets = positive_int("kid_subsets", kid_subsets)
        if feature not in FEATURES:
            raise ValueError(f"feature must be one of {FEATURES}, got {feature!r}")
        if real_split not in SPLITS:
            raise ValueError(f"real_split must be one of {SPLITS}, got {real_split!r}")
        if small_sample not in ("warn", "error"):
            raise ValueError(f"small_sample must be 'warn' or 'error', got {small_sample!r}")
        self.feature = feature
        self.sampler = sampler
        self.real_split = real_split
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir else None
        self.kid = bool(kid)
        self.weights_path = weights_path
        self.small_sample = small_sample
        self.seed = seed
        self.progress = progress
        self.feature_used: str | None = None  # `feature` with "auto" resolved, set in setup()
        self._last_step: int | None = None
        # built in setup() on each rank (never pickled across ddp_spawn, never checkpointed)
        self.features: nn.Module | None = None
        self.fid: FrechetDistance | None = None
        self.kid_metric: KernelInceptionDistance | None = None
        self._real_ready = False
        self._checked = False
        self._image_conditions: torch.Tensor | None = None  # an image-conditioned model's, see image_conditions()
        self.real_stats_from_cache: bool | None = None  # for tests and logs: the last run's source
        self.num_real_computed = 0  # real-statistics cache misses in this process

    @property
    def state_key(self) -> str:
        # two FID callbacks (say digits and inception) keep separate states in a checkpoint
        return self._generate_state_key(feature=self.feature, num_samples=self.num_samples)

    # ---- start-up check (called by train.build before the Trainer starts) -----------------
    def resolved_feature(self, datamodule: Any) -> str:
        if self.feature != "auto":
            return self.feature
        return auto_feature(datamodule.data_shape, getattr(datamodule, "name", None))

    def check(self, datamodule: Any, model: Any = None) -> None:
        """Fail before training on what would fail (or mislead) at the first evaluation."""
        for attr in ("data_shape", "real_samples", "cache_key"):
            if not hasattr(datamodule, attr):
                raise ValueError(
                    f"the FID callback needs a datamodule with `{attr}` (a DiffusionDataModule), "
                    f"got {type(datamodule).__name__}"
                )
        if getattr(datamodule, "val_fraction", None) == 0:
            raise ValueError(
                "the FID callback evaluates at validations, but data.val_fraction=0 gives no "
                "validation loader; set data.val_fraction > 0 or drop the callback (~callbacks.fid)"
            )
        feature = self.resolved_feature(datamodule)
        check_feature_for_data(feature, datamodule.data_shape, getattr(datamodule, "name", None))
        check_feature_available(feature, self.weights_path)  # missing Inception weights: here
        dim = FEATURE_DIMS[feature]
        check_sample_size(self.num_samples, dim, f"FID samples (callbacks.fid.num_samples, {feature} features)",
                          policy=self.small_sample)
        if self.num_real != self.num_samples:
            check_sample_size(self.num_real, dim, f"FID real images (callbacks.fid.num_real, {feature} features)",
                              policy=self.small_sample)
        if model is not None and hasattr(model, "make_sampler"):
            model.make_sampler(self.sampler)  # an unknown sampler name fails now, not in an hour
        self._checked = True

    # ---- hooks ---------------------------------------------------------------------------
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage not in ("fit", "validate") or self.features is not None:
            return
        dm = trainer.datamodule
        if dm is None or not hasattr(dm, "real_samples"):
            raise ValueError("the FID callback needs the real images of a DiffusionDataModule: pass datamodule= to the Trainer")
        if not self._checked:  # used without train.build: check now, before the first evaluation
            self.check(dm, pl_module)
        self.feature_used = self.resolved_feature(dm)
        self.features = make_feature_extractor(self.feature_used, self.weights_path)
        dim = self.features.num_features
        # warned (or refused) once in check(); not again at every evaluation. n < 2 still fails.
        self.fid = make_metric("fid", PrecomputedFeatures(dim), reset_real_features=False,
                               small_sample="ignore" if self.small_sample == "warn" else "error")
        if self.kid:
            subset = min(self.kid_subset_size, self.num_samples, self.num_real)
            self.kid_metric = make_metric("kid", PrecomputedFeatures(dim), subsets=self.kid_subsets, subset_size=subset,
                                          reset_real_features=False)
        self._real_ready = False

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if batch_idx != 0 or dataloader_idx != 0 or trainer.sanity_checking or trainer.fast_dev_run:
            return
        step = trainer.global_step
        fitting = trainer.state.fn == TrainerFn.FITTING
        if fitting and self._last_step is not None and step - self._last_step < self.every_n_steps:
            return
        self._last_step = step
        for key, value in self.evaluate(trainer, pl_module).items():
            # the same value on every rank (compute() synced it): no sync_dist needed
            pl_module.log(key, value, on_step=False, on_epoch=True, sync_dist=False,
                          prog_bar=key == "val/fid", batch_size=1)

    def state_dict(self) -> dict[str, Any]:
        return {"last_step": self._last_step}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._last_step = state_dict.get("last_step")

    # ---- the evaluation ------------------------------------------------------------------
    def evaluate(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, torch.Tensor]:
        """Generate this rank's share, score it, and compute the metrics on every rank."""
        if self.features is None:
            self.setup(trainer, pl_module, "fit")
        start = time.perf_counter()
        device = pl_module.device
        self.features.to(device)
        self.fid.to(device)
        if self.kid_metric is not None:
            self.kid_metric.to(device)
        self._ensure_real(trainer, device)
        self.fid.reset()  # generated features only: the real statistics are kept
        if self.kid_metric is not None:
            self.kid_metric.reset()

        world, rank = trainer.world_size, trainer.global_rank
        indices = list(range(rank, self.num_samples, world))  # this rank's share, no duplicates
        batches = [indices[i : i + self.batch_size] for i in range(0, len(indices), self.batch_size)]
        bar = tqdm(batches, desc=f"FID: sampling + {self.feature_used} features", leave=False,
                   disable=not self.progress or rank != 0)
        for idx in bar:
            f = self.features(self.generate(trainer, pl_module, idx))  # (B, D); the samples are dropped after this batch
            self.fid.update(f, real=False)
            if self.kid_metric is not None:
                self.kid_metric.update(f, real=False)

        results = {"val/fid": self.fid.compute()}  # every rank: torchmetrics syncs the sums
        if self.kid_metric is not None:
            _one_tensor_per_list(self.kid_metric, self.features.num_features, device)
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(self.seed)  # KID's random subsets: the same on every rank and run
                kid_mean, kid_std = self.kid_metric.compute()
            results["val/kid_mean"], results["val/kid_std"] = kid_mean, kid_std
        rank_zero_info(
            f"FID {results['val/fid'].item():.4g} at step {trainer.global_step} ({self.num_samples} samples, "
            f"{self.feature_used} features, {time.perf_counter() - start:.0f} s)"
        )
        return {k: v.detach().float().to(device) for k, v in results.items()}

    def generate(self, trainer: L.Trainer, pl_module: L.LightningModule, indices: list[int]) -> torch.Tensor:
        """Samples `indices` of the fixed noise. A class-conditional model gives sample i class
        i mod K (`fixed_samples`); an image-conditioned one conditions sample i on the validation
        image i mod V's condition (`image_conditions`)."""
        cond = None
        if getattr(pl_module.conditioning, "type", None) == "image":
            images = self.image_conditions(trainer, pl_module)
            cond = {"image": images[[i % len(images) for i in indices]].to(pl_module.device)}
        return fixed_samples(pl_module, indices, self.seed, sampler=self.sampler, cond=cond).samples

    def image_conditions(self, trainer: L.Trainer, pl_module: L.LightningModule) -> torch.Tensor:
        """The conditions (V, c, H, W) of the first V = min(num_samples, validation size)
        validation images, built as training builds them (`metrics.restoration.conditions`,
        inpainting masks seeded with `seed`), once per run: FID then measures restorations of
        held-out images. The validation set may be smaller than num_samples: its conditions repeat."""
        if self._image_conditions is None:
            from ddpm_lightning.metrics.restoration import conditions

            dm = trainer.datamodule
            v = min(self.num_samples, len(dm.split_indices("val")))
            self._image_conditions = conditions(pl_module, dm.real_samples(v, "val"), self.seed).cpu()
        return self._image_conditions

    # ---- the real statistics -------------------------------------------------------------
    def cache_key(self, datamodule: Any) -> str:
        return real_stats_key(datamodule, self.real_split, self.num_real, self.resolved_feature(datamodule), self.weights_path)

    def _ensure_real(self, trainer: L.Trainer, device: torch.device) -> None:
        if self._real_ready:
            return
        dim = self.features.num_features
        if trainer.is_global_zero:
            stats = self._real_stats(trainer.datamodule, device)
        else:
            # only rank 0 holds the real sums (compute() adds them over ranks); nothing to compute
            stats = FeatureStats(np.zeros(dim), np.zeros((dim, dim)), n=0)
        self.fid.set_real_stats(stats, owner=trainer.is_global_zero)
        self._real_ready = True

    def _real_stats(self, datamodule: Any, device: torch.device) -> FeatureStats:
        cache = RealStatsCache(self.cache_dir)
        key = self.cache_key(datamodule)
        stats, self.real_stats_from_cache = cache.get_or_compute(
            key, lambda: datamodule.real_samples(self.num_real, self.real_split), self.features,
            batch_size=self.batch_size, device=device, keep_features=self.kid_metric is not None,
            progress=self.progress, desc=f"FID: real {self.feature_used} features", small_sample="ignore",
        )  # fmt: skip
        self.num_real_computed += cache.num_computed
        if self.cache_dir is not None:
            verb = "from" if self.real_stats_from_cache else "cached in"
            rank_zero_info(f"FID: real statistics {verb} {cache.path(key)}")
        if self.kid_metric is not None:
            self.kid_metric.update(stats.features.to(device), real=True)
        return stats
