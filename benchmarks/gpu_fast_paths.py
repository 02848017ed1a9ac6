"""GPU fast paths of the `train.py` path, switched on one at a time (cumulatively), with images/s,
model FLOPs utilisation (MFU) and the 5,000 images/s goal; and batched, bf16 sampling.

    python benchmarks/gpu_fast_paths.py --device cuda --network unet_ddpm_cifar10
    python benchmarks/gpu_fast_paths.py                  # CPU: every GPU row is n/a

Training switches, in order, each added to the ones before (overrides of `python train.py`):
fp32 baseline -> `trainer.precision=bf16-mixed` -> `model.channels_last=true` ->
`optimizer.fused=true` -> `trainer.benchmark=true` (cuDNN autotuning) -> loader workers with
pinned memory and persistent workers -> `model.compile=true`. EMA stays on (the default run's
callback), validation, checkpoints, logger and progress bar off.

MFU = (FLOPs of one forward + backward, counted by `torch.utils.flop_counter.FlopCounterMode`)
x steps/s / the device's dense bf16 peak (H100 SXM: 989 TFLOP/s; `--peak-tflops` to set it).
The goal: 5,000 training images/s in bf16 on one H100 for the 35.7M-parameter DDPM CIFAR-10
UNet at batch 128, about twice Ho et al.'s 2,688 images/s (21 steps/s x 128) on a TPU v3-8.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from benchlib import (
    Row,
    build_run,
    compose,
    finish_args,
    median,
    merge_overrides,
    peak_tflops,
    script_main,
    sync,
    train_overrides,
    train_step_flops,
)
from train_overhead import lightning_images_per_s

GOAL_IMAGES_PER_S = 5000.0  # bf16, one H100, unet_ddpm_cifar10, batch 128
HO_ET_AL_IMAGES_PER_S = 2688.0  # 21 steps/s x 128 on a TPU v3-8 (Ho et al. 2020, App. B)

# (label, precision, extra overrides), cumulative
SWITCHES = (
    ("fp32 baseline", "32-true", ["model.channels_last=false", "model.compile=false", "optimizer.fused=false",
                                  "trainer.benchmark=false", "data.num_workers=0", "data.pin_memory=false",
                                  "data.persistent_workers=false"]),
    ("+ trainer.precision=bf16-mixed", "bf16-mixed", []),
    ("+ model.channels_last=true", "bf16-mixed", ["model.channels_last=true"]),
    ("+ optimizer.fused=true", "bf16-mixed", ["optimizer.fused=true"]),
    ("+ trainer.benchmark=true (cuDNN autotune)", "bf16-mixed", ["trainer.benchmark=true"]),
    ("+ data.num_workers=4, pin_memory, persistent_workers", "bf16-mixed",
     ["data.num_workers=4", "data.pin_memory=true", "data.persistent_workers=true"]),
    ("+ model.compile=true", "bf16-mixed", ["model.compile=true"]),
)


def _with(args, **changes) -> argparse.Namespace:
    return argparse.Namespace(**{**vars(args), **changes})


def training_rows(args) -> tuple[list[Row], float | None]:
    rows, extra, base, best = [], [], None, None
    for label, precision, more in SWITCHES:
        if args.device != "cuda" and not args.run_on_cpu:
            rows.append(Row("GPU fast path", f"train: {label}", None, None, "images/s", note="GPU only: n/a on CPU"))
            continue
        if "compile" in label and args.no_compile:
            continue
        trial = merge_overrides(extra + more)
        run_args = _with(args, precision=precision)
        try:
            values = [lightning_images_per_s(run_args, ema=True, extra=trial) for _ in range(args.repeats)]
        except RuntimeError as err:  # a switch this machine or Lightning refuses (e.g. fused + clipping in 16-mixed)
            rows.append(Row("GPU fast path", f"train: {label}", None, base, "images/s",
                            note=f"refused, left off the next rows: {str(err).splitlines()[0][:160]}"))
            continue
        extra = trial
        ips = median(values)
        base = base or ips
        if precision == "bf16-mixed":  # the goal is a bf16 figure
            best = max(best or 0.0, ips)
        rows.append(Row("GPU fast path", f"train: {label}", ips, base, "images/s", ips / base,
                        note=f"vs fp32 baseline; {args.network}, batch {args.batch_size}"))
    return rows, best


def mfu_rows(args, best: float | None) -> list[Row]:
    """FLOPs per image of a training step, MFU at the best throughput, and the 5,000 images/s goal."""
    with tempfile.TemporaryDirectory() as out:
        cfg = compose(train_overrides(args, batch_size=8, max_steps=1), Path(out))
        _, model, _ = build_run(cfg)
    net = model.network.to(args.device)
    x = torch.randn(2, *model.data_shape, device=args.device)
    t = torch.randint(0, 1000, (2,), device=args.device)
    flops_per_image = train_step_flops(net, x, t) / 2
    params = sum(p.numel() for p in net.parameters()) / 1e6
    peak = peak_tflops(args.device, args.peak_tflops)
    rows = [Row("MFU", f"FLOPs of one training step per image ({args.network}, {params:.1f}M parameters)",
                flops_per_image / 1e9, None, "GFLOP", note="forward + backward, FlopCounterMode")]
    need = GOAL_IMAGES_PER_S * flops_per_image / 1e12
    if best is None or peak is None:
        rows.append(Row("MFU", "model FLOPs utilisation at the best training throughput", None, None, "%",
                        note=f"GPU only; 5,000 images/s needs {need:.1f} TFLOP/s "
                             f"({100 * need / 989.4:.1f}% of an H100 SXM's 989 bf16 TFLOP/s)"))
    else:
        achieved = best * flops_per_image / 1e12
        rows.append(Row("MFU", "model FLOPs utilisation at the best training throughput", 100 * achieved / peak,
                        None, "%", note=f"{achieved:.0f} of {peak:.0f} TFLOP/s (dense bf16 peak)"))
    goal_case = f"training images/s, bf16, {args.network}, batch {args.batch_size}, one GPU: goal 5,000 (H100)"
    rows.append(Row("goal", goal_case, best, GOAL_IMAGES_PER_S, "images/s",
                    best / GOAL_IMAGES_PER_S if best else None, ">= 1.00" if best else "",
                    note=f"Ho et al. 2020: {HO_ET_AL_IMAGES_PER_S:,.0f} images/s on a TPU v3-8"
                         + ("" if best else "; GPU only: n/a on CPU")))
    return rows


def sampling_rows(args) -> list[Row]:
    """DDIM-50 images/s: one batch of N vs N/16 batches of 16; fp32 vs bf16 autocast."""
    if args.device != "cuda" and not args.run_on_cpu:
        return [Row("GPU fast path", f"sample: {c}", None, None, "images/s", note="GPU only: n/a on CPU")
                for c in ("batched (one batch of N vs batches of 16)", "bf16 autocast vs fp32")]
    with tempfile.TemporaryDirectory() as out:
        cfg = compose(train_overrides(args, batch_size=8, max_steps=1, extra=["model.channels_last=true"]), Path(out))
        _, model, _ = build_run(cfg)
    model = model.to(args.device).eval()
    n, spec = args.sample_batch_size, {"name": "ddim", "num_steps": 50, "eta": 0.0}

    def images_per_s(batch: int, dtype) -> float:
        def once() -> float:
            sync(args.device)
            t0 = time.perf_counter()
            with torch.autocast(torch.device(args.device).type, dtype=dtype, enabled=dtype is not None):
                for _ in range(n // batch):
                    model.sample(batch, sampler=spec)
            sync(args.device)
            return n / (time.perf_counter() - t0)

        once()  # warm-up (cuDNN plans, allocator)
        return median([once() for _ in range(args.repeats)])

    full = images_per_s(n, None)
    small = images_per_s(16, None)
    bf16 = images_per_s(n, torch.bfloat16)
    return [
        Row("GPU fast path", f"sample: DDIM-50, one batch of {n} vs {n // 16} batches of 16", full, small,
            "images/s", full / small),
        Row("GPU fast path", f"sample: DDIM-50, batch {n}, bf16 autocast vs fp32", bf16, full, "images/s", bf16 / full),
    ]


def run(args) -> list[Row]:
    rows, best = training_rows(args)
    rows += mfu_rows(args, best)
    rows += sampling_rows(args)
    return rows


def add_args(p) -> None:
    p.add_argument("--batch-size", type=int, default=None, help="training batch (default 128)")
    p.add_argument("--steps", type=int, default=None, help="timed training steps per run")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps first (torch.compile compiles here)")
    p.add_argument("--sample-batch-size", type=int, default=None, help="default 256")
    p.add_argument("--peak-tflops", type=float, default=None, help="the device's dense bf16 peak, TFLOP/s")
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile row")
    p.add_argument("--run-on-cpu", action="store_true",
                   help="run the GPU rows on the CPU anyway: tests the script, the numbers say nothing about GPUs")


def defaults(args) -> None:
    finish_args(args, batch_size=(128, 8), steps=(50, 2), warmup=(10, 2), sample_batch_size=(256, 32))


def main(argv=None) -> list[Row]:
    return script_main(__doc__, "GPU fast paths, MFU and the throughput goal", run, argv, add_args, defaults)


if __name__ == "__main__":
    main()
