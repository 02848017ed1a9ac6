"""The one denoising loop: from noise (or a noised image) to samples, for any network,
parameterization and sampler, with img2img and inpainting.

The loop runs under `torch.inference_mode()`, takes a `torch.Generator` (the same seed gives the
same samples), and keeps only the current x_t unless a trajectory is asked for, so its memory
does not grow with the number of steps.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from ddpm_lightning.parameterizations import Parameterization, get_parameterization
from ddpm_lightning.process import DiffusionProcess, randn
from ddpm_lightning.samplers import Sampler

ModelFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (x_t, t) -> network output


@dataclass
class SampleOutput:
    samples: torch.Tensor  # (B, ...) the final x_0
    timesteps: torch.Tensor  # (S,) the timesteps visited, descending
    trajectory: torch.Tensor | None = None  # (S + 1, B, ...) x_t before each step, then x_0 (CPU)
    x0_trajectory: torch.Tensor | None = None  # (S, B, ...) x0_hat at each step (CPU)


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


@torch.inference_mode()
def sample(
    model: ModelFn,
    process: DiffusionProcess,
    parameterization: Parameterization | str,
    sampler: Sampler,
    shape: Sequence[int] | None = None,
    *,
    num_steps: int | None = None,
    generator: torch.Generator | None = None,
    noise: torch.Tensor | None = None,
    image: torch.Tensor | None = None,
    strength: float = 1.0,
    mask: torch.Tensor | None = None,
    return_trajectory: bool = False,
    progress: bool = False,
    device: torch.device | str | None = None,
) -> SampleOutput:
    """Draw samples.

    Args:
        model: the network, called as model(x_t, t) with t a (B,) long tensor.
        shape: (B, C, H, W) or (B, D); taken from `image` or `noise` when those are given.
        num_steps: sampling steps (None: all T timesteps).
        generator: the random source for the initial noise and every step.
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
    param = get_parameterization(parameterization)
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
    if image is not None:
        timesteps = img2img_timesteps(timesteps, strength)
    elif strength != 1.0:
        raise ValueError("strength is an img2img option: give an image too")

    if noise is None:
        noise = randn(shape, generator, device, torch.float32)
    x = noise.to(device=device, dtype=torch.float32)
    if image is not None:
        t0 = torch.full((shape[0],), int(timesteps[0]), device=device, dtype=torch.long)
        x_img, _ = process.q_sample(image, t0, noise=x)
        x = x_img if mask is None else mask * x + (1 - mask) * x_img

    traj = [x.cpu()] if return_trajectory else None
    x0_traj = [] if return_trajectory else None
    for t in tqdm(timesteps.tolist(), desc="sampling", disable=not progress, leave=False):
        t_batch = torch.full((shape[0],), t, device=device, dtype=torch.long)
        output = model(x, t_batch)
        pred = param.predict(process, x, t_batch, output.float())
        x, x0_hat = sampler.step(x, t, pred, generator=generator)
        if mask is not None:
            # paste the known region back at the next noise level (RePaint without resampling)
            t_prev = sampler.prev_timestep(t)
            if t_prev >= 0:
                known, _ = process.q_sample(
                    image, torch.full_like(t_batch, t_prev), generator=generator
                )
            else:
                known = image
            x = mask * x + (1 - mask) * known
        if return_trajectory:
            traj.append(x.cpu())
            x0_traj.append(x0_hat.cpu())
    return SampleOutput(
        samples=x,
        timesteps=timesteps,
        trajectory=torch.stack(traj) if traj is not None else None,
        x0_trajectory=torch.stack(x0_traj) if x0_traj is not None else None,
    )
