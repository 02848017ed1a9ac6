"""Wall time of the default run, `python train.py`, as the README's quickstart runs it.

    python benchmarks/default_run.py                 # the real thing: ~9 min on 2 CPU cores
    python benchmarks/default_run.py --smoke         # CI: 4 steps of a tiny UNet
    python benchmarks/default_run.py --keep runs/default   # keep the run's folder (grids, checkpoints)

Runs `python train.py logger=none` in a fresh process (W&B is the one thing left out: its
offline writer is not part of training) and reports the wall time against the 10-minute budget
the README promises, the time from start to the last sample grid, and the child's peak RSS.
Then it scores 500 DDIM-50 samples of `last.ckpt` (EMA weights) as `digits_quality.py` does:
digits-feature FID / the real-vs-real floor (goal <= 1.3), classifier confidence against real
digits, class entropy (issue #16). The machine should be otherwise idle.
"""

from __future__ import annotations

import contextlib
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchlib import Row, script_main
from digits_quality import digits_quality, quality_note

ROOT = Path(__file__).resolve().parents[1]
BUDGET_S = 600.0  # "under 10 minutes on the CPU" (README, Quickstart)
SMOKE = ["trainer.max_steps=4", "trainer.val_check_interval=2", "data.batch_size=8", "trainer.limit_val_batches=1",
         "callbacks.sample_grid.every_n_steps=2", "callbacks.sample_grid.num_samples=4", "sampler.num_steps=2",
         "callbacks.sample_grid.trajectory_samples=0", "callbacks.sample_grid.forward_samples=0",
         "network.block_out_channels=[16,16,32]", "network.attention_head_dim=8", "network.norm_num_groups=8"]


def run(args) -> list[Row]:
    if args.keep is not None:
        if args.keep.exists() and (not args.keep.is_dir() or any(args.keep.iterdir())):
            raise SystemExit(f"error: --keep {args.keep} is a file or holds files; name a new or empty folder")
        args.keep = args.keep.resolve()
        args.keep.mkdir(parents=True, exist_ok=True)
    with (contextlib.nullcontext(str(args.keep)) if args.keep is not None else tempfile.TemporaryDirectory()) as out:
        accelerator = "gpu" if args.device == "cuda" else "cpu"
        overrides = ["logger=none", f"hydra.run.dir={out}", f"host_malloc={args.host_malloc}",
                     f"trainer.accelerator={accelerator}", *(SMOKE if args.smoke else [])]
        env = {**os.environ, "WANDB_MODE": "offline"}
        if args.threads:
            env["OMP_NUM_THREADS"] = str(args.threads)
        start_wall = time.time()
        start = time.perf_counter()
        subprocess.run([sys.executable, str(ROOT / "train.py"), *overrides], cwd=out, env=env, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        wall = time.perf_counter() - start
        grids = sorted(Path(out, "samples").glob("samples_step_*.png"))
        last = f"{grids[-1].stat().st_mtime - start_wall:.0f} s to the last grid ({grids[-1].stem})" if grids else "no grid"
        from ddpm_lightning.checkpoint_file import load_module

        module = load_module(Path(out, "checkpoints", "last.ckpt"), "cpu")
        q = digits_quality(module, n=16 if args.smoke else args.samples, num_steps=2 if args.smoke else 50)
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    what = "4 steps, tiny UNet (--smoke)" if args.smoke else "digits, unet_small, 2,000 steps x batch 64, EMA, validation and grids every 500"
    where = "one GPU" if args.device == "cuda" else f"{os.cpu_count()} CPU cores"
    return [Row("default run", f"`python train.py logger=none` ({what}), {where}", wall, BUDGET_S, "s",
                wall / BUDGET_S, "<= 1.00", note=f"{last}; peak RSS of the run {peak:.0f} MiB; ratio = wall / 10 min"),
            Row("default run", f"quality: {q['n']} DDIM-50 samples of last.ckpt (EMA), digits features", q["fid_ratio"], 1.3,
                "FID/floor", q["fid_ratio"] / 1.3, "<= 1.00", note=quality_note(q))]


def add_args(p) -> None:
    p.add_argument("--samples", type=int, default=500, help="samples scored for the quality row")
    p.add_argument("--keep", type=Path, default=None, help="run in this new (or empty) folder and keep it: the grids and checkpoints")


def main(argv=None) -> list[Row]:
    return script_main(__doc__, "The default run", run, argv, add_args=add_args)


if __name__ == "__main__":
    main()
