"""Sampling speed: our DDIM and DDPM against diffusers' `DDIMPipeline` and `DDPMPipeline` on the
same UNet2DModel weights, batch, steps and generator, and the samplers' own per-step cost.

    python benchmarks/sampling_speed.py                       # unet_small (16x16), CPU
    python benchmarks/sampling_speed.py --device cuda --network unet_ddpm_cifar10 --batch-size 256 --ddpm-batch-size 256
    python benchmarks/sampling_speed.py --smoke

Both sides are configured to compute the same thing, and the table shows that they do (the
largest difference of the final images in [0, 1]): linear betas 1e-4..0.02, T = 1000; DDIM
eta = 0 with `trailing` spacing (diffusers: `timestep_spacing="trailing"`,
`set_alpha_to_one=True`); DDPM `fixed_small` variance over all 1000 steps; no clipping of
x0_hat (`clip_sample=False`); one torch.Generator on the sampling device, seeded alike.
diffusers' pipelines also turn the result into a NumPy array (`output_type="np"`); ours stops
at the tensor; that conversion is a single pass over the batch.

Sampler cost per step: the whole loop (timesteps, parameterization, sampler step, noise) run
with a free network (`lambda x, t: x`), per step, divided by one UNet forward at that batch.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch
from benchlib import (
    Measured,
    Row,
    alternate,
    autocast,
    build_run,
    compose,
    finish_args,
    mark,
    median,
    ratio_of_medians,
    script_main,
    spread,
    time_calls,
    train_overrides,
)

from ddpm_lightning.sampling import sample

GOAL_TIME = "<= 1.00"
GOAL_OVERHEAD = "< 1%"


def build_model(args):
    """A DiffusionModule from the composed configs (random weights: speed does not depend on
    them, and both sides share the same ones)."""
    with tempfile.TemporaryDirectory() as out:
        cfg = compose(train_overrides(args, batch_size=8, max_steps=1), Path(out))
        _, model, _ = build_run(cfg)
    return model.to(args.device).eval()


def sampler_spec(name: str, steps: int) -> dict:
    if name == "ddim":
        return {"name": "ddim", "num_steps": steps, "eta": 0.0, "spacing": "trailing", "clip_denoised": False}
    return {"name": "ddpm", "num_steps": steps, "variance": "fixed_small", "spacing": "leading", "clip_denoised": False}


def diffusers_pipeline(name: str, unet, device: str):
    from diffusers import DDIMPipeline, DDIMScheduler, DDPMPipeline, DDPMScheduler

    common = dict(num_train_timesteps=1000, beta_schedule="linear", beta_start=1e-4, beta_end=0.02, clip_sample=False)
    if name == "ddim":
        pipe = DDIMPipeline(unet=unet, scheduler=DDIMScheduler(**common, timestep_spacing="trailing", set_alpha_to_one=True))
    else:
        pipe = DDPMPipeline(unet=unet, scheduler=DDPMScheduler(**common, variance_type="fixed_small"))
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def compare(args, model, name: str, steps: int, batch: int) -> list[Row]:
    device = args.device
    pipe = diffusers_pipeline(name, model.network.unet, device)
    spec = sampler_spec(name, steps)
    last = {}

    def ours() -> Measured:
        g = torch.Generator(device).manual_seed(0)
        start = mark(device)
        with autocast(torch.device(device).type, args.precision):
            x = model.sample(batch, sampler=spec, generator=g).samples
        x = (x / 2 + 0.5).clamp(0, 1)
        stop = mark(device)
        last["ours"] = x.permute(0, 2, 3, 1).float().cpu()
        return Measured.duration(start, stop)

    def theirs() -> Measured:
        g = torch.Generator(device).manual_seed(0)
        start = mark(device)
        with autocast(torch.device(device).type, args.precision):
            images = pipe(batch_size=batch, generator=g, num_inference_steps=steps, output_type="np", **(
                {"eta": 0.0} if name == "ddim" else {})).images
        stop = mark(device)
        last["diffusers"] = torch.from_numpy(images)
        return Measured.duration(start, stop)

    res = alternate({"ours": ours, "diffusers": theirs}, args.repeats)
    diff = float((last["ours"] - last["diffusers"]).abs().max())
    label = "DDIM" if name == "ddim" else "DDPM"
    rows = [
        Row(
            "sampling",
            f"{label} {steps} steps, batch {batch}, {args.network}, {args.device}: ours vs diffusers {type(pipe).__name__}",
            median(res["ours"]),
            median(res["diffusers"]),
            "s",
            ratio_of_medians(res["ours"], res["diffusers"]),
            GOAL_TIME,
            note=f"time ratio; same samples: max |diff| {diff:.1e}; " + spread(res["ours"], res["diffusers"]),
        )
    ]
    rows += sampler_overhead(args, model, pipe, name, steps, batch)
    return rows


def sampler_overhead(args, model, pipe, name: str, steps: int, batch: int) -> list[Row]:
    """Per-step cost of the loop itself (with a free network) over one UNet forward."""
    device = args.device
    shape = (batch, *model.data_shape)
    x = torch.randn(shape, device=device)
    t = torch.full((batch,), 500, device=device, dtype=torch.long)
    with torch.inference_mode():
        forward = time_calls(lambda: model(x, t), max(3, args.repeats), device)

    def free(x_t, t_batch):
        return x_t

    sampler, _ = model.make_sampler(sampler_spec(name, steps))
    n_loops = max(3, args.repeats)
    ours_step = time_calls(
        lambda: sample(free, model.process, model.parameterization, sampler, shape, num_steps=steps,
                       generator=torch.Generator(device).manual_seed(0), device=device),
        n_loops, device,
    )
    ours_step = Measured(ours_step / steps, ours_step.cpu / steps)

    sched = pipe.scheduler

    @torch.no_grad()
    def diffusers_loop():
        g = torch.Generator(device).manual_seed(0)
        sched.set_timesteps(steps)
        xt = torch.randn(shape, generator=g, device=device)
        for ts in sched.timesteps:
            kwargs = {"eta": 0.0} if name == "ddim" else {}
            xt = sched.step(free(xt, ts), ts, xt, generator=g, **kwargs).prev_sample
        return xt

    theirs_step = time_calls(diffusers_loop, n_loops, device)
    theirs_step = Measured(theirs_step / steps, theirs_step.cpu / steps)
    label = "DDIM" if name == "ddim" else "DDPM"
    ms = 1e3
    return [
        Row(
            "sampler cost",
            f"ours {label}: loop per step / UNet forward, batch {batch}, {args.device}",
            ours_step * ms,
            forward * ms,
            "ms",
            ours_step / forward,
            GOAL_OVERHEAD,
            note=f"by process CPU time {100 * ours_step.cpu / forward.cpu:.2f}%; diffusers' {type(sched).__name__} "
                 f"loop: {theirs_step * ms:.3f} ms/step ({100 * theirs_step / forward:.2f}%)",
        )
    ]


def run(args) -> list[Row]:
    model = build_model(args)
    rows = compare(args, model, "ddim", args.ddim_steps, args.batch_size)
    rows += compare(args, model, "ddpm", args.ddpm_steps, args.ddpm_batch_size)
    return rows


def add_args(p) -> None:
    p.add_argument("--batch-size", type=int, default=None, help="DDIM batch")
    p.add_argument("--ddpm-batch-size", type=int, default=None, help="DDPM batch (1000 steps: smaller on a CPU)")
    p.add_argument("--ddim-steps", type=int, default=None)
    p.add_argument("--ddpm-steps", type=int, default=None)


def defaults(args) -> None:
    finish_args(args, batch_size=(64, 2), ddpm_batch_size=(16, 2), ddim_steps=(50, 3), ddpm_steps=(1000, 4))


def main(argv=None) -> list[Row]:
    return script_main(__doc__, "Sampling: ours vs diffusers pipelines", run, argv, add_args, defaults)


if __name__ == "__main__":
    main()
