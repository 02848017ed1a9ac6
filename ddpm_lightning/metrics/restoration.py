"""PSNR and SSIM of an image-conditioned model's samples against the ground truth.

An image-conditioned model (`conditioning=image`) restores a target from its condition (a
low-resolution, masked or grey version of it), so its samples can be scored against the target:
PSNR = 10 log10(range^2 / MSE) per image, and SSIM (Wang et al. 2004; 11 x 11 Gaussian window,
sigma 1.5, K1 = 0.01, K2 = 0.03), both torchmetrics', on [-1, 1] images (range 2), averaged over
the images. `restore` draws the samples as the grid callback and the evaluate command do: sample
i from (seed, i) (`noise.fixed_samples`), its condition built from target i, inpainting masks
from a generator seeded with `seed`. Diffusion samples are draws from p(x0 | condition), not its
mean, so their PSNR is below a regression model's; the condition's own scores (`input_*`: for
super-resolution the bilinear upsampling) are the baseline a restoration must beat.
"""

from __future__ import annotations

from typing import Any

import torch
from torchmetrics.image import PeakSignalNoiseRatio, StructuralSimilarityIndexMeasure

DATA_RANGE = 2.0  # images in [-1, 1]


def psnr_ssim(samples: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
    """{"psnr": dB, "ssim": in [-1, 1]} of samples against targets, (N, C, H, W) in [-1, 1],
    each the mean over the N images."""
    if samples.shape != targets.shape:
        raise ValueError(f"samples {tuple(samples.shape)} and ground truth {tuple(targets.shape)} must have one shape")
    samples, targets = samples.detach().float().cpu(), targets.detach().float().cpu()
    psnr = PeakSignalNoiseRatio(data_range=DATA_RANGE, dim=(1, 2, 3), reduction="elementwise_mean")
    ssim = StructuralSimilarityIndexMeasure(data_range=DATA_RANGE, reduction="elementwise_mean")
    return {"psnr": float(psnr(samples, targets)), "ssim": float(ssim(samples, targets))}


def conditions(module, targets: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """The conditions of `targets` (N, C, H, W) under the module's task, on the module's device;
    random inpainting masks come from a CPU generator seeded with `seed` (the same on any device)."""
    generator = torch.Generator().manual_seed(seed)
    return module.conditioning.condition_for(targets.to(module.device), generator)


def restore(module, targets: torch.Tensor, seed: int = 0, batch_size: int = 256, **sample_kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """(conditions, samples) for `targets` (N, C, H, W): sample i restores target i from its own
    fixed noise (seed, i); `sample_kwargs` go to `module.sample` (sampler=, guidance_scale=)."""
    from ddpm_lightning.noise import fixed_samples

    cond = conditions(module, targets, seed)
    out = []
    for start in range(0, len(targets), batch_size):
        idx = range(start, min(len(targets), start + batch_size))
        res = fixed_samples(module, idx, seed, cond={"image": cond[idx.start : idx.stop]}, **sample_kwargs)
        out.append(res.samples.cpu())
    return cond.cpu(), torch.cat(out)


def restoration_scores(module, targets: torch.Tensor, seed: int = 0, batch_size: int = 256, **sample_kwargs: Any) -> dict[str, Any]:
    """PSNR / SSIM of the samples and of the condition itself (`input_psnr`, `input_ssim`: the
    bilinear upsampling for super-resolution; not defined for colorization, whose condition has
    one channel for three)."""
    cond, samples = restore(module, targets, seed, batch_size, **sample_kwargs)
    targets = targets.cpu()
    scores: dict[str, Any] = psnr_ssim(samples, targets)
    if module.conditioning.task != "colorization":
        picture = module.conditioning.picture(cond, targets.shape[1])
        scores.update({f"input_{k}": v for k, v in psnr_ssim(picture, targets).items()})
    scores["n"] = len(targets)
    return scores
