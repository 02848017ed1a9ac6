"""EMA of the weights, on Lightning's own `WeightAveraging` callback.

Lightning's callback does the hard parts: validation runs with the averaged weights swapped in,
checkpoints store the averaged weights as `state_dict` (so `load_from_checkpoint` gives the EMA
model) and the live weights beside them (so resuming continues both), and the averaged weights
are copied into the model when training ends. We add the decay warm-up diffusion training needs
and a fused update.
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
        # use_buffers=False: only parameters are averaged; our buffers (the schedule) are constants
        super().__init__(use_buffers=False, multi_avg_fn=self._lerp)
        self.decay = decay
        self.warmup = warmup
        self.update_every_n_steps = update_every_n_steps
        self.start_step = start_step
        self._num_updates = 0
        self._current_decay = 0.0

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

    def _lerp(self, averaged: list[torch.Tensor], current: list[torch.Tensor], num_averaged) -> None:
        # avg <- decay * avg + (1 - decay) * current, for all tensors of one dtype/device at once
        torch._foreach_lerp_(averaged, current, 1.0 - self._current_decay)

    def state_dict(self) -> dict:
        return {**super().state_dict(), "num_updates": self._num_updates}

    def load_state_dict(self, state_dict: dict) -> None:
        super().load_state_dict(state_dict)
        self._num_updates = state_dict.get("num_updates", 0)
