"""DDIM (Song et al. 2021): the non-Markovian sampler of eq. 12, with eta interpolating between
deterministic DDIM (eta = 0) and DDPM-like ancestral sampling (eta = 1)."""

from __future__ import annotations

import torch

from ddpm_lightning.parameterizations import Prediction
from ddpm_lightning.process import DiffusionProcess, randn
from ddpm_lightning.samplers.base import Sampler, StepOutput


class DDIMSampler(Sampler):
    """x_{t_prev} = sqrt(abar_prev) x0_hat + sqrt(1 - abar_prev - sigma^2) eps_hat + sigma z.

    The previous timestep is the next one in `timesteps` (-1 after the last, where
    abar_prev = 1 as with diffusers' `set_alpha_to_one=True`). diffusers instead uses
    t - T // n, which is the same for `leading`, and for `trailing` when n divides T, but not
    for `linspace`, whose timesteps are not evenly T // n apart.
    """

    name = "ddim"

    def __init__(self, process: DiffusionProcess, eta: float = 0.0, spacing: str = "trailing", **kwargs) -> None:
        if not eta >= 0:
            raise ValueError(f"DDIM eta must be >= 0, got {eta!r}")
        super().__init__(process, spacing=spacing, **kwargs)
        self.eta = float(eta)

    def coefficients(self, abar_t, abar_prev):
        # 1. sigma_t(eta), eq. 16
        sigma = self.eta * ((1 - abar_prev) / (1 - abar_t) * (1 - abar_t / abar_prev)).sqrt()
        return {
            "x0": abar_prev.sqrt(),
            # 2. "direction pointing to x_t", eq. 12 (clamped: eta > 1 can make it negative)
            "eps": (1 - abar_prev - sigma**2).clamp(min=0).sqrt(),
            "std": sigma,
        }

    def step(self, x_t, t, pred: Prediction, generator=None, noise=None) -> StepOutput:
        pred = self.denoise(x_t, t, pred)
        # 3. x_{t-1}, eq. 12: predicted x_0 + direction to x_t + random noise
        x_prev = self.coef("x0", t) * pred.x0 + self.coef("eps", t) * pred.eps
        if self.eta > 0 and self.prev_timestep(t) >= 0:
            if noise is None:
                noise = randn(x_t.shape, generator, x_t.device, x_t.dtype)
            x_prev = x_prev + self.coef("std", t) * noise
        return StepOutput(x_prev, pred.x0)
