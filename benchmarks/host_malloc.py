"""CPU training and sampling with glibc's default malloc policy against `host_malloc=retain`
(the default of train.py and of the sample / evaluate commands).

    python benchmarks/host_malloc.py                   # unet_small, digits, batch 128, CPU
    python benchmarks/host_malloc.py --threads 1       # steadier on a shared machine
    python benchmarks/host_malloc.py --smoke

The policy is process-wide and must be set before the large allocations, so each run is a fresh
process (`--child`): the train.py path (composed config, Lightning Trainer, EMA off, no
validation, logger or progress bar) for `--warmup` + `--steps` steps; it reports images/s by
the wall clock and by CPU time, minor page faults per step (memory the kernel had to map and
zero-fill again) and peak RSS; and DDIM sampling (`--sample-steps` steps, batch
`--sample-batch-size`) with the same network. The parent alternates the two policies
`--repeats` times (retain, system, system, retain, ...) and reports the medians and the ratios.
See ddpm_lightning/host_malloc.py for the mechanism.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

from benchlib import (
    Measured,
    Row,
    alternate,
    finish_args,
    mark,
    median,
    minor_faults,
    peak_rss_mib,
    script_main,
    spread,
)
from sampling_speed import build_model, sampler_spec
from train_overhead import lightning_run


def child(args) -> dict:
    """One run of the train.py path under this process's policy (set by finish_args)."""
    timer = lightning_run(args, ema=False)
    ips = timer.images_per_s(args.batch_size)
    train = {"wall": float(ips), "cpu": ips.cpu, "faults_per_step": timer.faults_per_step(), "peak_rss_mib": peak_rss_mib()}
    model = build_model(args)
    model.sample(args.sample_batch_size, sampler=sampler_spec("ddim", 2), seed=0)  # warm-up
    start, f0 = mark(args.device), minor_faults()
    model.sample(args.sample_batch_size, sampler=sampler_spec("ddim", args.sample_steps), seed=0)
    sps = Measured.rate(args.sample_batch_size * args.sample_steps, start, mark(args.device))  # image-steps/s
    sample = {"wall": float(sps), "cpu": sps.cpu, "faults_per_step": (minor_faults() - f0) / args.sample_steps}
    return {"train": train, "sample": sample}


def run_child(args, policy: str) -> dict:
    cmd = [sys.executable, __file__, "--child", "--host-malloc", policy, "--device", args.device,
           "--network", args.network, "--data", args.data, "--precision", args.precision,
           "--batch-size", str(args.batch_size), "--steps", str(args.steps), "--warmup", str(args.warmup),
           "--sample-batch-size", str(args.sample_batch_size), "--sample-steps", str(args.sample_steps)]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    if args.smoke:
        cmd.append("--smoke")
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def run(args) -> list[Row] | None:
    if args.child:  # one run under this process's policy: its result as JSON for the parent
        print(json.dumps(child(args)))
        return None
    res = alternate({p: lambda p=p: run_child(args, p) for p in ("retain", "system")}, args.repeats)
    rows = []
    for what, unit, case in (
        ("train", "images/s", f"train.py path: {args.network}, batch {args.batch_size}, {args.precision}, {args.device}"),
        ("sample", "image-steps/s", f"DDIM sampling: {args.network}, batch {args.sample_batch_size}, "
                                    f"{args.sample_steps} steps, {args.device}"),
    ):
        ours = [Measured(r[what]["wall"], r[what]["cpu"]) for r in res["retain"]]
        theirs = [Measured(r[what]["wall"], r[what]["cpu"]) for r in res["system"]]
        faults = {p: median([r[what]["faults_per_step"] for r in rs]) for p, rs in res.items()}
        note = f"minor page faults per step {faults['retain']:.0f} vs {faults['system']:.0f}; "
        if what == "train":
            rss = {p: median([r["train"]["peak_rss_mib"] or 0.0 for r in rs]) for p, rs in res.items()}
            note += (f"peak RSS {rss['retain']:.0f} vs {rss['system']:.0f} MiB; {args.steps} steps after "
                     f"{args.warmup} warm-up; ")
        rows.append(Row("host malloc", f"host_malloc=retain vs system (glibc default), {case}", median(ours),
                        median(theirs), unit, median(ours) / median(theirs), "",
                        note=note + "a fresh process per run; " + spread(ours, theirs)))
    return rows


def add_args(p) -> None:
    p.add_argument("--batch-size", type=int, default=None, help="default 128; smoke 8")
    p.add_argument("--steps", type=int, default=None, help="timed steps per run")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps first (>= 1)")
    p.add_argument("--sample-batch-size", type=int, default=None, help="default 256; smoke 4")
    p.add_argument("--sample-steps", type=int, default=None, help="DDIM steps timed (default 20)")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)


def defaults(args) -> None:
    finish_args(args, batch_size=(128, 8), steps=(15, 2), warmup=(5, 1), sample_batch_size=(256, 4), sample_steps=(20, 2))


def main(argv=None) -> list[Row]:
    return script_main(__doc__, "CPU training and sampling: glibc malloc policy", run, argv, add_args, defaults)


if __name__ == "__main__":
    main()
