"""Host-device synchronisations inside a training step of the `train.py` path.

    python benchmarks/sync_audit.py                     # CPU: audit of host reads of tensors
    python benchmarks/sync_audit.py --device cuda       # GPU: torch.cuda.set_sync_debug_mode
    python benchmarks/sync_audit.py --smoke

A step that reads a device tensor on the host (`.item()`, `bool(t)`, `.tolist()`, `.cpu()`,
`int(t)`, boolean indexing, ...) makes the CPU wait for the GPU, so it cannot queue the next
step while the GPU works. The audit watches from `on_train_batch_start` to the end of
`on_train_batch_end` (the forward, loss, backward, clipping, optimizer, LR schedule and every
callback's per-step work, EMA included), with no progress bar and no logger (their reads are
every `refresh_rate` / `log_every_n_steps` steps, by design).

* CUDA: `torch.cuda.set_sync_debug_mode("warn")` reports every synchronising CUDA call; each
  is attributed to the innermost Python frame outside torch.
* CPU (no GPU here): a `TorchFunctionMode` records the Python-level calls that would read a
  device tensor on the host, with their source line (on a CPU every tensor is a host tensor,
  so a read of a tensor that stays on the CPU on a GPU run is listed too: read the locations).
  It cannot see reads inside C++ kernels, nor `.to("cpu")`, which the CUDA mode does.
"""

from __future__ import annotations

import collections
import tempfile
import traceback
import warnings
from pathlib import Path

import torch
from benchlib import Row, build_run, compose, finish_args, script_main, train_overrides
from lightning.pytorch.callbacks import Callback
from torch.overrides import TorchFunctionMode

# Python-level tensor calls that read device memory on the host (a sync on CUDA)
HOST_READS = {"item", "__bool__", "tolist", "cpu", "numpy", "__int__", "__float__", "__index__",
              "nonzero", "masked_select", "unique", "any_nonzero"}
_SKIP = ("/torch/", "/warnings.py", "sync_audit.py", "/contextlib.py")
# host reads of tensors that stay on the CPU in a GPU run too, so they are no sync there:
# non-capturable, non-fused optimizers keep their step counters on the CPU on purpose
HOST_RESIDENT = ("torch/optim/optimizer.py:_get_value",)


def _short(filename: str) -> str:
    parts = Path(filename).parts
    if "site-packages" in parts:
        return "/".join(parts[parts.index("site-packages") + 1:])
    return "/".join(parts[-3:])


def _where() -> str:
    """`caller (via innermost torch frame)`: the innermost stack frame outside torch and this file
    (`path:line (function)`), and the torch function that made the read, if any."""
    stack = traceback.extract_stack()[:-1]
    inner = next((f for f in reversed(stack) if "/torch/" in f.filename and "/overrides.py" not in f.filename), None)
    for frame in reversed(stack):
        if not any(s in frame.filename for s in _SKIP):
            where = f"{_short(frame.filename)}:{frame.lineno} ({frame.name})"
            if inner is not None and stack.index(inner) > stack.index(frame):
                where += f" via {_short(inner.filename)}:{inner.name}"
            return where
    return "?"


class _HostReads(TorchFunctionMode):
    def __init__(self, counts: collections.Counter) -> None:
        super().__init__()
        self.counts = counts

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if getattr(func, "__name__", "") in HOST_READS:
            self.counts[f"{func.__name__}: {_where()}"] += 1
        return func(*args, **(kwargs or {}))


def is_host_resident(key: str) -> bool:
    return any(h in key for h in HOST_RESIDENT)


class SyncAudit(Callback):
    """Counts host-device syncs (CUDA) or host reads of tensors (CPU) per training step, from
    step `skip` on (the first steps build optimizer state and EMA copies)."""

    def __init__(self, device: str, skip: int = 1) -> None:
        self.device, self.skip = device, skip
        self.counts: collections.Counter = collections.Counter()
        self.steps = 0
        self._ctx = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step < self.skip:
            return
        self.steps += 1
        if self.device == "cuda":
            self._ctx = warnings.catch_warnings()
            self._ctx.__enter__()
            warnings.simplefilter("always")
            self._old_show = warnings.showwarning
            warnings.showwarning = self._on_warning
            torch.cuda.set_sync_debug_mode("warn")
        else:
            self._ctx = _HostReads(self.counts)
            self._ctx.__enter__()

    def _on_warning(self, message, category, filename, lineno, file=None, line=None) -> None:
        if "synchroniz" in str(message):
            self.counts[f"sync: {_where()}"] += 1

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self._ctx is None:
            return
        if self.device == "cuda":
            torch.cuda.set_sync_debug_mode("default")
            warnings.showwarning = self._old_show
        self._ctx.__exit__(None, None, None)
        self._ctx = None


def audit(args, extra=()) -> SyncAudit:
    total = args.skip + args.steps
    with tempfile.TemporaryDirectory() as out:
        overrides = train_overrides(args, batch_size=args.batch_size, max_steps=total, ema=True, extra=extra)
        cfg = compose(overrides, Path(out))
        datamodule, model, trainer = build_run(cfg)
        callback = SyncAudit(args.device, skip=args.skip)
        trainer.callbacks.append(callback)  # last: its end hook closes the window after EMA's
        trainer.fit(model, datamodule=datamodule)
    return callback


def run(args) -> list[Row]:
    cb = audit(args)
    steps = max(cb.steps, 1)
    syncs = {k: v for k, v in cb.counts.items() if not is_host_resident(k)}
    resident = sum(v for k, v in cb.counts.items() if is_host_resident(k)) / steps
    per_step = sum(syncs.values()) / steps
    what = "syncs (set_sync_debug_mode)" if args.device == "cuda" else "host reads of device tensors (Python-level audit)"
    where = "; ".join(f"{k} x{v / steps:g}/step" for k, v in sorted(syncs.items(), key=lambda kv: -kv[1])) or "none"
    if resident:
        where += f"; not counted: {resident:g}/step reads of the optimizer's CPU step counters (CPU on GPUs too)"
    return [Row("host-device sync", f"{what} per training step, train.py path with EMA, {args.device}",
                per_step, None, "per step", per_step, "<= 0", note=where)]


def add_args(p) -> None:
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--steps", type=int, default=None, help="audited steps")
    p.add_argument("--skip", type=int, default=None, help="first steps not audited")


def defaults(args) -> None:
    finish_args(args, batch_size=(16, 4), steps=(4, 2), skip=(2, 2))


def main(argv=None) -> list[Row]:
    return script_main(__doc__, "Host-device synchronisation in the training step", run, argv, add_args, defaults)


if __name__ == "__main__":
    main()
