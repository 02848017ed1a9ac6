"""Learned vs fixed variance on digits at equal training steps (Nichol & Dhariwal 2021, sec. 3).

    python benchmarks/learned_variance.py                 # 2 x the default run (~20 min on 2 cores)
    python benchmarks/learned_variance.py --steps 1000    # shorter
    python benchmarks/learned_variance.py --smoke         # CI: tiny sizes, numbers meaningless

Trains the default digits run twice with `python train.py`: fixed variance (L_simple) and
`variance=learned_range` (hybrid loss), same seed, same steps. Then, with each run's EMA weights
(`last.ckpt`):

* bits/dim on the 180 held-out digits (`bits_per_dim`, K = 100 stratified terms: an estimate
  with its standard error; the fixed model with its better fixed variance of the two);
* the digits-feature FID of 1,000 samples from respaced DDPM with 25, 50 and 100 steps
  against 1,000 real training digits, the same starting noise for both models.

improved-diffusion's claims to check: learned range + hybrid improves bits/dim, and keeps sample
quality with few respaced DDPM steps where fixed variance degrades.
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
SMOKE = ["data.batch_size=8", "trainer.limit_val_batches=1", "callbacks.sample_grid.num_samples=4", "sampler.num_steps=2",
         "callbacks.sample_grid.trajectory_samples=0", "callbacks.sample_grid.forward_samples=0",
         "network.block_out_channels=[16,16,32]", "network.attention_head_dim=8", "network.norm_num_groups=8"]


def train(out: Path, steps: int, extra: list[str], smoke: bool) -> Path:
    overrides = ["logger=none", f"hydra.run.dir={out}", f"trainer.max_steps={steps}",
                 f"trainer.val_check_interval={max(1, steps // 4)}", *(SMOKE if smoke else []), *extra]
    env = {**os.environ, "WANDB_MODE": "offline"}
    subprocess.run([sys.executable, str(ROOT / "train.py"), *overrides], cwd=out.parent, env=env, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    return out / "checkpoints" / "last.ckpt"


def digits_fid(module, real: torch.Tensor, n: int, steps: int, seed: int = 0) -> float:
    from ddpm_lightning.metrics import FeatureStats, make_feature_extractor
    from ddpm_lightning.noise import fixed_noise, sample_generators

    features = make_feature_extractor("digits")
    fake = []
    for start in range(0, n, 250):
        idx = range(start, min(n, start + 250))
        noise = fixed_noise(idx, module.data_shape, seed)
        out = module.sample(noise=noise, sampler={"name": "ddpm", "spacing": "linspace"}, num_steps=steps,
                            generator=sample_generators(idx, seed))
        fake.append(features(out.samples))
    with torch.no_grad():
        real_stats = FeatureStats.from_features(features(real))
    return real_stats.frechet_distance(FeatureStats.from_features(torch.cat(fake)), method="eigh", small_sample="ignore")


def run(args) -> list[Row]:
    from ddpm_lightning import DiffusionModule
    from ddpm_lightning.data import DigitsDataModule
    from ddpm_lightning.likelihood import bits_per_dim

    n = 16 if args.smoke else args.samples
    dm = DigitsDataModule(image_size=16)
    real = dm.real_samples(n, "train")
    val = dm.real_samples(8 if args.smoke else 180, "val")
    rows = []
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, extra in (("fixed", []), ("learned_range", ["variance=learned_range"])):
            ckpt = train(Path(tmp) / name, args.steps, extra, args.smoke)
            module = DiffusionModule.load_from_checkpoint(ckpt, map_location="cpu", weights_only=False).eval()
            terms = 4 if args.smoke else 100
            bpd = {v: bits_per_dim(module, val, num_timesteps=terms, variance=v, progress=False)
                   for v in (("fixed_small", "fixed_large") if name == "fixed" else ("fixed_small",))}
            best = min(bpd.values(), key=lambda r: r["bpd"])
            fid = {s: digits_fid(module, real, n, s) for s in ((5, 10) if args.smoke else (25, 50, 100))}
            results[name] = (best, fid)
    (fixed_bpd, fixed_fid), (learned_bpd, learned_fid) = results["fixed"], results["learned_range"]
    protocol = f"{args.steps} steps x batch 64 each, same seed; EMA weights"
    rows.append(Row("learned variance", f"bits/dim, 180 val digits, K=100 terms ({protocol})", learned_bpd["bpd"],
                    fixed_bpd["bpd"], "bits/dim", learned_bpd["bpd"] / fixed_bpd["bpd"], "< 1.00",
                    note=f"learned_range + hybrid vs fixed ({fixed_bpd['variance']}, the better fixed one); stderr "
                         f"{learned_bpd['bpd_stderr']:.3f} / {fixed_bpd['bpd_stderr']:.3f}"))
    for steps in fixed_fid:
        rows.append(Row("learned variance", f"digits-feature FID, DDPM {steps} steps (respaced), {n} samples vs {n} real",
                        learned_fid[steps], fixed_fid[steps], "FID", learned_fid[steps] / fixed_fid[steps],
                        "<= 1.00" if steps == min(fixed_fid) else "",
                        note="learned_range + hybrid vs fixed_small; the same starting noise"))
    return rows


def add_args(p) -> None:
    p.add_argument("--steps", type=int, default=None, help="training steps of each run (default 2000, smoke 4)")
    p.add_argument("--samples", type=int, default=1000, help="samples (and real digits) per FID")


def defaults(args):
    from benchlib import finish_args

    finish_args(args)
    if args.steps is None:
        args.steps = 4 if args.smoke else 2000
    return args


def main(argv=None) -> list[Row]:
    return script_main(__doc__, "Learned variance", run, argv, add_args=add_args, defaults=defaults)


if __name__ == "__main__":
    main()
