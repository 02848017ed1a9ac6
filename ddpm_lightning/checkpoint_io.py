"""`AtomicCheckpointIO`: checkpoints written beside their target, then renamed into place.

Lightning's `TorchCheckpointIO` saves through an fsspec transaction, whose local files are
written to the system temp directory and moved into place on commit. When the run directory is
on another filesystem (a cluster's scratch or network disk), that move is a copy, and a kill
during it leaves a truncated `last.ckpt` (issue 17 found a 0-byte one). Here a checkpoint is
streamed to a temporary file in the target's own directory, flushed to disk (`fsync`), and
`os.replace`d onto the target: a rename within one filesystem is atomic, so a reader (or a
resume after a kill) sees the old checkpoint or the new one, never a part of either.

A kill during a save leaves the temporary file (`.last.ckpt.<pid>.tmp`); `remove_stale_temp_files`
deletes those of processes no longer alive, at the start of the next run in that directory.

Loading is Lightning's own: a user's `ckpt_path` is checked before any work by
`safe_load.load_checkpoint` (one line for a truncated, empty, garbage or foreign file), and the
files Lightning writes for itself (ddp_spawn's weights hand-over) need no such check.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.utilities.cloud_io import _is_local_file_protocol
from lightning.pytorch.plugins.io import TorchCheckpointIO


log = logging.getLogger(__name__)

TEMP_SUFFIX = ".tmp"


def temp_path(path: Path) -> Path:
    """The temporary file a save of `path` writes first: same directory, so same filesystem."""
    return path.with_name(f".{path.name}.{os.getpid()}{TEMP_SUFFIX}")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def remove_stale_temp_files(directory: str | Path) -> list[Path]:
    """Delete the temporary files that saves killed midway left in `directory` (those whose
    writing process is gone); return what was deleted."""
    removed = []
    for tmp in Path(directory).glob(f".*.ckpt.*{TEMP_SUFFIX}"):
        pid = tmp.name[: -len(TEMP_SUFFIX)].rsplit(".", 1)[-1]
        if pid.isdigit() and not _pid_alive(int(pid)):
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    if removed:
        log.info("removed %d partial checkpoint file(s) left by an interrupted save in %s", len(removed), directory)
    return removed


class AtomicCheckpointIO(TorchCheckpointIO):
    """`TorchCheckpointIO` with atomic local saves and one-line errors for unreadable files."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if storage_options is not None or not _is_local_file_protocol(path):
            # remote storage (s3://, gs://): Lightning's fsspec transaction is the atomic step there
            return super().save_checkpoint(checkpoint, path, storage_options)
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = temp_path(path)
        try:
            with open(tmp, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())  # the data is on disk before the rename makes it the checkpoint
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        _fsync_directory(path.parent)  # and the rename itself survives a power cut


def _fsync_directory(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # a platform without directory handles
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
