"""`ClassAccuracy`: `val/class_accuracy` of a class-conditional digits model while training, the
share of its guided EMA samples that the shipped digit classifier labels as the class asked for
(`metrics.class_accuracy`).

Every `every_n_validations`-th validation (counted from 1, after the sanity check;
`trainer.validate()` always scores) it draws `num_samples` class-balanced samples (sample i asks
for class i mod 10 and starts from the fixed noise (seed, i), so the numbers of one run are
comparable and a sample is the same at any batch size or rank count) with a cheap sampler (DDIM,
`sampler.num_steps` steps) at the guidance `guidance_scale` (None: the model's
`conditioning.guidance_scale`), classifies them, and logs the share of hits. A few steps score a
little below the 50-step samples the benchmark scores (benchmarks/class_conditional.py); the
curve, not the level, is the point.

Sampling happens in `on_validation_batch_end` of the first validation batch, as the grid and FID
callbacks do: inside the validation epoch, where Lightning's weight-averaging callback has
swapped the EMA weights in, whatever the callback order. Under DDP each rank scores samples
r::world and every rank joins the sum of the counts. The classifier lives in the callback, never
in the LightningModule, so its weights stay out of checkpoints.
"""

from __future__ import annotations

import time
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_info
from torch import nn

from ddpm_lightning.callbacks.fid import positive_int
from ddpm_lightning.guidance import check_guidance
from ddpm_lightning.metrics.class_accuracy import (
    check_class_model,
    check_digits_classes,
    check_digits_data,
    class_accuracy_counts,
    load_digit_classifier,
)

KEY = "val/class_accuracy"


def _positive_int(name: str, value: Any) -> int:
    return positive_int(f"callbacks.class_accuracy.{name}", value)


class ClassAccuracy(Callback):
    """Log `val/class_accuracy` of guided, class-balanced EMA samples at validations.

    Args:
        every_n_validations: score at every n-th validation (1: each).
        num_samples: samples per score (a multiple of 10 keeps the classes exactly balanced).
        guidance_scale: classifier-free guidance w (None: the model's `conditioning.guidance_scale`).
        sampler: a sampler spec ({"name": "ddim", "num_steps": 10}) or a name; None: the model's.
        batch_size: samples drawn per forward pass.
        seed: seed of the fixed starting noise.
        weights_path: another digit-classifier file (None: the shipped one).
    """

    def __init__(
        self,
        every_n_validations: int = 1,
        num_samples: int = 100,
        guidance_scale: float | None = None,
        sampler: dict[str, Any] | str | None = None,
        batch_size: int = 250,
        seed: int = 0,
        weights_path: str | None = None,
    ) -> None:
        self.every_n_validations = _positive_int("every_n_validations", every_n_validations)
        self.num_samples = _positive_int("num_samples", num_samples)
        self.batch_size = _positive_int("batch_size", batch_size)
        if guidance_scale is not None:
            check_guidance(guidance_scale)
        self.guidance_scale = guidance_scale
        self.sampler = sampler
        self.seed = seed
        self.weights_path = weights_path
        self.classifier: nn.Module | None = None  # built in setup(), never checkpointed
        self._validations = 0  # validations seen while fitting (saved: a resumed run keeps the rhythm)
        self._checked = False

    # ---- start-up check (called by train.build before the Trainer starts) -----------------
    def check(self, datamodule: Any = None, model: Any = None) -> None:
        """One line before training: an unconditional model, data other than digits, a guidance
        the model cannot take (w != 1 without condition dropout), a bad sampler or no validations."""
        if model is not None:
            check_class_model(model)
        if datamodule is not None:
            check_digits_data(getattr(datamodule, "name", None), getattr(datamodule, "data_shape", None))
            if getattr(datamodule, "val_fraction", None) == 0:
                raise ValueError("val/class_accuracy is scored at validations, but data.val_fraction=0 gives none; "
                                 "set data.val_fraction > 0 or drop the callback (~callbacks.class_accuracy)")
        if model is not None:
            check_digits_classes(model)
            model.conditioning.guided(model.denoiser, self.guidance_scale)  # w != 1 without condition dropout
            if hasattr(model, "make_sampler"):
                model.make_sampler(self.sampler)  # an unknown sampler option fails now
        load_digit_classifier(self.weights_path)  # a missing weights file: now, not at the first validation
        self._checked = True

    # ---- hooks ---------------------------------------------------------------------------
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage not in ("fit", "validate"):
            return
        if not self._checked:  # used without train.build: check now, before the first validation
            self.check(trainer.datamodule, pl_module)
        if self.classifier is None:
            self.classifier = load_digit_classifier(self.weights_path)

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if batch_idx != 0 or dataloader_idx != 0 or trainer.sanity_checking or trainer.fast_dev_run:
            return
        if trainer.state.fn == TrainerFn.FITTING:
            self._validations += 1
            if self._validations % self.every_n_validations:
                return
        pl_module.log(KEY, self.evaluate(trainer, pl_module), on_step=False, on_epoch=True, sync_dist=False,
                      prog_bar=True, batch_size=1)  # the same value on every rank: no sync needed

    def state_dict(self) -> dict[str, Any]:
        return {"validations": self._validations}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._validations = state_dict.get("validations", 0)

    # ---- the score -----------------------------------------------------------------------
    def evaluate(self, trainer: L.Trainer, pl_module: L.LightningModule) -> torch.Tensor:
        """This rank's share scored, the counts summed over ranks: the accuracy (a 0-d tensor)."""
        if self.classifier is None:
            self.setup(trainer, pl_module, "fit")
        start = time.perf_counter()
        device = pl_module.device
        self.classifier.to(device)
        mine = range(trainer.global_rank, self.num_samples, trainer.world_size)  # no duplicates, no padding
        correct, total, _ = class_accuracy_counts(pl_module, mine, self.classifier, self.seed, self.batch_size,
                                                  sampler=self.sampler, guidance_scale=self.guidance_scale)
        counts = torch.tensor([correct, total], dtype=torch.float32, device=device)  # exact below 2**24; any backend
        if trainer.world_size > 1:  # every rank calls it (a collective)
            counts = trainer.strategy.reduce(counts, reduce_op="sum")
        accuracy = (counts[0] / counts[1]).float()
        w = pl_module.conditioning.guidance_scale if self.guidance_scale is None else self.guidance_scale
        rank_zero_info(f"class accuracy {accuracy.item():.3f} at step {trainer.global_step} ({int(counts[1])} "
                       f"class-balanced samples, guidance w={w:g}, {time.perf_counter() - start:.1f} s)")
        return accuracy
