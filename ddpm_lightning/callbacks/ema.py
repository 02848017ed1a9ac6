"""EMA of the weights, on Lightning's own `WeightAveraging` callback.

Lightning's callback does the hard parts: validation runs with the averaged weights swapped in,
checkpoints store the averaged weights as `state_dict` (so `load_from_checkpoint` gives the EMA
model) and the live weights beside them (so resuming continues both), and the averaged weights
are copied into the model when training ends. We add the decay warm-up diffusion training needs
and our own update step: torch's `AveragedModel.update_parameters` tests its device-side counter
(`if self.n_averaged == 0`) twice per call, which on a GPU is two host-device syncs per training
step (benchmarks/sync_audit.py found them). Ours keeps the count in Python and updates all
parameters with one fused `lerp`.
"""

from __future__ import annotations

import torch
from lightning.pytorch.callbacks import WeightAveraging


class EMA(WeightAveraging):
    """Exponential moving average of the parameters.

    Args:
        decay: the final decay (Ho et al. 2020 use 0.9999 for 800k steps; short runs need less).
        warmup: use min(decay, (1 + n) / (10 + n)) at the n-th update (as diffusers' EMAModel
            and Ho et al.'s TPU code): early averages are not dominated by the random init.
        update_every_n_steps: update after every n-th optimizer step.
        start_step: first optimizer step (0-based) that updates the average.
    """

    def __init__(
        self,
        decay: float = 0.9999,
        warmup: bool = True,
        update_every_n_steps: int = 1,
        start_step: int = 0,
    ) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay!r}")
        if update_every_n_steps < 1:
            raise ValueError(f"update_every_n_steps must be >= 1, got {update_every_n_steps!r}")
        # use_buffers=False: only parameters are averaged; buffers are copied (the schedule's are
        # constants; a network's running statistics follow the live model, as in AveragedModel)
        super().__init__(use_buffers=False)
        self.decay = decay
        self.warmup = warmup
        self.update_every_n_steps = update_every_n_steps
        self.start_step = start_step
        self._num_updates = 0
        self._current_decay = 0.0
        self._pairs = None

    def decay_at(self, num_updates: int) -> float:
        if not self.warmup:
            return self.decay
        return min(self.decay, (1 + num_updates) / (10 + num_updates))

    def should_update(self, step_idx: int | None = None, epoch_idx: int | None = None) -> bool:
        if step_idx is None or step_idx < self.start_step:
            return False
        if (step_idx - self.start_step) % self.update_every_n_steps:
            return False
        # the decay is a Python float computed here, so the update needs no host-device sync
        self._current_decay = self.decay_at(self._num_updates)
        self._num_updates += 1
        return True

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        # Lightning's hook with our update in place of AveragedModel.update_parameters
        if trainer.global_step > self._latest_update_step and self.should_update(step_idx=trainer.global_step - 1):
            self.update(pl_module)
            self._latest_update_step = trainer.global_step

    def setup(self, trainer, pl_module, stage: str) -> None:
        super().setup(trainer, pl_module, stage)  # a new AveragedModel at each fit
        self._pairs = None

    def _tensor_pairs(self, pl_module: torch.nn.Module) -> tuple[list[torch.Tensor], ...]:
        """(averaged params, live params, averaged buffers, live buffers), listed once per fit:
        walking a UNet's module tree each step costs about as much as the update itself. The
        lists hold the Parameter objects, not `.data` views, so they stay valid if a tensor's
        storage is replaced (`module.to(device)` does that)."""
        if self._pairs is None or self._pairs[0] is not pl_module:
            module = self._average_model.module
            self._pairs = (pl_module, list(module.parameters()), list(pl_module.parameters()),
                           list(module.buffers()), list(pl_module.buffers()))
        return self._pairs[1:]

    @torch.no_grad()
    def update(self, pl_module: torch.nn.Module) -> None:
        """avg <- decay * avg + (1 - decay) * current (the first update copies), with no host read
        of a device tensor. `should_update` has counted this update and set its decay."""
        averaged, current, averaged_buffers, buffers = self._tensor_pairs(pl_module)
        if self._num_updates == 1:
            torch._foreach_copy_(averaged, current)
        else:
            torch._foreach_lerp_(averaged, current, 1.0 - self._current_decay)
        if buffers:
            torch._foreach_copy_(averaged_buffers, buffers)
        self._average_model.n_averaged.add_(1)  # AveragedModel's own count; in place, no sync

    def state_dict(self) -> dict:
        return {**super().state_dict(), "num_updates": self._num_updates}

    def load_state_dict(self, state_dict: dict) -> None:
        super().load_state_dict(state_dict)
        self._num_updates = state_dict.get("num_updates", 0)
