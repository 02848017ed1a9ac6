"""The one denoising loop: from noise (or a noised image) to samples, for any denoiser and
sampler, with img2img and inpainting.

The loop hands each step a function `denoise(x_t, t) -> Prediction` (the `Denoiser` with the
conditioning bound) and lets the sampler call it (`Sampler.sample_step`), so one step may
evaluate the network more than once or between the training timesteps; the loop counts the
evaluations (NFE). It runs under `torch.inference_mode()`, takes a `torch.Generator` or one per
sample (`ddpm_lightning.noise`; the same seed gives the same samples), and keeps only the
current x_t unless a trajectory is asked for, so its memory does not grow with the number of
steps.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from ddpm_lightning.denoiser import Cond, Denoiser
from ddpm_lightning.parameterizations import Prediction
from ddpm_lightning.process import DiffusionProcess, randn
from ddpm_lightning.samplers import Sampler

DenoiserFn = Callable[..., Prediction]  # (x_t, t, cond=None) -> Prediction, e.g. a `Denoiser`


@dataclass
class SampleOutput:
    samples: torch.Tensor  # (B, ...) the final x_0
    timesteps: torch.Tensor  # (S,) the timesteps visited, descending
    trajectory: torch.Tensor | None = None  # (S + 1, B, ...) x_t before each step, then x_0 (CPU)
    x0_trajectory: torch.Tensor | None = None  # (S, B, ...) x0_hat at each step (CPU)
    nfe: int = 0  # network evaluations per sample (a batched call counts once)


def _check_mask(mask: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
    try:
        shape = torch.broadcast_shapes(mask.shape, image.shape)
    except RuntimeError:
        shape = None
    if shape != image.shape:
        raise ValueError(
            f"mask of shape {tuple(mask.shape)} does not broadcast to the image shape {tuple(image.shape)}"
        )
    return mask.to(device=image.device, dtype=image.dtype)


def img2img_timesteps(timesteps: torch.Tensor, strength: float) -> torch.Tensor:
    """The last int(n * strength) timesteps (at least one), as diffusers' img2img pipelines
    do (SDEdit, Meng et al. 2022): strength 1 starts from the noisiest step."""
    if not 0 < strength <= 1:
        raise ValueError(f"strength must be in (0, 1], got {strength!r}")
    n = len(timesteps)
    keep = max(1, min(n, int(n * strength)))
    return timesteps[n - keep :]


def sample(denoiser: DenoiserFn | Callable, sampler: Sampler | DiffusionProcess, *args, **kwargs) -> SampleOutput:
    """Draw samples: `sample(denoiser, sampler, shape=None, *, cond=None, ...)`.

    The network form of earlier versions, `sample(network, process, parameterization, sampler,
    shape=None, ...)`, is the same call with `Denoiser(network, process, parameterization)`.
    See `denoising_loop` for the arguments."""
    if isinstance(sampler, DiffusionProcess):
        if len(args) < 2:
            raise TypeError("sample(network, process, parameterization, sampler, shape=None, ...): give all four")
        parameterization, real_sampler, *rest = args
        return denoising_loop(Denoiser(denoiser, sampler, parameterization), real_sampler, *rest, **kwargs)
    return denoising_loop(denoiser, sampler, *args, **kwargs)


@torch.inference_mode()
def denoising_loop(
    denoiser: DenoiserFn,
    sampler: Sampler,
    shape: Sequence[int] | None = None,
    *,
    cond: Cond = None,
    num_steps: int | None = None,
    generator: torch.Generator | list[torch.Generator] | None = None,
    noise: torch.Tensor | None = None,
    image: torch.Tensor | None = None,
    strength: float = 1.0,
    mask: torch.Tensor | None = None,
    return_trajectory: bool = False,
    progress: bool = False,
    device: torch.device | str | None = None,
) -> SampleOutput:
    """The one sampling loop.

    Args:
        denoiser: a `Denoiser`, or any callable (x_t, t, cond) -> Prediction.
        sampler: the algorithm; it calls the denoiser (`Sampler.sample_step`).
        shape: (B, C, H, W) or (B, D); taken from `image` or `noise` when those are given.
        cond: conditioning inputs handed to every denoiser call (None: unconditional).
        num_steps: sampling steps (None: all T timesteps).
        generator: the random source for the initial noise and every step: one generator, or
            a list with one per sample (`ddpm_lightning.noise.sample_generators`).
        noise: an explicit starting noise x_T (e.g. fixed noise for progress pictures).
        image: for img2img / inpainting, the image in data range ([-1, 1]).
        strength: img2img strength in (0, 1]: the fraction of the steps that is run, starting
            from `image` noised to the first of them (SDEdit).
        mask: inpainting mask broadcastable to `image`: 1 where new content is generated,
            0 where `image` is kept (diffusers' convention). The kept region is re-noised
            from `image` to each step's noise level and pasted back, and equals `image` exactly
            at the end.
        return_trajectory: also return x_t and x0_hat at every step (moved to the CPU).
    """
    process = sampler.process
    if device is None:
        device = process.betas.device
    if image is not None:
        image = image.to(device=device, dtype=torch.float32)
        shape = image.shape
    elif mask is not None:
        raise ValueError("inpainting needs the image whose known region the mask keeps")
    elif noise is not None:
        shape = noise.shape
    if shape is None:
        raise ValueError("give the sample shape, a starting noise, or an image")
    if mask is not None:
        mask = _check_mask(torch.as_tensor(mask), image)

    timesteps = sampler.set_timesteps(num_steps)
    first = 0
    if image is not None:
        first = len(timesteps) - len(img2img_timesteps(timesteps, strength))
    elif strength != 1.0:
        raise ValueError("strength is an img2img option: give an image too")

    if noise is None:
        noise = randn(shape, generator, device, torch.float32)
    x = noise.to(device=device, dtype=torch.float32)
    if image is not None:
        t0 = timesteps[first].to(device).expand(shape[0])
        x_img, _ = process.q_sample(image, t0, noise=x)
        x = x_img if mask is None else mask * x + (1 - mask) * x_img

    calls = 0

    def denoise(x_t: torch.Tensor, t: torch.Tensor) -> Prediction:
        nonlocal calls
        calls += 1
        return denoiser(x_t, t) if cond is None else denoiser(x_t, t, cond)

    traj = [x.cpu()] if return_trajectory else None
    x0_traj = [] if return_trajectory else None
    for i in tqdm(range(first, len(timesteps)), desc="sampling", disable=not progress, leave=False):
        x, x0_hat = sampler.sample_step(denoise, x, i, generator=generator)
        if mask is not None:
            # paste the known region back at the next noise level (RePaint without resampling)
            t_prev = sampler.prev_timesteps[i]
            if t_prev >= 0:
                t_prev = t_prev.to(device).expand(shape[0])
                known, _ = process.q_sample(image, t_prev, generator=generator)
            else:
                known = image
            x = mask * x + (1 - mask) * known
        if return_trajectory:
            traj.append(x.cpu())
            x0_traj.append(x0_hat.cpu())
    return SampleOutput(
        samples=x,
        timesteps=timesteps[first:],
        trajectory=torch.stack(traj) if traj is not None else None,
        x0_trajectory=torch.stack(x0_traj) if x0_traj is not None else None,
        nfe=calls,
    )
