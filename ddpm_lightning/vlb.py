"""The terms of the variational bound (Ho et al. 2020, eq. 5), in closed form, in bits/dim.

    L_T     = KL(q(x_T | x_0) || N(0, I))                          the prior term, no network
    L_{t-1} = KL(q(x_{t-1} | x_t, x_0) || p(x_{t-1} | x_t)), t >= 1  Gaussians, eq. 6-7
    L_0     = -log p(x_0 | x_1)                                     the discretized decoder, sec. 3.3

with 0-based timesteps (index t is the paper's step t + 1). p(x_{t-1} | x_t) has the mean
q(. | x_t, x0_hat) at the model's x0_hat and the model's variance: learned
(`Prediction.log_var`) or fixed (beta tilde or beta). Used by bits/dim (`likelihood.py`) and by
the hybrid and vlb training losses of Nichol & Dhariwal 2021 (`losses.py`).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ddpm_lightning.parameterizations import Prediction
from ddpm_lightning.process import DiffusionProcess, extract
from ddpm_lightning.variance import fixed_log_variance

LOG2 = math.log(2.0)
CDFS = ("exact", "tanh")


def normal_kl(mean1, logvar1, mean2, logvar2) -> torch.Tensor:
    """KL(N(mean1, exp(logvar1)) || N(mean2, exp(logvar2))) elementwise, in nats (broadcasts)."""
    mean1, logvar1, mean2, logvar2 = (torch.as_tensor(v) for v in (mean1, logvar1, mean2, logvar2))
    return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


def _tanh_normal_cdf(x: torch.Tensor) -> torch.Tensor:
    # the tanh approximation of the standard normal CDF that Ho et al.'s and improved-diffusion's
    # code use (0.5 (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))); off from the exact CDF by ~1e-4
    return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


def discretized_gaussian_log_likelihood(
    x: torch.Tensor, means: torch.Tensor, log_scales: torch.Tensor, cdf: str = "exact"
) -> torch.Tensor:
    """log P(x) elementwise (nats) for x on the 256 levels of [-1, 1] under a Gaussian of mean
    `means` and log standard deviation `log_scales`, integrated over each level's bin of width
    2/255; the edge bins extend to -inf and +inf, so the probabilities of the 256 levels sum to 1
    (improved-diffusion's `discretized_gaussian_log_likelihood`, DDPM sec. 3.3).

    cdf: "exact" (the normal CDF, log_ndtr in the tails) or "tanh" (the approximation of Ho et
    al.'s and improved-diffusion's code, to reproduce their numbers digit for digit)."""
    if x.shape != means.shape:
        raise ValueError(f"x and means must have the same shape, got {tuple(x.shape)} and {tuple(means.shape)}")
    if cdf not in CDFS:
        raise ValueError(f"unknown cdf {cdf!r}; choose one of {list(CDFS)}")
    centred = x - means
    inv_std = torch.exp(-log_scales)
    upper = inv_std * (centred + 1.0 / 255.0)  # standardised bin edges
    lower = inv_std * (centred - 1.0 / 255.0)
    if cdf == "tanh":
        cdf_upper, cdf_lower = _tanh_normal_cdf(upper), _tanh_normal_cdf(lower)
        log_cdf_upper = torch.log(cdf_upper.clamp(min=1e-12))
        log_sf_lower = torch.log((1.0 - cdf_lower).clamp(min=1e-12))
    else:
        cdf_upper, cdf_lower = torch.special.ndtr(upper), torch.special.ndtr(lower)
        log_cdf_upper = torch.special.log_ndtr(upper)  # log P(X <= upper edge): the lowest bin
        log_sf_lower = torch.special.log_ndtr(-lower)  # log P(X > lower edge): the highest bin
    log_delta = torch.log((cdf_upper - cdf_lower).clamp(min=1e-12))
    return torch.where(x < -0.999, log_cdf_upper, torch.where(x > 0.999, log_sf_lower, log_delta))


def quantize_8bit(x: torch.Tensor) -> torch.Tensor:
    """[-1, 1] data rounded to the nearest of the 256 levels -1 + 2k/255 (as a PNG stores it)."""
    return ((x.clamp(-1.0, 1.0) + 1.0) * 127.5).round() / 127.5 - 1.0


def mean_flat(x: torch.Tensor) -> torch.Tensor:
    return x.flatten(1).mean(1)  # (B, ...) -> (B,)


def prior_bpd(process: DiffusionProcess, x0: torch.Tensor) -> torch.Tensor:
    """L_T = KL(q(x_T | x_0) || N(0, I)) in bits/dim, per example (B,)."""
    t = torch.full((x0.shape[0],), process.num_timesteps - 1, device=x0.device, dtype=torch.long)
    mean = extract(process.sqrt_alphas_cumprod, t, x0.shape) * x0
    log_var = extract(process.log_one_minus_alphas_cumprod, t, x0.shape)
    kl = normal_kl(mean, log_var, torch.zeros_like(mean), torch.zeros_like(mean))
    return mean_flat(kl) / LOG2


def vb_terms_from_prediction(
    process: DiffusionProcess,
    x0: torch.Tensor,
    x_t: torch.Tensor,
    t: torch.Tensor,
    pred: Prediction,
    variance: str = "fixed_small",
    clip_denoised: bool = False,
    cdf: str = "exact",
) -> torch.Tensor:
    """The bound's term at timesteps t (B,) in bits/dim, per example: the decoder NLL L_0 where
    t == 0, the KL L_{t-1} elsewhere, for the model's prediction at (x_t, t). The model's
    variance is `pred.log_var` when it has one, else the fixed `variance`."""
    # 1. p(x_{t-1} | x_t) = q(x_{t-1} | x_t, x0_hat) with the model's variance
    x0_hat = pred.x0.clamp(-1.0, 1.0) if clip_denoised else pred.x0
    model_mean, _, _ = process.q_posterior(x0_hat, x_t, t)
    model_log_var = pred.log_var if pred.log_var is not None else fixed_log_variance(process, t, x_t.shape, variance)
    # 2. L_{t-1}: KL between the true posterior (DDPM eq. 6-7) and the model, eq. 5
    true_mean, _, true_log_var = process.q_posterior(x0, x_t, t)
    kl = mean_flat(normal_kl(true_mean, true_log_var, model_mean, model_log_var)) / LOG2
    # 3. L_0: -log p(x_0 | x_1) under the discretized Gaussian decoder (sec. 3.3)
    log_p = discretized_gaussian_log_likelihood(x0, model_mean, 0.5 * model_log_var.expand_as(x0), cdf=cdf)
    decoder_nll = -mean_flat(log_p) / LOG2
    return torch.where(t == 0, decoder_nll, kl)


def vb_term_bpd(
    module: nn.Module,
    x0: torch.Tensor,
    t: torch.Tensor,
    noise: torch.Tensor | None = None,
    variance: str = "fixed_small",
    clip_denoised: bool = False,
) -> torch.Tensor:
    """`vb_terms_from_prediction` for a model at x_t ~ q(x_t | x_0): `module` is a
    DiffusionModule (its `denoiser`) or a `Denoiser` itself."""
    denoiser = getattr(module, "denoiser", module)
    process: DiffusionProcess = denoiser.process
    x_t, _ = process.q_sample(x0, t, noise=noise)
    return vb_terms_from_prediction(process, x0, x_t, t, denoiser(x_t, t), variance, clip_denoised)
