"""Sample from a checkpoint: `python -m ddpm_lightning.sample ckpt=PATH n=64 sampler=ddim
sampler.num_steps=50 seed=0 out=DIR` (a Hydra command over conf/sample.yaml; `--help` lists the
options, `-m` sweeps them).

Writes `DIR/samples.npz` (array `arr_0`: uint8 N x H x W x C for images, the convention of the
guided-diffusion evaluation suite; float32 N x D for 2-D data) and `DIR/grid.png` (a scatter
plot for 2-D data), beside the config that made them (`DIR/.hydra/`). The sampler is the
checkpoint's own unless `sampler=NAME` picks a preset of the `sampler` group, as in train.py;
`sampler.KEY=VALUE` tunes either. Sample i starts from `noise.fixed_noise([i], ..., seed)` and
draws its step noise from its own generator, so the samples do not depend on `batch_size`.

A class-conditional checkpoint (trained with `conditioning=class`) takes `class=7` (every sample a
7), `class=all` (n samples of every class: n x K in all, the grid one row per class) or no class
(sample i of class i mod K, as the grids and FID draw); `guidance=3` is the classifier-free
guidance scale w (diffusers' convention: 1 conditional, 0 unconditional, > 1 guided; default the
model's `conditioning.guidance_scale`) and `guidance_rescale=` Lin et al.'s phi. The npz then
also holds `labels` (N,) int64, the class of each sample.
"""

from __future__ import annotations

import inspect
import sys
import types
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
from ddpm_lightning.sampling import sample as sample_function
from ddpm_lightning.visualize import class_grid, image_grid, save_png, scatter, to_uint8

GRID_PER_CLASS = 16  # columns of a class grid at most (class=all n=64 still writes all 640 to the npz)


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


class Request:
    """What the command line asks of the model: how many samples, the class of each (None for an
    unconditional model), the guidance, and whether the labels are class-balanced (i mod K)."""

    def __init__(self, n: int, labels: torch.Tensor | None, guidance: float | None, rescale: float, balanced: bool) -> None:
        self.n, self.labels, self.guidance, self.rescale, self.balanced = n, labels, guidance, rescale, balanced

    def cond(self, idx: range) -> dict[str, torch.Tensor] | None:
        return None if self.labels is None else {"class": self.labels[idx.start : idx.stop]}

    def describe(self, module) -> str:
        if self.labels is None:
            return ""
        w = module.conditioning.guidance_scale if self.guidance is None else self.guidance
        which = "class-balanced (sample i: class i mod K)" if self.balanced else f"class {int(self.labels[0])}"
        return f", {which}, guidance w={w:g}" + (f" rescale {self.rescale:g}" if self.rescale else "")


def request(module, cfg: DictConfig) -> Request:
    """`class=`, `guidance=` and `guidance_rescale=` checked against the model, one line each,
    before any sampling."""
    conditioning, n = module.conditioning, cfg.n
    cls, w, rescale = cfg.get("class"), cfg.guidance, cfg.guidance_rescale
    for key, value in (("guidance", w), ("guidance_rescale", rescale)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise ValueError(f"{key} must be a number, got {value!r}")
    num_classes = getattr(conditioning, "num_classes", None)
    if cls is not None and num_classes is None:
        kind = "unconditional (trained with conditioning=none)" if not conditioning.is_conditional else f"{conditioning.type}-conditional"
        raise ValueError(f"class={cls!r} needs a class-conditional model (conditioning=class); this checkpoint is {kind}")
    # guidance < 0, rescale outside [0, 1], w != 1 for an unconditional model or one trained without dropout
    conditioning.guided(module.denoiser, None if w is None else float(w), float(rescale or 0.0))
    if num_classes is None:
        return Request(n, None, w, float(rescale or 0.0), balanced=False)
    if cls is None or cls == "all":
        total = n * num_classes if cls == "all" else n
        labels = conditioning.balanced(total)["class"]
        return Request(total, labels, w, float(rescale or 0.0), balanced=True)
    if isinstance(cls, bool) or not isinstance(cls, int):
        raise ValueError(f"class must be an integer in [0, {num_classes}), 'all' or null (class-balanced), got {cls!r}")
    labels = conditioning.prepare({"class": cls}, n)["class"]  # one line for a class outside [0, K)
    return Request(n, labels, w, float(rescale or 0.0), balanced=False)


def generate(module, cfg: DictConfig, spec: dict[str, Any], req: Request | None = None) -> tuple[torch.Tensor, int]:
    """All samples, in batches, and the network evaluations per sample (NFE); sample i's
    noise depends on (seed, i) only."""
    req = req or request(module, cfg)
    n, bs, seed = req.n, cfg.batch_size, cfg.seed
    guide = {"guidance_scale": req.guidance, "guidance_rescale": req.rescale} if req.labels is not None else {}
    module.make_sampler(spec)  # a bad sampler option fails here, before any sampling
    if cfg.get("cond_image") or getattr(module.conditioning, "type", None) == "image":
        return generate_image_conditioned(module, cfg, spec)
    shape = module.data_shape
    image = load_images(cfg.image, shape, n) if cfg.image else None  # n: all of them (class=all: n x K)
    mask = load_images(cfg.mask, shape, n, kind="mask") if cfg.mask else None
    if mask is not None and image is None:
        raise ValueError("mask= needs image= (the image whose unmasked part is kept)")
    out = []
    for start in tqdm(range(0, n, bs), desc="batches", disable=not cfg.progress or n <= bs):
        idx = range(start, min(n, start + bs))
        if image is None:
            res = fixed_samples(module, idx, seed, sampler=spec, progress=cfg.progress, cond=req.cond(idx), **guide)
        else:
            kw = {"mask": mask[idx.start : idx.stop]} if mask is not None else {}
            res = module.sample(image=image[idx.start : idx.stop], strength=cfg.strength, sampler=spec,
                                generator=sample_generators(idx, seed), progress=cfg.progress, cond=req.cond(idx),
                                **guide, **kw)
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


def save(samples: torch.Tensor, out: str | Path, labels: torch.Tensor | None = None,
         num_classes: int | None = None, names: list[str] | None = None) -> dict[str, Path]:
    """samples.npz (arr_0, and `labels` when given) and grid.png: one row per class (at most
    GRID_PER_CLASS columns) when `num_classes` is given (class-balanced labels), else the first 64."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if samples.ndim == 4:
        arr = to_uint8(samples).permute(0, 2, 3, 1).numpy()  # (N, H, W, C) uint8
        if num_classes is not None and len(samples) >= num_classes:
            grid = class_grid(samples, num_classes, min(len(samples) // num_classes, GRID_PER_CLASS), names)
        else:
            grid = image_grid(samples[:64])
    else:
        arr = samples.float().numpy().astype(np.float32)  # (N, D)
        grid = scatter(samples)
    extra = {"labels": labels.cpu().numpy().astype(np.int64)} if labels is not None else {}
    np.savez(out / "samples.npz", arr_0=arr, **extra)
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
    req = request(module, cfg)
    samples, nfe = generate(module, cfg, spec, req)
    by_class = getattr(module.conditioning, "num_classes", None) if req.balanced else None
    paths = save(samples, out, req.labels, by_class)
    print(f"wrote {len(samples)} samples ({spec['name']}, {nfe} network evaluations per sample{req.describe(module)}) "
          f"to {paths['npz']} and {paths['grid']}")
    return paths


def main(argv: list[str]) -> dict[str, Path]:
    """The command from Python: `main(["ckpt=PATH", "n=8", "sampler=ddim"])` -> the written paths."""
    cfg = compose("sample", argv)
    return run(cfg, cfg.out)


class _CallsSampleFunction(types.ModuleType):
    """Importing this module (`from ddpm_lightning.sample import main`) makes Python bind it as the
    package's attribute `sample`, over the function the package exports under that name
    (`ddpm_lightning.sampling.sample`). Calling the module calls that function, so
    `from ddpm_lightning import sample; sample(...)` means one thing whatever was imported first,
    and `python -m ddpm_lightning.sample` keeps its name."""

    def __call__(self, *args: Any, **kwargs: Any):
        return sample_function(*args, **kwargs)


sys.modules[__name__].__class__ = _CallsSampleFunction
__signature__ = inspect.signature(sample_function)


if __name__ == "__main__":
    run_command("sample", lambda cfg: run(cfg, job_dir()))
