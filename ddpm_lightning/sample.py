"""Sample from a checkpoint: `python -m ddpm_lightning.sample ckpt=PATH n=64 sampler=ddim
sampler.num_steps=50 seed=0 out=DIR` (a Hydra command over conf/sample.yaml; `--help` lists the
options, `-m` sweeps them).

Writes `DIR/samples.npz` (array `arr_0`: uint8 N x H x W x C for images, the convention of the
guided-diffusion evaluation suite; float32 N x D for 2-D data) and `DIR/grid.png` (a scatter
plot for 2-D data), beside the config that made them (`DIR/.hydra/`). The sampler is the
checkpoint's own unless `sampler=NAME` picks a preset of the `sampler` group, as in train.py;
`sampler.KEY=VALUE` tunes either. Sample i starts from `noise.fixed_noise([i], ..., seed)` and
draws its step noise from its own generator, so the samples do not depend on `batch_size`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from PIL import Image
from tqdm.auto import tqdm

from ddpm_lightning.checkpoint_file import load_module
from ddpm_lightning.cli import compose, job_dir, run_command, sampler_spec
from ddpm_lightning.host_malloc import set_host_malloc
from ddpm_lightning.noise import fixed_samples, sample_generators
from ddpm_lightning.visualize import image_grid, save_png, scatter, to_uint8


def _positive_int(cfg: DictConfig, key: str) -> int:
    value = cfg[key]
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{key} must be a positive integer, got {value!r}")
    return value


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


def generate(module, cfg: DictConfig, spec: dict[str, Any]) -> tuple[torch.Tensor, int]:
    """All n samples, in batches, and the network evaluations per sample (NFE); sample i's
    noise depends on (seed, i) only."""
    n, bs, seed = cfg.n, cfg.batch_size, cfg.seed
    module.make_sampler(spec)  # a bad sampler option fails here, before any sampling
    if cfg.get("cond_image") or getattr(module.conditioning, "type", None) == "image":
        return generate_image_conditioned(module, cfg, spec)
    shape = module.data_shape
    image = load_images(cfg.image, shape, n) if cfg.image else None
    mask = load_images(cfg.mask, shape, n, kind="mask") if cfg.mask else None
    if mask is not None and image is None:
        raise ValueError("mask= needs image= (the image whose unmasked part is kept)")
    out = []
    for start in tqdm(range(0, n, bs), desc="batches", disable=not cfg.progress or n <= bs):
        idx = range(start, min(n, start + bs))
        if image is None:
            res = fixed_samples(module, idx, seed, sampler=spec, progress=cfg.progress)
        else:
            kw = {"mask": mask[idx.start : idx.stop]} if mask is not None else {}
            res = module.sample(image=image[idx.start : idx.stop], strength=cfg.strength, sampler=spec,
                                generator=sample_generators(idx, seed), progress=cfg.progress, **kw)
        out.append(res.samples.cpu())
    return torch.cat(out), res.nfe


def generate_image_conditioned(module, cfg: DictConfig, spec: dict[str, Any]) -> tuple[torch.Tensor, int]:
    """The samples of an image-conditioned model (conditioning=image): sample i restores
    `cond_image` (one image for all n, or image i of an .npz; `conditioning.image_files`)."""
    from ddpm_lightning.conditioning.image_files import condition_from_file

    conditioning = module.conditioning
    if getattr(conditioning, "type", None) != "image":
        raise ValueError("cond_image= needs a model trained with conditioning=image; this one is "
                         + ("unconditional" if not conditioning.is_conditional else f"conditioned on {conditioning.type}"))
    if not cfg.get("cond_image"):
        raise ValueError(f"this model is image-conditioned (task {conditioning.task}): give cond_image=FILE, the picture to restore")
    if cfg.image:
        raise ValueError("give cond_image= (the picture to restore), not image= (img2img), to an image-conditioned model")
    cond = condition_from_file(conditioning, cfg.cond_image, cfg.n, cfg.mask)  # (n, c, H, W), checked
    out, bs = [], cfg.batch_size
    for start in tqdm(range(0, cfg.n, bs), desc="batches", disable=not cfg.progress or cfg.n <= bs):
        idx = range(start, min(cfg.n, start + bs))
        res = fixed_samples(module, idx, cfg.seed, sampler=spec, cond={"image": cond[idx.start : idx.stop]}, progress=cfg.progress)
        out.append(res.samples.cpu())
    return torch.cat(out), res.nfe


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


def run(cfg: DictConfig, out: str | Path) -> dict[str, Path]:
    """Sample as `cfg` (a composed conf/sample.yaml) says and write the files into `out`."""
    if cfg.ckpt and cfg.pipeline:
        raise ValueError("give ckpt=PATH or pipeline=DIR (the model to sample), not both")
    if not cfg.ckpt and not cfg.pipeline:
        raise ValueError("ckpt=PATH is required (a checkpoint written by train.py, or an exported folder; "
                         "or pipeline=DIR, a diffusers pipeline folder)")
    _positive_int(cfg, "n")
    _positive_int(cfg, "batch_size")
    set_host_malloc(cfg.host_malloc)
    module = load_module(cfg.ckpt or cfg.pipeline, cfg.device, bool(cfg.trust_checkpoint), pipeline=bool(cfg.pipeline))
    spec = sampler_spec(cfg, module.hparams.sampler)
    samples, nfe = generate(module, cfg, spec)
    paths = save(samples, out)
    print(f"wrote {len(samples)} samples ({spec['name']}, {nfe} network evaluations per sample) "
          f"to {paths['npz']} and {paths['grid']}")
    return paths


def main(argv: list[str]) -> dict[str, Path]:
    """The command from Python: `main(["ckpt=PATH", "n=8", "sampler=ddim"])` -> the written paths."""
    cfg = compose("sample", argv)
    return run(cfg, cfg.out)


if __name__ == "__main__":
    run_command("sample", lambda cfg: run(cfg, job_dir()))
