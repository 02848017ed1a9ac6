"""A callback for the subprocess tests: writes the global step after every training batch to a
file (atomically; rank 0 only, under DDP), so a test can tell how far a run in another process has got."""

from __future__ import annotations

import os
from pathlib import Path

from lightning.pytorch.callbacks import Callback


class StepFile(Callback):
    def __init__(self, path: str) -> None:
        self.path = Path(path)

    def on_train_batch_end(self, trainer, pl_module, *args) -> None:
        if trainer.global_rank != 0:
            return
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(str(trainer.global_step))
        os.replace(tmp, self.path)
