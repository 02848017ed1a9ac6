"""Peak memory of training (batch 128) and sampling (batch 256), and proof that sampling memory
does not grow with the number of steps.

    python benchmarks/memory.py                                   # unet_small, CPU: peak RSS
    python benchmarks/memory.py --device cuda --network unet_ddpm_cifar10   # + peak CUDA memory
    python benchmarks/memory.py --smoke

CPU: the increase of the peak resident set size (VmHWM) over the RSS just before the measured
call, each case in a fresh child process forked before any tensor work (so no case reuses memory
an earlier one freed), with glibc told to return every freed block over 128 KiB to the OS at
once (so the peak is that of live memory); Linux only. CUDA: `torch.cuda.max_memory_allocated` after
`reset_peak_memory_stats`, in this process. Training is the `train.py` path with its default EMA
callback for a few steps (the optimizer state appears at the first step). Sampling is DDIM
(eta 0) at several step counts; one more case keeps the whole trajectory
(`return_trajectory=True`), which must grow, to show that the measurement can see growth.
"""

from __future__ import annotations

import ctypes
import multiprocessing as mp
import tempfile
from pathlib import Path

import torch
from benchlib import (
    Row,
    build_run,
    compose,
    finish_args,
    peak_rss_mib,
    reset_peak_rss,
    rss_mib,
    script_main,
    sync,
    train_overrides,
)

M_MMAP_THRESHOLD = -3  # glibc mallopt parameter
GOAL_FLAT = "<= 1.05"  # sampling peak at the most steps / at the fewest: flat


def exact_rss() -> None:
    """Make glibc's malloc map every block over 128 KiB on its own (`mallopt(M_MMAP_THRESHOLD)`),
    so a freed tensor leaves the RSS at once: the peak RSS is then the peak of live memory, not
    of what the allocator happened to keep (without this, repeats scatter by +-30 MiB)."""
    try:
        ctypes.CDLL("libc.so.6").mallopt(M_MMAP_THRESHOLD, 128 * 1024)
    except (OSError, AttributeError):
        pass


def _start(device: str) -> float:
    """Reset the peak marks; the RSS the measurement starts from."""
    sync(device)
    if torch.device(device).type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    reset_peak_rss()
    return rss_mib() or 0.0


def _stop(device: str, base: float) -> dict:
    sync(device)
    out = {"rss_base": base, "rss_peak": peak_rss_mib() or 0.0}
    out["rss_delta"] = out["rss_peak"] - base
    if torch.device(device).type == "cuda":
        out["cuda_peak"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def measure_training(args) -> dict:
    exact_rss()
    with tempfile.TemporaryDirectory() as out:
        overrides = train_overrides(args, batch_size=args.train_batch_size, max_steps=args.train_steps, ema=True)
        cfg = compose(overrides, Path(out))
        datamodule, model, trainer = build_run(cfg)
        datamodule.setup("fit")
        base = _start(args.device)
        trainer.fit(model, datamodule=datamodule)
        return _stop(args.device, base)


def measure_sampling(args, steps: int, trajectory: bool = False) -> dict:
    exact_rss()
    with tempfile.TemporaryDirectory() as out:
        cfg = compose(train_overrides(args, batch_size=8, max_steps=1), Path(out))
        _, model, _ = build_run(cfg)
    model = model.to(args.device)
    spec = {"name": "ddim", "num_steps": steps, "eta": 0.0, "clip_denoised": False}
    base = _start(args.device)
    result = model.sample(args.sample_batch_size, sampler=spec, seed=0, return_trajectory=trajectory)
    res = _stop(args.device, base)
    res["x_mib"] = result.samples.numel() * 4 / 2**20  # one float32 batch
    return res


def _child(conn, fn, args, *a) -> None:
    try:
        conn.send(fn(args, *a))
    except BaseException as err:  # noqa: BLE001 - report any failure to the parent
        conn.send(err)
    finally:
        conn.close()


def isolated(args, fn, *a) -> dict:
    """fn(args, *a) in a forked child on CPU (a fresh heap per case); in this process on CUDA
    (forking after CUDA starts is not allowed; CUDA's peak counters reset cleanly)."""
    if args.device == "cuda" or args.isolate == "none":
        return fn(args, *a)
    ctx = mp.get_context(args.isolate)
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(child, fn, args, *a))
    proc.start()
    child.close()
    result = parent.recv()
    proc.join()
    if isinstance(result, BaseException):
        raise result
    return result


def _note(m: dict) -> str:
    s = f"RSS {m['rss_base']:.0f} -> peak {m['rss_peak']:.0f} MiB"
    if "cuda_peak" in m:
        s += f"; peak CUDA allocated {m['cuda_peak']:.0f} MiB"
    return s


def run(args) -> list[Row]:
    unit = "MiB (CUDA peak)" if args.device == "cuda" else "MiB (peak RSS increase)"
    key = "cuda_peak" if args.device == "cuda" else "rss_delta"
    rows = []
    m = isolated(args, measure_training)
    rows.append(Row("memory", f"training, batch {args.train_batch_size}, {args.network}, {args.precision}, "
                    f"train.py path with EMA, {args.train_steps} steps", m[key], None, unit, note=_note(m)))
    by_steps = {}
    for steps in args.sample_steps:
        m = by_steps[steps] = isolated(args, measure_sampling, steps)
        rows.append(Row("memory", f"sampling DDIM, batch {args.sample_batch_size}, {steps} steps",
                        m[key], None, unit, note=_note(m)))
    lo, hi = min(args.sample_steps), max(args.sample_steps)
    rows.append(Row("memory", f"sampling peak, {hi} vs {lo} steps (no growth with steps)",
                    by_steps[hi][key], by_steps[lo][key], unit, by_steps[hi][key] / max(by_steps[lo][key], 1e-9),
                    GOAL_FLAT, note="ratio of the peaks"))
    m = isolated(args, measure_sampling, hi, True)
    kept = (2 * hi + 1) * m["x_mib"]
    rows.append(Row("memory", f"control: sampling {hi} steps with return_trajectory=True", m[key], by_steps[hi][key],
                    unit, note=f"must grow, and does by {m[key] - by_steps[hi][key]:.1f} MiB: it keeps 2 x {hi} + 1 "
                               f"batches of {m['x_mib']:.2f} MiB ({kept:.1f} MiB) on the CPU; " + _note(m)))
    return rows


def add_args(p) -> None:
    p.add_argument("--train-batch-size", type=int, default=None, help="default 128")
    p.add_argument("--train-steps", type=int, default=None, help="default 3")
    p.add_argument("--sample-batch-size", type=int, default=None, help="default 256")
    p.add_argument("--sample-steps", type=lambda s: [int(v) for v in s.split(",")], default=None,
                   help="DDIM step counts (default 4,16,64 on CPU, 10,100,1000 on CUDA)")
    p.add_argument("--isolate", default="fork", choices=["fork", "spawn", "none"],
                   help="CPU: each case in a fresh child process (fork: cheap) or in this one")


def defaults(args) -> None:
    steps = [10, 100, 1000] if args.device == "cuda" else [4, 16, 64]  # a CPU needs ~1 s per step at 256
    finish_args(args, train_batch_size=(128, 8), train_steps=(3, 2), sample_batch_size=(256, 4),
                sample_steps=(steps, [2, 6]))


def main(argv=None) -> list[Row]:
    return script_main(__doc__, "Memory: peak of training and sampling", run, argv, add_args, defaults)


if __name__ == "__main__":
    main()
