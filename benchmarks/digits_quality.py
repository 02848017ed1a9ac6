"""Sample quality of a digits model against the data, in the project's own digits feature space
and classifier (`ddpm_lightning.metrics.digits`): the measure of issue #16's goal.

For n samples (DDIM, 50 steps, EMA weights, the fixed noise of `noise.fixed_samples`):

* `confident`: the share the shipped digit classifier labels with p >= 0.9, against the same
  share on n real training digits (`real_confident`); the goal is within 5 % of it;
* `fid`: the digits-feature Fréchet distance of the samples to n real training digits, and the
  `floor`: the same distance between two disjoint sets of n real digits (real vs real at the
  same sizes: what a perfect model would score); the goal is fid / floor <= 1.3;
* `class_shares` / `class_entropy`: the classifier's labels of the samples, and their entropy
  over log 10 (1: all ten classes equally often).

A sibling module of the benchmark scripts (`default_run.py`, `default_study.py`), and a command
that scores one checkpoint with any sampler (is the sampler what limits a model's score?):

    python benchmarks/digits_quality.py --ckpt outputs/train/<run>/checkpoints/last.ckpt --sampler ddpm --num-steps 100
"""

from __future__ import annotations

import math
from typing import Any

import torch

CONFIDENT_P = 0.9


def _classify(cnn, x: torch.Tensor) -> torch.Tensor:
    from ddpm_lightning.metrics.digits import resize_digits

    with torch.no_grad():
        return torch.cat([cnn(resize_digits(x[i : i + 500])).softmax(-1) for i in range(0, len(x), 500)])


def _fid(features, a: torch.Tensor, b: torch.Tensor) -> float:
    from ddpm_lightning.metrics import FeatureStats

    with torch.no_grad():
        sa, sb = (FeatureStats.from_features(torch.cat([features(x[i : i + 500]) for i in range(0, len(x), 500)])) for x in (a, b))
    return float(sa.frechet_distance(sb, method="eigh", small_sample="ignore"))


def digits_quality(module, n: int = 500, seed: int = 0, sampler: Any = None, num_steps: int = 50,
                   batch_size: int = 250) -> dict[str, Any]:
    """The quality figures of `module` (a digits DiffusionModule) from n samples."""
    from ddpm_lightning.data import DigitsDataModule
    from ddpm_lightning.metrics import make_feature_extractor
    from ddpm_lightning.metrics.digits import load_digit_cnn
    from ddpm_lightning.noise import fixed_samples

    size = module.data_shape[-1]
    dm = DigitsDataModule(image_size=size)
    real = dm.real_samples(2 * n, "train")  # [0, n): the reference; [n, 2n): the floor's second set
    reference, second = real[:n], real[n:]
    spec = sampler if sampler is not None else {"name": "ddim", "num_steps": num_steps, "eta": 0.0}
    module = module.eval()
    samples = torch.cat([fixed_samples(module, range(s, min(n, s + batch_size)), seed, sampler=spec).samples.cpu()
                         for s in range(0, n, batch_size)])
    cnn = load_digit_cnn()
    p_fake, p_real = _classify(cnn, samples), _classify(cnn, second)
    features = make_feature_extractor("digits")
    fid, floor = _fid(features, samples, reference), _fid(features, second, reference)
    shares = torch.bincount(p_fake.argmax(-1), minlength=10).double() / n
    entropy = float(-(shares[shares > 0] * shares[shares > 0].log()).sum() / math.log(10))
    return {
        "n": n,
        "confident": float((p_fake.max(-1).values >= CONFIDENT_P).double().mean()),
        "real_confident": float((p_real.max(-1).values >= CONFIDENT_P).double().mean()),
        "fid": fid,
        "floor": floor,
        "fid_ratio": fid / floor,
        "class_shares": [round(float(s), 4) for s in shares],
        "class_entropy": entropy,
    }


def quality_note(q: dict[str, Any]) -> str:
    return (f"confident {q['confident']:.1%} vs real {q['real_confident']:.1%}; FID {q['fid']:.2f} / floor {q['floor']:.2f}"
            f" = {q['fid_ratio']:.2f}x; class entropy {q['class_entropy']:.3f} (shares {min(q['class_shares']):.1%}"
            f"-{max(q['class_shares']):.1%})")


def main(argv=None) -> dict[str, Any]:
    import argparse
    import json

    p = argparse.ArgumentParser(description="Quality figures of one digits checkpoint (EMA weights).")
    p.add_argument("--ckpt", required=True, help="a train.py checkpoint of a digits model")
    p.add_argument("--sampler", default="ddim", help="a sampler of ddpm_lightning.samplers (default ddim, as the goal is scored)")
    p.add_argument("--num-steps", type=int, default=50)
    p.add_argument("--samples", type=int, default=500)
    args = p.parse_args(argv)
    for name in ("num_steps", "samples"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} {getattr(args, name)}: must be an integer >= 1")
    from ddpm_lightning.checkpoint_file import load_module
    from ddpm_lightning.samplers import SAMPLERS

    if args.sampler not in SAMPLERS or args.sampler == "diffusers":
        raise SystemExit(f"error: --sampler {args.sampler!r}; choose from {[n for n in SAMPLERS if n != 'diffusers']}")
    spec = {"name": args.sampler, "num_steps": args.num_steps, **({"eta": 0.0} if args.sampler == "ddim" else {})}
    q = digits_quality(load_module(args.ckpt, "cpu"), n=args.samples, sampler=spec)
    print(json.dumps({"ckpt": str(args.ckpt), "sampler": spec, **q}))
    print(quality_note(q))
    return q


if __name__ == "__main__":
    main()
