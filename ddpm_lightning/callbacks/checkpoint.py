"""`Checkpoint`: Lightning's `ModelCheckpoint`, with `last.ckpt` always the newest state.

Lightning 2.6 writes `last.ckpt` only when it writes another checkpoint at the same step: with a
monitored metric (`val/loss`), that is only when the metric improves, so a run whose loss went up
at its last validations keeps an old `last.ckpt`; nothing is saved when training ends between
validations, nor on SIGTERM (issue 17: a run to step 290 left `last.ckpt` at step 260). Here
`last.ckpt` is written, whatever the monitored metric does:

* every `save_last_every_n_steps` optimizer steps (after that step's validation, if one follows);
* after every validation;
* when training ends, in `on_train_epoch_end` of the last epoch: after the last validation and
  before `on_train_end`, where the EMA callback copies the averaged weights into the model (a
  checkpoint written after that would hold the EMA weights as the live ones);
* on SIGTERM, at the end of the step the signal arrived in (the same step on every DDP rank,
  `SigtermNotice`), or at the validation batch it arrived in (one process): Lightning's loops
  then stop with a `SIGTERMException`, and train.py exits with 143.

The best-`monitor` checkpoint is kept as before (`save_top_k`); these saves of `last.ckpt` do not
count as the step's save, so they never stop the best checkpoint of that step from being written.
Nothing is written under `fast_dev_run`.
"""

from __future__ import annotations

from typing import Any

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint, WeightAveraging
from lightning.pytorch.loops.utilities import _is_max_limit_reached
from lightning.pytorch.utilities.exceptions import SIGTERMException
from lightning.pytorch.utilities.rank_zero import rank_zero_info

from ddpm_lightning.callbacks.sigterm_notice import SigtermNotice
from ddpm_lightning.checkpoint_io import remove_stale_temp_files


class Checkpoint(ModelCheckpoint):
    """`ModelCheckpoint` whose `last.ckpt` always holds the newest state.

    Args:
        save_last_every_n_steps: write `last.ckpt` every this many optimizer steps (None: only at
            validations, the end of training and SIGTERM). What a kill between saves loses.
        *args, **kwargs: `ModelCheckpoint`'s (`save_last` defaults to True).
    """

    def __init__(self, *args: Any, save_last_every_n_steps: int | None = 100, **kwargs: Any) -> None:
        kwargs.setdefault("save_last", True)
        if save_last_every_n_steps is not None and (isinstance(save_last_every_n_steps, bool) or save_last_every_n_steps < 1):
            raise ValueError(f"save_last_every_n_steps must be a positive number of steps or null, got {save_last_every_n_steps!r}")
        super().__init__(*args, **kwargs)
        self.save_last_every_n_steps = save_last_every_n_steps
        self._newest_step = -1  # the global step whose state last.ckpt holds (-1: none this fit)
        self._sigterm = SigtermNotice()

    # ---- hooks -----------------------------------------------------------------------------
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        self._newest_step = -1
        if trainer.is_global_zero and stage == "fit" and self.dirpath and self._fs.isdir(self.dirpath):
            remove_stale_temp_files(self.dirpath)

    def on_sanity_check_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._sigterm.install(trainer)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        self._sigterm.install(trainer)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any, **kwargs: Any) -> None:
        # Lightning runs checkpoint callbacks after the others: the EMA and RNG state are this step's
        if self._sigterm.agreed(trainer):
            if self.save_newest(trainer):
                rank_zero_info(f"SIGTERM: saved the state at step {trainer.global_step} to {self.last_model_path}")
            self._sigterm.stop(trainer)
        super().on_train_batch_end(trainer, pl_module, *args, **kwargs)
        every = self.save_last_every_n_steps
        if every and trainer.global_step % every == 0 and not _validation_follows(trainer):
            self.save_newest(trainer)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_validation_end(trainer, pl_module)
        self.save_newest(trainer)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        if _training_ends(trainer):
            self.save_newest(trainer)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Lightning's hook saves last.ckpt if nothing was saved, ignoring fast_dev_run (whose
        # config promises no checkpoints); our saves happened in on_train_epoch_end
        if not trainer.fast_dev_run:
            super().on_train_end(trainer, pl_module)

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        super().on_exception(trainer, pl_module, exception)
        if not isinstance(exception, SIGTERMException):
            return  # a crash (or a non-finite loss) may have left a state not worth keeping
        if trainer.validating:
            # stopped inside a validation, where the weight-averaging callbacks have swapped the
            # EMA weights into the model: swap back first, as the validation's end would
            for cb in trainer.callbacks:
                if isinstance(cb, WeightAveraging):
                    cb.on_validation_epoch_end(trainer, pl_module)
        if self.save_newest(trainer):
            rank_zero_info(f"SIGTERM: saved the state at step {trainer.global_step} to {self.last_model_path}")

    # ---- saving ----------------------------------------------------------------------------
    def save_newest(self, trainer: L.Trainer) -> bool:
        """Write `last.ckpt` with the current state unless it already holds this step's, or this
        is no time to save (not fitting, a sanity check, fast_dev_run); True if it was written."""
        if not self.save_last or trainer.sanity_checking or trainer.fast_dev_run or not trainer.training and not trainer.validating:
            return False
        if trainer.state.fn != "fit" or self._newest_step == trainer.global_step:
            return False
        best_step = self._last_global_step_saved
        self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
        # Lightning skips a step's best-checkpoint save once "a checkpoint was saved at this step"
        self._last_global_step_saved = best_step
        return True

    def _save_last_checkpoint(self, trainer: L.Trainer, monitor_candidates: dict) -> None:
        super()._save_last_checkpoint(trainer, monitor_candidates)
        if self.save_last:
            self._newest_step = trainer.global_step


def _training_ends(trainer: L.Trainer) -> bool:
    """Whether the fit loop stops after this epoch (max_steps, max_epochs, or `should_stop`)."""
    loop = trainer.fit_loop
    return (
        _is_max_limit_reached(trainer.global_step, loop.max_steps)
        or _is_max_limit_reached(loop.epoch_progress.current.processed, loop.max_epochs if loop.max_epochs is not None else -1)
        or trainer.should_stop
    )


def _validation_follows(trainer: L.Trainer) -> bool:
    """Whether a validation runs right after this training batch (then the step's `last.ckpt` is
    written after it, holding the validation's results). Lightning's own decision, a private
    method: if it is gone, answer False (the step is then saved twice, before and after)."""
    try:
        loop = trainer.fit_loop.epoch_loop
        return bool(loop._should_check_val_fx(trainer.fit_loop._data_fetcher)) and sum(trainer.num_val_batches) > 0
    except (AttributeError, TypeError):
        return False
