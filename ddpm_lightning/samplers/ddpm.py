"""DDPM ancestral sampling (Ho et al. 2020, Algorithm 2), with respacing to fewer steps
(Nichol & Dhariwal 2021, sec. 4)."""

from __future__ import annotations

import torch

from ddpm_lightning.parameterizations import Prediction
from ddpm_lightning.process import DiffusionProcess, randn
from ddpm_lightning.samplers.base import Sampler, StepOutput

VARIANCES = ("fixed_small", "fixed_large")


class DDPMSampler(Sampler):
    """x_{t_prev} = mu tilde(x_t, x0_hat) + sigma_t z, z ~ N(0, I), no noise at the last step.

    With n < T steps the process is respaced: beta_t := 1 - abar_t / abar_{t_prev} for
    consecutive chosen timesteps (Nichol & Dhariwal 2021, sec. 4), which gives Algorithm 2
    exactly when n = T.

    Args:
        variance: `fixed_small` (sigma^2 = beta tilde_t, DDPM eq. 7) or `fixed_large`
            (sigma^2 = beta_t); Ho et al. sec. 3.2 found both work equally well.
        spacing, clip_denoised, ...: see `Sampler`. The default spacing is `leading`, as in
            diffusers' DDPMScheduler; with n = T all spacings coincide.
    """

    name = "ddpm"

    def __init__(self, process: DiffusionProcess, variance: str = "fixed_small", spacing: str = "leading", **kwargs) -> None:
        if variance not in VARIANCES:
            raise ValueError(f"unknown DDPM variance {variance!r}; choose one of {list(VARIANCES)}")
        super().__init__(process, spacing=spacing, **kwargs)
        self.variance = variance

    def coefficients(self, abar_t, abar_prev):
        alpha = abar_t / abar_prev  # respaced alpha_t
        beta = 1 - alpha
        # 1. posterior mean coefficients, DDPM eq. 7 with the respaced beta
        coef_x0 = abar_prev.sqrt() * beta / (1 - abar_t)
        coef_xt = alpha.sqrt() * (1 - abar_prev) / (1 - abar_t)
        # 2. variance: beta tilde (eq. 7) or beta; diffusers clamps beta tilde at 1e-20
        if self.variance == "fixed_small":
            var = ((1 - abar_prev) / (1 - abar_t) * beta).clamp(min=1e-20)
        else:
            var = beta
        return {"x0": coef_x0, "xt": coef_xt, "std": var.sqrt()}

    def step(self, x_t, t, pred: Prediction, generator=None, noise=None) -> StepOutput:
        pred = self.denoise(x_t, t, pred)
        # 3. x_{t-1} = mu tilde + sigma z (Algorithm 2, line 4); z = 0 at the last step
        x_prev = self.coef("x0", t) * pred.x0 + self.coef("xt", t) * x_t
        if self.prev_timestep(t) >= 0:
            if noise is None:
                noise = randn(x_t.shape, generator, x_t.device, x_t.dtype)
            x_prev = x_prev + self.coef("std", t) * noise
        return StepOutput(x_prev, pred.x0)
