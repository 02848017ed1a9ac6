"""Bits per dimension: the variational bound on -log p(x_0) of a diffusion model, in bits/dim.

DDPM eq. 5 (Ho et al. 2020) bounds the negative log-likelihood of an image by a sum of T + 1
terms, each computed in closed form (0-based timesteps, as everywhere in this package: index t
is the paper's step t + 1):

    L_T     = KL(q(x_T | x_0) || N(0, I))                          the prior term, no network
    L_{t-1} = KL(q(x_{t-1} | x_t, x_0) || p(x_{t-1} | x_t)), t >= 1  Gaussians, eq. 6-7
    L_0     = -log p(x_0 | x_1)                                     the discretized decoder, sec. 3.3

The model's p(x_{t-1} | x_t) is the posterior q(. | x_t, x0_hat) at the model's x0_hat, with the
model's learned variance (Nichol & Dhariwal 2021) or a fixed one: beta tilde_t ("fixed_small",
the posterior variance) or beta_t ("fixed_large"), log-variances clipped at t = 0 as
improved-diffusion does. The terms are in `ddpm_lightning/vlb.py`. The decoder L_0 is a Gaussian
integrated over the 256 bins of an 8-bit pixel on [-1, 1] (improved-diffusion's
`discretized_gaussian_log_likelihood`, with the exact normal CDF instead of its tanh
approximation), so the data is rounded to 8 bits first: bits/dim is a property of 8-bit images.
Each term is a one-sample Monte Carlo estimate over x_t ~ q(x_t | x_0) (one noise draw per image
and timestep, seeded); the result is the mean over the data of the summed terms, divided by
ln 2 and by the number of dimensions C * H * W. This is what improved-diffusion's
`calc_bpd_loop` / `scripts/image_nll.py` report.

Evaluating all T terms costs T network evaluations per image. `num_timesteps=K < T` gives an
*estimate* instead, with K evaluations per image: the decoder term, plus the KL terms of K - 1
equal blocks of timesteps 1..T-1, each at one timestep drawn uniformly within its block (per
image) and weighted by the block's length. That is stratified Monte Carlo over t: unbiased for
the full sum, its extra variance shows in `bpd_stderr`, and the result says `exact: False`. (A
fixed midpoint per block would be biased low: the terms fall steeply over the first timesteps.)

    from ddpm_lightning.likelihood import bits_per_dim
    result = bits_per_dim(module, datamodule.val_dataloader(), num_timesteps=None)
    result["bpd"], result["prior_bpd"], result["vb_bpd"]
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from ddpm_lightning.process import DiffusionProcess
from ddpm_lightning.variance import FIXED_VARIANCES as VARIANCES
from ddpm_lightning.vlb import (  # noqa: F401  (the closed forms, importable from here as before)
    discretized_gaussian_log_likelihood,
    normal_kl,
    prior_bpd,
    quantize_8bit,
    vb_term_bpd,
)


def timestep_blocks(T: int, num_timesteps: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(starts (K,), stops (K,)): the blocks of timesteps [start, stop) whose terms are evaluated.

    None or K >= T: every timestep is its own block (the exact bound). Otherwise [0, 1) (the
    decoder) and K - 1 blocks of nearly equal length covering 1..T-1; the lengths sum to T."""
    if num_timesteps is None or num_timesteps >= T:
        return torch.arange(T), torch.arange(1, T + 1)
    if isinstance(num_timesteps, bool) or not isinstance(num_timesteps, int) or num_timesteps < 2:
        raise ValueError(
            f"num_timesteps must be an integer >= 2 (the decoder term and at least one KL term) or None, "
            f"got {num_timesteps!r}"
        )
    # K points from 1 to T: floor keeps them strictly increasing (steps of >= 1)
    edges = torch.floor(torch.linspace(1, T, num_timesteps, dtype=torch.float64)).long()
    starts = torch.cat([torch.zeros(1, dtype=torch.long), edges[:-1]])
    stops = torch.cat([torch.ones(1, dtype=torch.long), edges[1:]])
    return starts, stops


def _batches(data: torch.Tensor | Iterable, batch_size: int) -> Iterable[torch.Tensor]:
    if isinstance(data, torch.Tensor):
        yield from data.split(batch_size)
        return
    for batch in data:
        yield batch[0] if isinstance(batch, (tuple, list)) else batch


def _num_batches(data: Any, batch_size: int, max_images: int | None) -> int | None:
    if isinstance(data, torch.Tensor):
        n = len(data) if max_images is None else min(len(data), max_images)
        return math.ceil(n / batch_size)
    try:
        n = len(data)
    except TypeError:
        return None
    bs = getattr(data, "batch_size", None)
    if max_images is not None and bs:
        n = min(n, math.ceil(max_images / bs))
    return n


@torch.inference_mode()
def bits_per_dim(
    module: nn.Module,
    data: torch.Tensor | Iterable,
    num_timesteps: int | None = None,
    batch_size: int = 64,
    max_images: int | None = None,
    variance: str = "fixed_small",
    clip_denoised: bool = False,
    quantize: bool = True,
    seed: int = 0,
    progress: bool = True,
) -> dict[str, Any]:
    """The variational bound of `module` on `data`, in bits/dim (see the module docstring).

    Args:
        module: a DiffusionModule or a `Denoiser`. Evaluated in eval mode; use the EMA
            weights (a checkpoint's `state_dict` already holds them).
        data: images (N, C, H, W) in [-1, 1], or an iterable of such batches (a DataLoader;
            (images, labels) batches are fine).
        num_timesteps: None: all T terms (exact bound); K < T: an estimate from K terms.
        batch_size: batch size when `data` is a tensor.
        max_images: stop after this many images.
        variance: the fixed variance, "fixed_small" or "fixed_large", of a model that does not
            learn its own (a learned variance is used when the model has one).
        clip_denoised: clamp x0_hat to [-1, 1] before the posterior mean. Off by default: the
            bound is then the one of the model as it is. improved-diffusion's `image_nll.py`
            clips for epsilon / x0 models but never changes a mu (PREVIOUS_X) model's mean,
            so with clipping on, mu models' numbers differ from theirs.
        quantize: round the data to 8 bits first (the discretized decoder assumes it).
        seed: seed of the noise of the Monte Carlo terms.

    Returns a dict: `bpd` (the bound), `prior_bpd` (L_T), `vb_bpd` (bpd - prior_bpd),
    `decoder_bpd` (L_0), `kl_bpd` (the sum of the L_{t-1}), `bpd_stderr` (standard error of
    `bpd` over the images, including the timestep sampling), `num_images`, `num_dims`, `exact`,
    `num_timesteps` (T), `timesteps` (the blocks [start, stop)) and `terms_bpd` (the mean term
    of each block), `variance`.
    """
    if variance not in VARIANCES:
        raise ValueError(f"unknown variance {variance!r}; choose one of {list(VARIANCES)}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    if max_images is not None and (isinstance(max_images, bool) or not isinstance(max_images, int) or max_images < 1):
        raise ValueError(f"max_images must be a positive integer or None, got {max_images!r}")
    denoiser = getattr(module, "denoiser", module)
    process: DiffusionProcess = denoiser.process
    learned = getattr(denoiser, "variance", "fixed")  # a learned variance replaces `variance`
    T = process.num_timesteps
    starts, stops = timestep_blocks(T, num_timesteps)
    param = next(module.parameters(), None)
    device = param.device if param is not None else process.betas.device
    g = torch.Generator().manual_seed(seed)

    term_sums = torch.zeros(len(starts), dtype=torch.float64)
    prior_sum = total_sum = total_sq = 0.0
    n = 0
    num_dims = None
    total = _num_batches(data, batch_size, max_images)
    bar = tqdm(total=total * len(starts) if total else None, desc="bits/dim", disable=not progress, unit="evals")
    was_training = module.training
    module.eval()
    try:
        for x0 in _batches(data, batch_size):
            if max_images is not None and n >= max_images:
                break
            if max_images is not None:
                x0 = x0[: max_images - n]
            if not isinstance(x0, torch.Tensor) or x0.ndim != 4 or not x0.is_floating_point():
                shape = tuple(x0.shape) if isinstance(x0, torch.Tensor) else type(x0).__name__
                raise ValueError(
                    "bits/dim uses a decoder over 8-bit pixels: it needs float images (B, C, H, W) in "
                    f"[-1, 1], got {shape}; for 2-D points a per-dimension likelihood of discrete "
                    "pixels does not exist"
                )
            x0 = x0.to(device=device, dtype=torch.float32)
            if quantize:
                x0 = quantize_8bit(x0)
            num_dims = int(x0[0].numel())
            b = x0.shape[0]
            totals = prior_bpd(process, x0).double()  # (B,)
            prior_sum += float(totals.sum())
            for k, (start, stop) in enumerate(zip(starts.tolist(), stops.tolist())):
                # one timestep per image, uniform in the block (the block's only one when exact)
                t_batch = start + torch.randint(stop - start, (b,), generator=g)
                noise = torch.randn(x0.shape, generator=g)
                term = vb_term_bpd(module, x0, t_batch.to(device), noise=noise.to(device),
                                   variance=variance, clip_denoised=clip_denoised)
                term_sums[k] += float(term.double().sum())
                totals = totals + (stop - start) * term.double()
                bar.update(1)
            total_sum += float(totals.sum())
            total_sq += float((totals**2).sum())
            n += b
    finally:
        bar.close()
        module.train(was_training)
    if n == 0:
        raise ValueError("no images given: cannot compute bits/dim of an empty set")

    terms = term_sums / n  # mean term of each block
    mean = total_sum / n
    var = max(total_sq / n - mean**2, 0.0) * n / max(n - 1, 1)
    prior = prior_sum / n
    decoder = float(terms[0])  # the first block is always t = 0
    kl = float((terms[1:] * (stops - starts)[1:].double()).sum())
    return {
        "bpd": mean,
        "prior_bpd": prior,
        "vb_bpd": mean - prior,
        "decoder_bpd": decoder,
        "kl_bpd": kl,
        "bpd_stderr": math.sqrt(var / n),
        "num_images": n,
        "num_dims": num_dims,
        "exact": len(starts) == T,
        "num_timesteps": T,
        "timesteps": [[a, b] for a, b in zip(starts.tolist(), stops.tolist())],
        "terms_bpd": terms.tolist(),
        "variance": variance if learned == "fixed" else learned,
    }
