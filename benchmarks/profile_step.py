"""Where the time of a training step and of a sampling step goes, beyond the network itself.

    python benchmarks/profile_step.py --tiny              # tiny UNet, batch 8: framework overhead is visible
    python benchmarks/profile_step.py --batch-size 128 --top 30      # unet_small
    python benchmarks/profile_step.py --what sample

`train`: cProfile of `trainer.fit` (the train.py path, EMA on or off) and of the bare loop of
train_overhead.py over the same steps, the difference per step, and the functions that
account for it (Python time outside the network's own modules). `sample`: cProfile of our DDIM
and DDPM loops and of diffusers' pipelines, same network and steps.
"""

from __future__ import annotations

import cProfile
import io
import pstats
import time

import torch
from benchlib import base_parser, finish_args, quiet
from sampling_speed import build_model, diffusers_pipeline, sampler_spec
from train_overhead import bare_images_per_s, lightning_images_per_s


def profiled(fn, top: int, sort: str):
    prof = cProfile.Profile()
    t0 = time.perf_counter()
    prof.enable()
    result = fn()
    prof.disable()
    elapsed = time.perf_counter() - t0
    out = io.StringIO()
    stats = pstats.Stats(prof, stream=out).strip_dirs().sort_stats(sort)
    stats.print_stats(top)
    return result, elapsed, out.getvalue()


def profile_train(args) -> None:
    for name, fn in (("train.py path (Lightning)", lightning_images_per_s), ("bare loop", bare_images_per_s)):
        ips, elapsed, text = profiled(lambda fn=fn: fn(args, ema=args.ema), args.top, args.sort)
        ms = 1e3 * args.batch_size / ips
        print(f"\n==== {name}: {ips:.1f} images/s, {ms:.2f} ms/step (EMA {'on' if args.ema else 'off'}); "
              f"whole call incl. build {elapsed:.1f} s\n{text}")


def profile_sample(args) -> None:
    model = build_model(args)
    for name in ("ddim", "ddpm"):
        steps = args.sample_steps
        spec = sampler_spec(name, steps)
        pipe = diffusers_pipeline(name, model.network.unet, args.device)
        kwargs = {"eta": 0.0} if name == "ddim" else {}
        runs = {
            f"ours {name}": lambda spec=spec: model.sample(args.batch_size, sampler=spec, seed=0),
            f"diffusers {type(pipe).__name__}": lambda pipe=pipe, kwargs=kwargs: pipe(
                batch_size=args.batch_size, num_inference_steps=steps, output_type="np",
                generator=torch.Generator().manual_seed(0), **kwargs),
        }
        for label, fn in runs.items():
            fn()  # warm-up
            _, elapsed, text = profiled(fn, args.top, args.sort)
            print(f"\n==== {label}, {steps} steps, batch {args.batch_size}: {1e3 * elapsed / steps:.2f} ms/step\n{text}")


def main(argv=None) -> None:
    p = base_parser(__doc__)
    p.add_argument("--what", default="train", choices=["train", "sample"])
    p.add_argument("--batch-size", type=int, default=None, help="default 8")
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--warmup", type=int, default=None)
    p.add_argument("--sample-steps", type=int, default=None)
    p.add_argument("--ema", action="store_true", help="EMA on both sides")
    p.add_argument("--tiny", action="store_true", help="the --smoke network (framework overhead dominates)")
    p.add_argument("--top", type=int, default=25)
    p.add_argument("--sort", default="tottime", choices=["tottime", "cumulative"])
    args = p.parse_args(argv)
    finish_args(args, batch_size=(8, 2), steps=(200, 2), warmup=(5, 1), sample_steps=(100, 3))
    quiet()
    (profile_train if args.what == "train" else profile_sample)(args)


if __name__ == "__main__":
    main()
