"""`RNGState`: the random draws of training form one stream per process, across validation and
across a resume.

Lightning's checkpoints hold no random state (weights, optimizers, schedulers, loop counters,
callback and datamodule states only), so a resumed run would draw its noise, timesteps and
dropout masks from wherever seeding and start-up left the global generators. This callback
keeps the generators training draws from (torch's CPU generator, the CUDA generator of the
training device, numpy's and Python's `random`) as one stream:

* at the end of each training batch it takes a snapshot of them, and at the start of the next
  batch it puts the snapshot back. What runs in between (validation, sample grids, FID, a
  checkpoint save, a DataLoader starting an epoch) draws from a side stream, so the training
  draws do not depend on how often those run, nor on whether they ran in this process at all.
* the snapshot is the callback's state, saved in every checkpoint; the first batch after a
  resume starts from it, so it draws exactly what the uninterrupted run drew.

Under DDP each rank has its own stream (`DiffusionModule.on_train_start` seeds the ranks
apart); rank 0 alone writes checkpoints, so `state_dict` gathers every rank's snapshot (every
rank takes part in a save, as Lightning requires) and each rank takes back its own.
The data order and augmentation have their own, separately saved state: see
`ddpm_lightning.data.resumable`.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_warn


def rng_snapshot(device: torch.device) -> dict[str, Any]:
    """The state of the global generators that code running on `device` draws from, as tensors
    and plain Python values (checkpoints are loaded with `weights_only=True`: no numpy arrays)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss),  # keys: uint32
        "python": random.getstate(),
    }
    if device.type == "cuda":  # the training device's only: reading all would start a CUDA context on each
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def restore_rng(state: dict[str, Any], device: torch.device) -> None:
    """Put back a `rng_snapshot` taken on a device of the same type."""
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    random.setstate(state["python"])
    if "cuda" in state and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], device)


class RNGState(Callback):
    """Keeps training's random stream apart from everything else, and in the checkpoint."""

    def __init__(self) -> None:
        self._snapshot: dict[str, Any] | None = None  # this rank's, taken at the last batch end
        self._in_batch = False  # between the restore at batch start and the snapshot at batch end
        self._trainer = None
        self._device = torch.device("cpu")

    def setup(self, trainer, pl_module, stage: str) -> None:
        # before a checkpoint is restored (Lightning: setup, then restore): a new fit starts
        # from the generators as they are, a resumed one from the checkpoint's snapshot
        self._trainer, self._device = trainer, pl_module.device
        self._snapshot, self._in_batch = None, False

    def on_train_start(self, trainer, pl_module) -> None:
        self._device = pl_module.device  # moved to its device after setup

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self._snapshot is not None:
            restore_rng(self._snapshot, self._device)
        self._in_batch = True

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._snapshot = rng_snapshot(self._device)
        self._in_batch = False

    def state_dict(self) -> dict[str, Any]:
        # A save from inside the batch (a callback's on_train_batch_end before ours) sees the
        # training stream live; any later save sees the snapshot.
        own = rng_snapshot(self._device) if self._in_batch else self._snapshot
        world_size = self._trainer.world_size if self._trainer is not None else 1
        if world_size > 1 and dist.is_available() and dist.is_initialized():
            states: list[Any] = [None] * world_size
            dist.all_gather_object(states, own)
        else:
            states = [own]
        return {"states": states} if own is not None else {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        states = state_dict.get("states", [])
        world_size = self._trainer.world_size if self._trainer is not None else 1
        rank = self._trainer.global_rank if self._trainer is not None else 0
        if len(states) != world_size:
            rank_zero_warn(
                f"the checkpoint holds the random state of {len(states)} process(es), this run has {world_size}:"
                " training continues with fresh random draws, so it will not repeat the uninterrupted run exactly"
            )
            return
        self._snapshot = states[rank]
