"""Sample from a checkpoint:

    python -m ddpm_lightning.sample ckpt=PATH n=64 sampler=ddim steps=50 seed=0 out=DIR

writes `DIR/samples.npz` (array `arr_0`: uint8 N x H x W x C for images, the convention of the
guided-diffusion evaluation suite; float32 N x D for 2-D data) and `DIR/grid.png` (a scatter
plot for 2-D data). Options (key=value):

    ckpt        checkpoint written by train.py (required)
    n           number of samples (64)
    sampler     ddpm, ddim, ... (default: the checkpoint's sampler config)
    steps       sampling steps (default: the sampler config's)
    eta         DDIM eta; spacing: leading / trailing / linspace; clip: true / false
    seed        seed of the torch.Generator (0): the same seed gives the same samples
    batch_size  samples per forward pass (256)
    out         output directory (samples)
    device      auto, cpu, cuda, cuda:1, ... (auto)
    image       img2img / inpainting source: a PNG/JPEG (one image, repeated n times) or an
                .npz whose arr_0 holds N uint8 images
    strength    img2img strength in (0, 1] (1.0)
    mask        inpainting mask image: white = generate, black = keep (diffusers' convention)
    progress    show a progress bar (true)
    host_malloc retain (default) or system: glibc's policy for freed host memory, as train.py's
                (retain: CPU sampling steps do not fault their memory back in)
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from PIL import Image
from tqdm.auto import tqdm

from ddpm_lightning.errors import one_line_errors
from ddpm_lightning.host_malloc import set_host_malloc
from ddpm_lightning.visualize import image_grid, save_png, scatter, to_uint8

DEFAULTS: dict[str, Any] = {
    "ckpt": None,
    "n": 64,
    "sampler": None,
    "steps": None,
    "eta": None,
    "spacing": None,
    "clip": None,
    "seed": 0,
    "batch_size": 256,
    "out": "samples",
    "device": "auto",
    "image": None,
    "strength": 1.0,
    "mask": None,
    "progress": True,
    "host_malloc": "retain",
}


def parse_args(argv: list[str]) -> dict[str, Any]:
    """key=value arguments over DEFAULTS; unknown keys are an error naming the valid ones."""
    if any(a in ("-h", "--help") for a in argv):
        print(__doc__)
        raise SystemExit(0)
    bad = [a for a in argv if "=" not in a]
    if bad:
        raise ValueError(f"arguments are key=value pairs, got {bad}; keys: {sorted(DEFAULTS)}")
    given = OmegaConf.to_container(OmegaConf.from_dotlist(argv))
    unknown = sorted(set(given) - set(DEFAULTS))
    if unknown:
        raise ValueError(f"unknown option(s) {unknown}; valid: {sorted(DEFAULTS)}")
    args = {**DEFAULTS, **given}
    if not args["ckpt"]:
        raise ValueError("ckpt=PATH is required (a checkpoint written by train.py)")
    n = args["n"]
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    if isinstance(args["batch_size"], bool) or not isinstance(args["batch_size"], int) or args["batch_size"] < 1:
        raise ValueError(f"batch_size must be a positive integer, got {args['batch_size']!r}")
    return args


def load_module(ckpt: str | Path, device: str = "auto"):
    """`DiffusionModule.load_from_checkpoint` with a clear error for a missing file."""
    from ddpm_lightning.module import DiffusionModule

    path = Path(ckpt)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    module = DiffusionModule.load_from_checkpoint(path, map_location=device)
    return module.eval()


def load_images(path: str | Path, shape: tuple[int, ...], n: int, kind: str = "image") -> torch.Tensor:
    """Images for img2img / inpainting as (n, C, H, W) in [-1, 1], resized to the model's size;
    masks (kind="mask") come back as (n, 1, H, W) in [0, 1]."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{kind} file {str(path)!r} does not exist")
    c, h, w = shape
    if path.suffix == ".npz":
        arr = np.load(path)["arr_0"]
        x = torch.from_numpy(arr).permute(0, 3, 1, 2).float() / 255.0
    else:
        try:
            img = Image.open(path)
            img = img.convert("L" if c == 1 or kind == "mask" else "RGB")
        except OSError as err:
            raise ValueError(f"cannot read {kind} file {str(path)!r}: {err}") from err
        x = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0)
        x = x[None, None] if x.ndim == 2 else x.permute(2, 0, 1)[None]
    x = F.interpolate(x, size=(h, w), mode="bilinear", antialias=True, align_corners=False)
    if kind == "mask":
        x = (x.mean(1, keepdim=True) > 0.5).float()
    else:
        if x.shape[1] != c:
            raise ValueError(f"{kind} has {x.shape[1]} channels but the model takes {c}")
        x = x * 2 - 1
    if len(x) == 1:
        x = x.expand(n, *x.shape[1:])
    elif len(x) < n:
        raise ValueError(f"{kind} file holds {len(x)} images but n={n} samples were asked for")
    return x[:n].contiguous()


def generate(module, args: dict[str, Any]) -> torch.Tensor:
    """All n samples, in batches, from one seeded generator stream per batch."""
    n, bs = args["n"], args["batch_size"]
    overrides = {k: v for k, v in {"eta": args["eta"], "spacing": args["spacing"], "clip_denoised": args["clip"]}.items() if v is not None}
    if args["sampler"] is None and not overrides:
        sampler = None
    else:
        spec = dict(module.hparams.sampler)
        if args["sampler"] is not None and args["sampler"] != spec.get("name"):
            spec = {"name": args["sampler"]}
        spec.update(overrides)
        sampler = spec
    shape = module.data_shape
    image = load_images(args["image"], shape, n) if args["image"] else None
    mask = load_images(args["mask"], shape, n, kind="mask") if args["mask"] else None
    if mask is not None and image is None:
        raise ValueError("mask= needs image= (the image whose unmasked part is kept)")
    out = []
    for start in tqdm(range(0, n, bs), desc="batches", disable=not args["progress"] or n <= bs):
        stop = min(n, start + bs)
        # one generator per batch, seeded from (seed, batch index): reproducible at any batch size split
        g = torch.Generator().manual_seed(args["seed"] * 1_000_003 + start)
        kw = {"image": image[start:stop], "strength": args["strength"]} if image is not None else {}
        if mask is not None:
            kw["mask"] = mask[start:stop]
        res = module.sample(
            None if image is not None else stop - start,
            sampler=sampler,
            num_steps=args["steps"],
            generator=g,
            progress=args["progress"],
            **kw,
        )
        out.append(res.samples.cpu())
    return torch.cat(out)


def save(samples: torch.Tensor, out: str | Path) -> dict[str, Path]:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if samples.ndim == 4:
        arr = to_uint8(samples).permute(0, 2, 3, 1).numpy()  # (N, H, W, C) uint8
        grid = image_grid(samples[:64])
    else:
        arr = samples.float().numpy().astype(np.float32)  # (N, D)
        grid = scatter(samples)
    np.savez(out / "samples.npz", arr_0=arr)
    save_png(grid, out / "grid.png")
    return {"npz": out / "samples.npz", "grid": out / "grid.png"}


def main(argv: list[str] | None = None) -> dict[str, Path]:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    set_host_malloc(args["host_malloc"])
    module = load_module(args["ckpt"], args["device"])
    samples = generate(module, args)
    paths = save(samples, args["out"])
    print(f"wrote {len(samples)} samples to {paths['npz']} and {paths['grid']}")
    return paths


if __name__ == "__main__":
    with one_line_errors():
        main()
