"""`SigtermNotice`: every rank of a run learns of a SIGTERM at the same step.

A scheduler that preempts or cancels a job (SLURM's scancel, Kubernetes, `kill -TERM -<pgid>`)
signals every process of it. Lightning 2.6's SIGTERM handler, run on each rank, forwards the
signal to the launcher's children and calls `dist.broadcast` *inside the signal handler*, and
each rank then stops at the end of whichever step its own signal arrived in. With the whole
process group signalled, ranks stop at different steps or the handler's broadcast pairs with
another collective: measured on 2 gloo processes, runs hung until killed (or died in gloo), and
`last.ckpt` held the last periodic save, not the step at the signal.

Here the handler only notes the signal (one process: it also raises Lightning's flag, so a long
validation still stops at its next batch). At the end of every training batch, `agreed` tells
whether any rank has seen one: under DDP by one all-reduce of a 1-element tensor, beside
Lightning's own per-step broadcast of its SIGTERM flag. `Checkpoint` then saves `last.ckpt` at
that point of the step (where a periodic save would, so a resume is exact, at an epoch's last
batch too) and raises Lightning's flag on every rank at once: all ranks stop after that step
together, and train.py exits with 143.
"""

from __future__ import annotations

import signal
from types import FrameType

import lightning as L


class SigtermNotice:
    def __init__(self) -> None:
        self.seen = False  # this rank has received SIGTERM
        self._trainer: L.Trainer | None = None

    def install(self, trainer: L.Trainer) -> None:
        """Take over SIGTERM from Lightning's handler (registered in Trainer._run, before the
        sanity check and the training start, where this is called). Idempotent."""
        if self._trainer is trainer or not hasattr(signal, "SIGTERM"):
            return
        self.seen, self._trainer = False, trainer
        signal.signal(signal.SIGTERM, self._note)  # Lightning's teardown restores the handler before it

    def _note(self, signum: int, frame: FrameType | None) -> None:
        self.seen = True  # no collective, no I/O in a signal handler
        if self._trainer is not None and self._trainer.world_size == 1:
            self._trainer._signal_connector.received_sigterm = True

    def agreed(self, trainer: L.Trainer) -> bool:
        """Whether any rank has seen SIGTERM; every rank must call this at the same point."""
        if self._trainer is not trainer:
            return False
        if trainer.world_size > 1:
            return trainer.strategy.reduce_boolean_decision(self.seen, all=False)
        return self.seen

    @staticmethod
    def stop(trainer: L.Trainer) -> None:
        """Lightning's loops end the run with SIGTERMException after this step (on every rank)."""
        trainer._signal_connector.received_sigterm = True
