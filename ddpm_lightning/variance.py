"""The reverse-process variance Sigma_t of p(x_{t-1} | x_t): fixed, or learned by the network
(Nichol & Dhariwal 2021, "Improved Denoising Diffusion Probabilistic Models", sec. 3.1).

* `fixed`: the network predicts only the mean; the sampler (DDPM's `variance` option) or bits/dim
  picks beta tilde_t (`fixed_small`, DDPM eq. 7) or beta_t (`fixed_large`);
* `learned`: the network outputs 2C channels, the second C being log Sigma_t itself
  (improved-diffusion's LEARNED);
* `learned_range`: the second C channels are v in [-1, 1] (by convention, not enforced) and
  log Sigma_t = f log beta_t + (1 - f) log beta tilde_t with f = (v + 1) / 2, their eq. 15
  (improved-diffusion's LEARNED_RANGE). The fraction f is kept in `Prediction.var_frac`, so a
  respaced sampler can interpolate between the respaced beta and beta tilde instead, as
  improved-diffusion's `respace.py` does.

The log-variances are clipped at t = 0 as the process stores them (beta tilde_0 = 0 would give
log 0): improved-diffusion's `posterior_log_variance_clipped`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ddpm_lightning.process import DiffusionProcess

VARIANCES = ("fixed", "learned", "learned_range")
FIXED_VARIANCES = ("fixed_small", "fixed_large")


def check_variance(kind: str) -> str:
    if kind not in VARIANCES:
        raise ValueError(f"unknown variance {kind!r}; choose one of {list(VARIANCES)}")
    return kind


def output_channels_factor(kind: str) -> int:
    """How many times the data's channels the network outputs: 2 for a learned variance."""
    return 1 if check_variance(kind) == "fixed" else 2


def split_output(output: torch.Tensor, kind: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(mean part, variance part) of a network output (B, kC, ...), split on dim 1."""
    if kind == "fixed":
        return output, None
    mean, var = output.chunk(2, dim=1)
    return mean, var


def log_beta_range(process: DiffusionProcess, t: torch.Tensor, shape: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """(log beta tilde_t clipped, log beta_t) at t: the two ends of LEARNED_RANGE."""
    min_log = process.at("posterior_log_variance_clipped", t, shape)
    max_log = process.at("betas", t, shape).log()
    return min_log, max_log


def interpolate_log_var(frac: torch.Tensor, min_log: torch.Tensor, max_log: torch.Tensor) -> torch.Tensor:
    """log Sigma = f log beta + (1 - f) log beta tilde (Nichol & Dhariwal 2021, eq. 15)."""
    return frac * max_log + (1 - frac) * min_log


def learned_log_variance(
    process: DiffusionProcess, t: torch.Tensor, var_out: torch.Tensor, kind: str
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(log Sigma_t, f or None) from the variance part of the network output."""
    if kind == "learned":
        return var_out, None
    frac = (var_out + 1) / 2
    return interpolate_log_var(frac, *log_beta_range(process, t, var_out.shape)), frac


def fixed_log_variance(process: DiffusionProcess, t: torch.Tensor, shape: Sequence[int], variance: str = "fixed_small") -> torch.Tensor:
    """log of a fixed variance at timesteps t, shaped to broadcast against `shape`.

    fixed_small: log beta tilde_t (clipped to beta tilde_1 at t = 0, as the process stores it);
    fixed_large: log beta_t, with beta tilde_1 at t = 0 (improved-diffusion's choice, so the
    decoder's width is the same for both)."""
    if variance not in FIXED_VARIANCES:
        raise ValueError(f"unknown fixed variance {variance!r}; choose one of {list(FIXED_VARIANCES)}")
    if variance == "fixed_small":
        return process.at("posterior_log_variance_clipped", t, shape)
    log_var = torch.log(torch.cat([process.posterior_variance[1:2], process.betas[1:]]))
    return log_var[t].reshape(t.shape[0], *((1,) * (len(shape) - 1)))
