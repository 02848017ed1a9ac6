"""Class-conditional digits with classifier-free guidance: accuracy by the shipped digit
classifier at w = 1, 2, 3, 5 (issue #12's goal: >= 0.9 at w = 3), and the class grids.

    python benchmarks/class_conditional.py                    # trains experiment=digits_cond (~10 min on 2 cores)
    python benchmarks/class_conditional.py --ckpt RUN/checkpoints/last.ckpt   # score a trained run
    python benchmarks/class_conditional.py --smoke            # CI: 4 steps of a tiny UNet

For each w, n class-balanced samples (sample i asks for class i mod 10, `noise.fixed_samples`;
DDIM 50 steps, EMA weights) are labelled by `ddpm_lightning.metrics.digits`'s classifier (99.3 %
on held-out real digits); accuracy = the share labelled as the class asked for. `--grids DIR`
writes one row per class at w = 1 and 3 (docs/digits_cond_w1.png, docs/digits_cond_w3.png).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from benchlib import Row, script_main

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ["trainer.max_steps=4", "trainer.val_check_interval=2", "data.batch_size=8", "trainer.limit_val_batches=1",
         "callbacks.sample_grid.num_samples=10", "sampler.num_steps=2", "callbacks.sample_grid.trajectory_samples=0",
         "callbacks.sample_grid.forward_samples=0", "network.block_out_channels=[16,16,32]",
         "network.attention_head_dim=8", "network.norm_num_groups=8", "callbacks.class_accuracy.num_samples=20",
         "callbacks.class_accuracy.sampler.num_steps=2"]
SCALES = (1.0, 2.0, 3.0, 5.0)


def class_accuracy(module, n: int, scale: float, num_steps: int = 50, seed: int = 0, batch_size: int = 250) -> tuple[float, torch.Tensor]:
    """(accuracy, samples): the share of n class-balanced guided samples the classifier labels as
    asked, DDIM `num_steps` (the scoring is the package's, shared with val/class_accuracy)."""
    from ddpm_lightning.metrics.class_accuracy import class_accuracy as score

    spec = {"name": "ddim", "num_steps": num_steps, "eta": 0.0}
    return score(module, n, scale, seed=seed, batch_size=batch_size, sampler=spec)


def run(args) -> list[Row]:
    from ddpm_lightning import visualize
    from ddpm_lightning.checkpoint_file import load_module

    with tempfile.TemporaryDirectory() as tmp:
        ckpt = args.ckpt
        if ckpt is None:
            out = Path(tmp) / "run"
            overrides = ["experiment=digits_cond", "logger=none", f"hydra.run.dir={out}", *(SMOKE if args.smoke else [])]
            subprocess.run([sys.executable, str(ROOT / "train.py"), *overrides], cwd=tmp, check=True,
                           env={**os.environ, "WANDB_MODE": "offline"}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            ckpt = out / "checkpoints" / "last.ckpt"
        module = load_module(ckpt, "cpu")
        n = 20 if args.smoke else args.samples
        rows = []
        for w in SCALES:
            acc, samples = class_accuracy(module, n, w, num_steps=2 if args.smoke else 50)
            if args.grids and w in (1.0, 3.0):
                k = module.conditioning.num_classes
                per = 8 if not args.smoke else 2
                grid = visualize.class_grid(samples[: k * per], k)  # sample i is class i % k: one row per class
                Path(args.grids).mkdir(parents=True, exist_ok=True)
                visualize.save_png(grid, Path(args.grids) / f"digits_cond_w{w:g}.png")
            rows.append(Row("class-conditional", f"digit-classifier accuracy, {n} class-balanced DDIM-50 samples, w = {w:g}",
                            acc, 0.9, "share", acc / 0.9, ">= 1.00" if w == 3.0 else "",
                            note=f"experiment=digits_cond, EMA weights; {Path(ckpt).name if args.ckpt else 'trained here'}"))
    return rows


def add_args(p) -> None:
    p.add_argument("--ckpt", default=None, help="score this checkpoint instead of training experiment=digits_cond")
    p.add_argument("--samples", type=int, default=500, help="samples per guidance scale")
    p.add_argument("--grids", default=None, help="write the class grids at w = 1 and 3 into this folder")


def main(argv=None) -> list[Row]:
    return script_main(__doc__, "Class-conditional digits", run, argv, add_args=add_args)


if __name__ == "__main__":
    main()
