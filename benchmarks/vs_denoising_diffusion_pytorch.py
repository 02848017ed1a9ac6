"""Training throughput against denoising-diffusion-pytorch (lucidrains, PyPI), same batch, data,
optimizer, clipping and precision.

    pip install --no-deps denoising-diffusion-pytorch==2.3.4 ema-pytorch einops accelerate pytorch-fid
    python benchmarks/vs_denoising_diffusion_pytorch.py
    python benchmarks/vs_denoising_diffusion_pytorch.py --device cuda --network unet_ddpm_cifar10 --precision bf16-mixed

Ours: the `train.py` path (as in train_overhead.py: Lightning Trainer, DiffusionModule, the
preset's diffusers UNet2DModel). As there, the two sides run interleaved step by step on a CPU
and in alternating whole runs on CUDA (`--mode`). Theirs: a loop doing what their `Trainer.train` does per step
(`loss = diffusion(images)`, backward, `clip_grad_norm_(1.0)`, optimizer step), without
`accelerate` and without EMA (EMA is off on our side too), with our AdamW config, on the same
DataLoader, under the same autocast. Their `GaussianDiffusion` is set to our process: linear
betas, T = 1000, `objective="pred_noise"`, MSE, no min-SNR weighting, no offset noise,
`auto_normalize=False` (our data are already in [-1, 1]).

Two networks on their side:
* their own `Unet`, configured as close to the preset as its options allow (same widths and
  levels, full attention at the same resolution, SDPA attention, same dropout). Their blocks
  differ (two ResNet blocks per level on the way down, weight-standardised convolutions,
  linear attention at the other levels), so the table gives parameters and FLOPs per image;
* our own UNet2DModel wrapped in their interface: the same network on both sides, so the ratio
  is the cost of their diffusion wrapper and loop against ours.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch
from hydra.utils import instantiate
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
    train_overrides,
    train_step_flops,
)
from torch import nn
from train_overhead import add_mode_arg, finish_mode, interleaved_row, interleaved_seconds, lightning_images_per_s

GOAL = ">= 1.20"
PIN = "pip install --no-deps denoising-diffusion-pytorch==2.3.4 ema-pytorch einops accelerate pytorch-fid"


def their_unet(args, channels: int) -> nn.Module:
    """denoising-diffusion-pytorch's Unet, as close to our preset as its options allow."""
    from denoising_diffusion_pytorch import Unet

    if args.network == "unet_small":  # ours: widths 32, 64, 64; attention (1 head of 32) at 8x8
        dim, mults, attn = (8 if args.smoke else 32), (1, 2, 2), (False, True, False)
        heads, dim_head, dropout = (1, 1, 1), (32, 32, 32), 0.0
    else:  # ours: widths 128, 256, 256, 256; one head of full width at 16x16; dropout 0.1
        dim, mults, attn = (8 if args.smoke else 128), (1, 2, 2, 2), (False, True, False, False)
        heads, dim_head, dropout = (1, 1, 1, 1), (dim, 2 * dim, 2 * dim, 2 * dim), 0.1
    return Unet(dim=dim, dim_mults=mults, channels=channels, full_attn=attn, attn_heads=heads,
                attn_dim_head=dim_head, dropout=dropout, flash_attn=True)


class WrappedUNet(nn.Module):
    """Our UNet2DModel behind the attributes their GaussianDiffusion reads."""

    def __init__(self, unet: nn.Module) -> None:
        super().__init__()
        self.unet = unet
        self.channels = unet.config.in_channels
        self.out_dim = unet.config.out_channels
        self.self_condition = False
        self.random_or_learned_sinusoidal_cond = False

    def forward(self, x, t, x_self_cond=None):
        return self.unet(x, t).sample


class TheirLoop:
    """What their `Trainer.train` does per step, on our DataLoader and AdamW config, without
    `accelerate` and EMA: `step()` runs one optimizer step."""

    def __init__(self, args, cfg, which: str) -> None:
        from denoising_diffusion_pytorch import GaussianDiffusion

        datamodule, model, _ = build_run(cfg)
        self.device = torch.device(args.device)
        self.precision = args.precision
        c, h, _ = model.data_shape
        torch.manual_seed(0)
        self.net = their_unet(args, c) if which == "theirs" else WrappedUNet(model.network.unet)
        self.diffusion = GaussianDiffusion(
            self.net, image_size=h, timesteps=model.num_timesteps, objective="pred_noise", beta_schedule="linear",
            auto_normalize=False, min_snr_loss_weight=False, offset_noise_strength=0.0,
        ).to(self.device)
        self.diffusion.train()
        self.opt = instantiate(cfg.optimizer)(self.diffusion.parameters())  # our AdamW config
        self.clip = cfg.trainer.gradient_clip_val
        datamodule.setup("fit")
        self.loader = datamodule.train_dataloader()
        self._batches = self._forever()

    def _forever(self):
        while True:
            yield from self.loader

    def step(self) -> None:
        x0 = next(self._batches).to(self.device, non_blocking=True)
        self.opt.zero_grad(set_to_none=True)
        with autocast(self.device.type, self.precision):
            loss = self.diffusion(x0)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.diffusion.parameters(), self.clip)
        self.opt.step()


def their_images_per_s(args, which: str) -> tuple[Measured, nn.Module]:
    with tempfile.TemporaryDirectory() as out:
        cfg = compose(train_overrides(args, batch_size=args.batch_size, max_steps=1), Path(out))
        loop = TheirLoop(args, cfg, which)
    for _ in range(args.warmup):
        loop.step()
    start = mark(args.device)
    for _ in range(args.steps):
        loop.step()
    return Measured.rate(args.batch_size * args.steps, start, mark(args.device)), loop.net


def describe(net: nn.Module, shape, device) -> str:
    x = torch.randn(2, *shape, device=device)
    t = torch.randint(0, 1000, (2,), device=device)
    net = net.to(device)
    flops = train_step_flops(lambda a, b: net(a, b), x, t) / 2
    net.zero_grad(set_to_none=True)
    params = sum(p.numel() for p in net.parameters()) / 1e6
    return f"{params:.2f}M params, {flops / 1e9:.2f} GFLOP/image fwd+bwd"


def run(args) -> list[Row]:
    try:
        import denoising_diffusion_pytorch  # noqa: F401
    except ImportError as err:
        return [Row("vs denoising-diffusion-pytorch", "not installed", note=f"{err}; `{PIN}`")]
    from importlib.metadata import version

    ver = version("denoising-diffusion-pytorch")
    rows = []
    nets = {}
    for which in args.their_networks:
        label = ("their GaussianDiffusion + their Unet (closest config)" if which == "theirs"
                 else "their GaussianDiffusion wrapping our UNet2DModel (same network)")
        case = f"train.py path vs {label}: {args.network}, batch {args.batch_size}, {args.precision}, {args.device}"
        goal = GOAL if which == "theirs" else ""
        with tempfile.TemporaryDirectory() as out:
            cfg = compose(train_overrides(args, batch_size=8, max_steps=1), Path(out))
            _, model, _ = build_run(cfg)
            ours_desc = describe(model.network, model.data_shape, args.device)
            theirs_desc = describe(TheirLoop(args, cfg, which).net, model.data_shape, args.device)
        note = f"v{ver}; ours: {ours_desc}; theirs: {theirs_desc}; "
        if args.mode == "interleaved":
            ours, theirs = interleaved_seconds(args, lambda cfg, which=which: TheirLoop(args, cfg, which), ema=False)
            rows.append(interleaved_row("vs denoising-diffusion-pytorch", case, goal, args, ours, theirs, note))
            continue
        res = alternate({"ours": lambda: lightning_images_per_s(args, ema=False),
                         "theirs": lambda which=which: their_images_per_s(args, which)[0]}, args.repeats)
        rows.append(Row("vs denoising-diffusion-pytorch", case, median(res["ours"]), median(res["theirs"]), "images/s",
                        ratio_of_medians(res["ours"], res["theirs"]), goal,
                        note=note + spread(res["ours"], res["theirs"])))
    return rows


def add_args(p) -> None:
    p.add_argument("--batch-size", type=int, default=None, help="default 128")
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--warmup", type=int, default=None)
    p.add_argument("--their-networks", type=lambda s: s.split(","), default=None,
                   help="theirs (their Unet), wrapped (our UNet2DModel), or both: theirs,wrapped")
    add_mode_arg(p)


def defaults(args) -> None:
    finish_args(args, batch_size=(128, 8), steps=(30, 2), warmup=(3, 1), their_networks=(["theirs", "wrapped"], ["theirs", "wrapped"]))
    finish_mode(args)


def main(argv=None) -> list[Row]:
    return script_main(__doc__, "Training: ours vs denoising-diffusion-pytorch", run, argv, add_args, defaults)


if __name__ == "__main__":
    main()
