"""DDPM ancestral sampling (Ho et al. 2020, Algorithm 2), with respacing to fewer steps
(Nichol & Dhariwal 2021, sec. 4)."""

from __future__ import annotations

import torch

from ddpm_lightning.parameterizations import Prediction
from ddpm_lightning.process import DiffusionProcess, randn
from ddpm_lightning.samplers.base import Sampler, StepOutput
from ddpm_lightning.variance import interpolate_log_var

VARIANCES = ("fixed_small", "fixed_large")


class DDPMSampler(Sampler):
    """x_{t_prev} = mu tilde(x_t, x0_hat) + sigma_t z, z ~ N(0, I), no noise at the last step.

    With n < T steps the process is respaced: beta_t := 1 - abar_t / abar_{t_prev} for
    consecutive chosen timesteps (Nichol & Dhariwal 2021, sec. 4), which gives Algorithm 2
    exactly when n = T.

    Args:
        variance: `fixed_small` (sigma^2 = beta tilde_t, DDPM eq. 7) or `fixed_large`
            (sigma^2 = beta_t); Ho et al. sec. 3.2 found both work equally well. A model that
            learns its variance (`Prediction.log_var`) overrides it (`step_std`).
        spacing: which n of the T timesteps a respaced run visits. The default `linspace`
            is Nichol & Dhariwal's `space_timesteps(T, [n])` (evenly strided, both ends, so the
            first step is t = T - 1); `leading` is diffusers' DDPMScheduler default
            (0, T//n, ..., never t = T - 1). With n = T all spacings coincide.
        clip_mean: with clipping on (`clip_denoised` / `dynamic_threshold`), build the
            posterior mean from the clipped x0_hat (True, the default: what Ho et al.'s code does
            for epsilon models, and the same rule for every parameterization) or from the
            unclipped one (False: the clipped x0_hat is then only reported). For a mu model with
            n = T steps, False makes the mean the network's own output, as improved-diffusion's
            `p_mean_variance` does for PREVIOUS_X.
        clip_denoised, ...: see `Sampler`.
    """

    name = "ddpm"

    def __init__(
        self, process: DiffusionProcess, variance: str = "fixed_small", spacing: str = "linspace", clip_mean: bool = True, **kwargs
    ) -> None:
        if variance not in VARIANCES:
            raise ValueError(f"unknown DDPM variance {variance!r}; choose one of {list(VARIANCES)}")
        super().__init__(process, spacing=spacing, **kwargs)
        self.variance = variance
        self.clip_mean = bool(clip_mean)

    def coefficients(self, abar_t, abar_prev):
        alpha = abar_t / abar_prev  # respaced alpha_t
        beta = 1 - alpha
        # 1. posterior mean coefficients, DDPM eq. 7 with the respaced beta
        coef_x0 = abar_prev.sqrt() * beta / (1 - abar_t)
        coef_xt = alpha.sqrt() * (1 - abar_prev) / (1 - abar_t)
        # 2. variance: beta tilde (eq. 7) or beta; diffusers clamps beta tilde at 1e-20
        var_small = (1 - abar_prev) / (1 - abar_t) * beta
        var = var_small.clamp(min=1e-20) if self.variance == "fixed_small" else beta
        # 3. the two ends of a learned_range variance for the respaced steps (Nichol & Dhariwal
        #    eq. 15 with the respaced betas, as improved-diffusion's respace.py): log beta and
        #    log beta tilde, clipped at the last step (beta tilde = 0 there) to the step before
        log_small = var_small.clamp(min=1e-20).log()
        if len(log_small) > 1:
            log_small[-1] = log_small[-2]
        return {"x0": coef_x0, "xt": coef_xt, "std": var.sqrt(), "log_beta": beta.log(), "log_small": log_small}

    def step_std(self, t: int, pred: Prediction) -> torch.Tensor:
        """sigma_t of the step: the model's learned variance when it has one (LEARNED_RANGE
        re-interpolated between this step's own beta and beta tilde; LEARNED as it is), else the
        fixed `variance`."""
        if pred.var_frac is not None:
            log_var = interpolate_log_var(pred.var_frac, self.coef("log_small", t), self.coef("log_beta", t))
            return torch.exp(0.5 * log_var)
        if pred.log_var is not None:
            return torch.exp(0.5 * pred.log_var)
        return self.coef("std", t)

    def step(self, x_t, t, pred: Prediction, generator=None, noise=None) -> StepOutput:
        clipped = self.denoise(x_t, t, pred)
        mean_x0 = clipped.x0 if self.clip_mean else pred.x0
        # 3. x_{t-1} = mu tilde + sigma z (Algorithm 2, line 4); z = 0 at the last step
        x_prev = self.coef("x0", t) * mean_x0 + self.coef("xt", t) * x_t
        if self.prev_timestep(t) >= 0:
            if noise is None:
                noise = randn(x_t.shape, generator, x_t.device, x_t.dtype)
            x_prev = x_prev + self.step_std(t, pred) * noise
        return StepOutput(x_prev, clipped.x0)
