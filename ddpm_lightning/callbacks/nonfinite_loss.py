"""`NonFiniteLoss`: a NaN or Inf training loss stops the run with one line, or skips the step.

A diverging run (`optimizer.lr=1e6`, fp16 overflow, a NaN in the data) otherwise trains on, with
NaN weights, validates on NaN and writes NaN checkpoints. train.py installs this callback with the
top-level `nan_policy`:

* `stop` (default): raise `NonFiniteLossError` (train.py: `error: ...`, exit code 2), naming the
  first step whose loss was not finite, the loss and the learning rate;
* `skip`: drop the gradients of such a step, so the optimizer leaves the weights (and its
  moments) alone, and count the skips as `train/skipped_steps`.

Either way no checkpoint is written from a non-finite state: `on_save_checkpoint` checks the
recorded loss and the weights themselves before Lightning writes the file, and raises instead.

The cost of looking (why the checks sit where they do). Testing a device tensor in Python is a
host-device sync, which the training loop otherwise avoids (benchmarks/RESULTS.md: the step
runs without one). So:

* on the CPU a host read is free: the loss is tested at once, before its backward pass;
* on a GPU, `stop` keeps the test on the device (a few scalar kernels that record the first bad
  step and its loss, no sync) and reads the record only where the loop synchronises anyway: every
  `trainer.log_every_n_steps` steps (when Lightning reads the logged loss), before a validation
  and before every checkpoint save. The run stops at most that many steps late, reporting the
  first bad step, and no checkpoint holds a state past it;
* `skip` must decide before each optimizer step, so it reads one boolean per step (a sync on a
  GPU; under DDP also a collective, so that every rank skips alike). It is opt-in for that reason.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

POLICIES = ("stop", "skip")


class NonFiniteLossError(ValueError):
    """The training loss became NaN or Inf (a ValueError: the command line reports it in one line)."""


class NonFiniteLoss(Callback):
    """Stop (or skip the step) when the training loss is NaN or Inf; never save such a state.

    Args:
        policy: "stop" or "skip".
        lr_key: the config key named in the message as the first thing to lower.
        read_every_step: `stop` reads the loss on the host at every step (True) or only at the
            boundaries above (False); None: every step where that is free, a loss on the CPU.
    """

    def __init__(self, policy: str = "stop", lr_key: str = "optimizer.lr", read_every_step: bool | None = None) -> None:
        if policy not in POLICIES:
            raise ValueError(f"nan_policy must be one of {', '.join(POLICIES)}; got {policy!r}")
        self.policy = policy
        self.lr_key = lr_key
        self.read_every_step = read_every_step
        self.skipped_steps = 0
        self._bad_now = False  # skip: a micro-batch of the coming optimizer step had a bad loss
        self._first_step: torch.Tensor | None = None  # device record: first bad step (-1: none) ...
        self._first_loss: torch.Tensor | None = None  # ... and its loss

    # ---- recording ---------------------------------------------------------------------------
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._first_step = torch.full((), -1, dtype=torch.long, device=pl_module.device)
        self._first_loss = torch.zeros((), dtype=torch.float32, device=pl_module.device)

    def on_before_backward(self, trainer: L.Trainer, pl_module: L.LightningModule, loss: torch.Tensor) -> None:
        loss = loss.detach()
        bad = ~torch.isfinite(loss)
        if self.policy == "skip":
            # one host read per (micro-)batch: see the module docstring
            self._bad_now = self._bad_now or bool(bad)
            return
        if self._first_step is None:  # a fit that skipped on_train_start
            self.on_train_start(trainer, pl_module)
        take = bad & (self._first_step < 0)  # (,) bool, on the loss's device
        self._first_step = torch.where(take, trainer.global_step, self._first_step)
        self._first_loss = torch.where(take, loss.float(), self._first_loss)
        if self._reads_every_step(loss) and trainer.world_size == 1:
            # free on the CPU: stop before this step changes anything. Under DDP the other ranks
            # are about to all-reduce gradients with this one: all decide together at batch end.
            self.raise_if_nonfinite(trainer)

    def _reads_every_step(self, loss: torch.Tensor | None = None) -> bool:
        if self.read_every_step is not None:
            return self.read_every_step
        device = loss.device if loss is not None else self._first_step.device
        return device.type == "cpu"

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: Any) -> None:
        if self.policy != "skip":
            return
        # every rank must skip alike, or their weights drift apart
        skip = trainer.strategy.reduce_boolean_decision(self._bad_now, all=False)
        self._bad_now = False
        if skip:
            for group in optimizer.param_groups:
                for p in group["params"]:
                    p.grad = None  # torch optimizers leave a parameter without a gradient untouched
            self.skipped_steps += 1
        pl_module.log("train/skipped_steps", float(self.skipped_steps), on_step=True, on_epoch=False)

    def state_dict(self) -> dict:
        return {"skipped_steps": self.skipped_steps}  # a resumed run keeps counting

    def load_state_dict(self, state_dict: dict) -> None:
        self.skipped_steps = state_dict.get("skipped_steps", 0)

    # ---- checking ----------------------------------------------------------------------------
    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        if self._first_step is not None and (
            self._reads_every_step() or trainer.global_step % max(1, trainer.log_every_n_steps) == 0
        ):
            self.raise_if_nonfinite(trainer)

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            self.raise_if_nonfinite(trainer)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.raise_if_nonfinite(trainer)

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        # before the file is written: raising here means it never is
        self.raise_if_nonfinite(trainer)
        params = [p.detach() for p in pl_module.parameters()]
        bad = bool(params) and not bool(torch.stack([torch.isfinite(p).all() for p in params]).all())
        if trainer.strategy.reduce_boolean_decision(bad, all=False):  # sharded weights: any rank's shard
            raise NonFiniteLossError(
                f"the weights are NaN or Inf at step {trainer.global_step} (the gradients overflowed);"
                f" no checkpoint written. {self._causes(trainer)}"
            )

    def raise_if_nonfinite(self, trainer: L.Trainer) -> None:
        """Raise `NonFiniteLossError` if a non-finite loss was recorded, on any rank (a host read;
        under DDP a collective, so every rank calls this at the same points and stops together)."""
        if self._first_step is None:
            return
        step = int(self._first_step)
        if not trainer.strategy.reduce_boolean_decision(step >= 0, all=False):
            return
        value = f"{float(self._first_loss)} at step {step}" if step >= 0 else "NaN or Inf on another rank"
        raise NonFiniteLossError(
            f"the training loss is {value}; stopped with no checkpoint after it (nan_policy=stop). {self._causes(trainer)}"
        )

    def _causes(self, trainer: L.Trainer) -> str:
        causes = ["a learning rate too high"]
        if trainer.optimizers:
            group = trainer.optimizers[0].param_groups[0]
            base = group.get("initial_lr", group["lr"])  # LR schedulers keep the configured value there
            now = f"; {group['lr']:g} at that point" if group["lr"] != base else ""
            causes[0] += f" ({self.lr_key}={base:g}{now})"
        precision = str(trainer.precision)
        if precision.startswith("16"):
            causes.append(f"fp16 overflow (trainer.precision={precision}: try bf16-mixed)")
        if not trainer.gradient_clip_val:
            causes.append("no gradient clipping (trainer.gradient_clip_val)")
        causes.append("NaN/Inf in the data")
        return f"Likely causes: {', '.join(causes)}; nan_policy=skip skips such steps instead"
