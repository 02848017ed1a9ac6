"""Sample quality against cost: the digits-feature FID of each sampler at 5, 10, 20 and 50
network evaluations (NFE), against DDPM's 1000 ancestral steps on the same model.

    python benchmarks/sampler_quality.py                               # trains a digits model first
    python benchmarks/sampler_quality.py --ckpt outputs/.../last.ckpt  # or samples a trained one
    python benchmarks/sampler_quality.py --smoke                       # CI: seconds, numbers meaningless

Protocol (reported with the table): n samples per sampler from the same fixed noise
(`ddpm_lightning.noise.fixed_noise`, seed 0) and per-sample step generators; the reference is
the first n_ref digits of the training split; features from the bundled digits classifier
(`make_feature_extractor("digits")`, as `evaluate.py feature=digits`); Frechet distance of the
two Gaussians (eigh). The model's own weights are used (no EMA: a short run's EMA is still near
its initialisation). x0_hat is clamped to [-1, 1] (the presets' `clip_denoised: null` for
images). A sampler's NFE is the number of network calls `SampleOutput.nfe` counts: Heun's n
steps cost 2n - 1, so it runs at the odd budget just below each target.

Goal (issue 11): a sampler at <= 20 NFE within 10% of DDPM-1000's FID (ratio <= 1.10).
"""

from __future__ import annotations

import math
import tempfile
import textwrap
import time
from pathlib import Path

import torch
from benchlib import Row, build_run, compose, finish_args, script_main, train_overrides

from ddpm_lightning.metrics.factory import make_feature_extractor
from ddpm_lightning.metrics.feature_stats import FeatureStats
from ddpm_lightning.noise import fixed_noise, sample_generators

ROOT = Path(__file__).resolve().parents[1]
GOAL = "<= 1.10"
# (label, sampler spec); steps are set per NFE budget
SAMPLERS = [
    ("ddim", {"name": "ddim"}),
    ("dpmpp_2m", {"name": "dpmpp_2m"}),
    ("dpmpp_2m karras", {"name": "dpmpp_2m", "sigmas": "karras"}),
    ("euler karras", {"name": "euler"}),
    ("heun karras", {"name": "heun"}),
    ("euler_ancestral karras", {"name": "euler_ancestral"}),
    ("dpmpp_2m_sde karras", {"name": "dpmpp_2m_sde"}),
]


def add_args(p) -> None:
    p.add_argument("--ckpt", type=Path, default=None, help="a trained digits checkpoint (default: train one)")
    p.add_argument("--train-steps", type=int, default=None, help="training steps when no --ckpt (default 2000)")
    p.add_argument("--tiny", action="store_true", help="train the tests' small UNet (faster, worse samples)")
    p.add_argument("--save-ckpt", type=Path, default=None, help="save the model trained here (reuse it with --ckpt)")
    p.add_argument("--n", type=int, default=None, help="samples per sampler (default 1000)")
    p.add_argument("--n-ref", type=int, default=None, help="reference digits (default: n, at most the train split)")
    p.add_argument("--batch-size", type=int, default=None, help="sampling batch (default 500)")
    p.add_argument("--nfe", default=None, help="comma-separated NFE budgets (default 5,10,20,50)")
    p.add_argument("--ddpm-steps", type=int, default=None, help="the reference DDPM's steps (default 1000)")
    p.add_argument("--plot", type=Path, default=None, help="FID-vs-NFE plot (PNG); default docs/sampler_quality.png")


def defaults(args):
    finish_args(args, train_steps=(2000, 4), n=(1000, 24), batch_size=(500, 12), nfe=("5,10,20,50", "5,10"),
                ddpm_steps=(1000, 20))
    args.nfe = [int(v) for v in str(args.nfe).split(",")]
    if args.plot is None and not args.smoke:
        args.plot = ROOT / "docs" / "sampler_quality.png"
    if args.ckpt is not None and not args.ckpt.is_file():
        raise SystemExit(f"error: checkpoint {str(args.ckpt)!r} does not exist")
    return args


def get_model(args):
    """The checkpoint's module, or one trained here with `python train.py`'s configs."""
    if args.ckpt is not None:
        from ddpm_lightning.sample import load_module

        return load_module(args.ckpt, args.device), f"checkpoint {args.ckpt}"
    with tempfile.TemporaryDirectory() as out:
        cfg = compose(train_overrides(args, batch_size=64, max_steps=args.train_steps), Path(out))
        datamodule, model, trainer = build_run(cfg)
        start = time.perf_counter()
        trainer.fit(model, datamodule=datamodule)
        wall = time.perf_counter() - start
        if args.save_ckpt is not None:
            args.save_ckpt.parent.mkdir(parents=True, exist_ok=True)
            trainer.save_checkpoint(args.save_ckpt)
    net = "tiny UNet" if (args.tiny or args.smoke) else args.network
    return model.to(args.device).eval(), f"trained here: {args.train_steps} steps, batch 64, {net}, no EMA ({wall / 60:.1f} min)"


def steps_for(name: str, nfe: int) -> int:
    """Steps that spend at most `nfe` network calls (Heun: 2n - 1)."""
    return max(1, (nfe + 1) // 2) if name == "heun" else nfe


def features(extractor, images: torch.Tensor, batch: int) -> FeatureStats:
    with torch.inference_mode():
        f = torch.cat([extractor(b).double().cpu() for b in images.split(batch)])
    return FeatureStats.from_features(f)


def draw(model, spec: dict, steps: int, n: int, batch: int) -> tuple[torch.Tensor, int, float]:
    """n samples from fixed noise; (samples, NFE per sample, seconds)."""
    out, nfe, start = [], 0, time.perf_counter()
    for lo in range(0, n, batch):
        idx = list(range(lo, min(n, lo + batch)))
        res = model.sample(noise=fixed_noise(idx, model.data_shape, 0), sampler=dict(spec), num_steps=steps,
                           generator=sample_generators(idx, 0))
        out.append(res.samples.cpu())
        nfe = res.nfe
    return torch.cat(out), nfe, time.perf_counter() - start


def plot(results: dict[str, list[tuple[int, float]]], ddpm: tuple[int, float], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label, pts in results.items():
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=label)
    ax.axhline(ddpm[1], color="k", ls="--", lw=1, label=f"DDPM, {ddpm[0]} NFE")
    ax.axhline(ddpm[1] * 1.1, color="k", ls=":", lw=1, label="DDPM + 10% (goal)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("network evaluations per sample (NFE)")
    ax.set_ylabel("digits-feature FID (lower is better)")
    ax.set_title("\n".join(textwrap.wrap(title, 90)), fontsize=8)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run(args) -> list[Row]:
    model, source = get_model(args)
    from ddpm_lightning.data import DigitsDataModule

    dm = DigitsDataModule(image_size=model.data_shape[-1])
    dm.setup("fit")
    n_ref = min(args.n_ref or args.n, len(dm.split_indices("train")))
    extractor = make_feature_extractor("digits").to(args.device).eval()
    real = features(extractor, dm.real_samples(n_ref, "train").to(args.device), args.batch_size)

    def fid(images: torch.Tensor) -> float:
        return real.frechet_distance(features(extractor, images.to(args.device), args.batch_size), method="eigh",
                                     small_sample="ignore")

    protocol = f"n={args.n} samples vs {n_ref} train digits, digits features, seed 0, {source}"
    ddpm_images, ddpm_nfe, secs = draw(model, {"name": "ddpm"}, args.ddpm_steps, args.n, args.batch_size)
    ddpm_fid = fid(ddpm_images)
    print(f"ddpm {ddpm_nfe} NFE: FID {ddpm_fid:.3f} ({secs:.0f} s)", flush=True)
    rows = [Row("sampler quality", f"ddpm @ {ddpm_nfe} NFE", ddpm_fid, ddpm_fid, "FID", 1.0, note=protocol)]
    results: dict[str, list[tuple[int, float]]] = {}
    best: tuple[float, str] | None = None
    for label, spec in SAMPLERS:
        for budget in args.nfe:
            images, nfe, secs = draw(model, spec, steps_for(spec["name"], budget), args.n, args.batch_size)
            value = fid(images)
            print(f"{label} {nfe} NFE: FID {value:.3f} ({secs:.0f} s)", flush=True)
            results.setdefault(label, []).append((nfe, value))
            ratio = value / ddpm_fid if ddpm_fid > 0 else math.inf
            rows.append(Row("sampler quality", f"{label} @ {nfe} NFE", value, ddpm_fid, "FID", ratio,
                            goal=GOAL if nfe <= 20 else "", note="reference: DDPM-1000 FID"))
            if nfe <= 20 and (best is None or ratio < best[0]):
                best = (ratio, f"{label} @ {nfe} NFE")
    if best is not None:
        rows.append(Row("goal", f"best sampler at <= 20 NFE: {best[1]}", best[0] * ddpm_fid, ddpm_fid, "FID",
                        best[0], goal=GOAL, note="issue 11: within 10% of DDPM-1000"))
    if args.plot is not None:
        plot(results, (ddpm_nfe, ddpm_fid), args.plot, protocol)
        print(f"plot: {args.plot}", flush=True)
    return rows


def main(argv=None) -> list[Row]:
    return script_main(__doc__.splitlines()[0], "Sampler quality against NFE (digits FID)", run, argv, add_args, defaults)


if __name__ == "__main__":
    main()
