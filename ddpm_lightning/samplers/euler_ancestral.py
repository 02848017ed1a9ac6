"""Euler ancestral sampling in sigma space (k-diffusion's sample_euler_ancestral, diffusers'
EulerAncestralDiscreteScheduler): an Euler step of the ODE down to sigma_down, then fresh noise
of std sigma_up, with sigma_down^2 + sigma_up^2 = sigma_{i+1}^2 so the marginal noise level is
right.

The split (k-diffusion's get_ancestral_step) is the DDPM ancestral step's (Ho et al. 2020 eq.
6-7) in sigma space: sigma_up = min(sigma_{i+1}, eta sqrt(sigma_{i+1}^2 (sigma_i^2 -
sigma_{i+1}^2) / sigma_i^2)), sigma_down = sqrt(sigma_{i+1}^2 - sigma_up^2); eta = 0 is Euler.
"""

from __future__ import annotations

import math

from ddpm_lightning.process import DiffusionProcess
from ddpm_lightning.samplers.sigmas import SigmaSampler


def ancestral_step(sigma: float, sigma_next: float, eta: float = 1.0) -> tuple[float, float]:
    """(sigma_down, sigma_up) of a step from sigma to sigma_next (k-diffusion get_ancestral_step)."""
    if sigma_next == 0 or eta == 0:
        return sigma_next, 0.0
    up = min(sigma_next, eta * math.sqrt(sigma_next**2 * (sigma**2 - sigma_next**2) / sigma**2))
    return math.sqrt(sigma_next**2 - up**2), up


class EulerAncestralSampler(SigmaSampler):
    """Stochastic first-order steps; one network call per step.

    Args:
        eta: the fraction of the ancestral noise (1: k-diffusion's and diffusers' default).
        s_noise: scale of the added noise (Karras et al.'s S_noise).
        sigmas, rho, sigma_min, sigma_max, spacing, clip_denoised, ...: see `SigmaSampler`.
    """

    name = "euler_ancestral"

    def __init__(self, process: DiffusionProcess, eta: float = 1.0, s_noise: float = 1.0, **kwargs) -> None:
        if not eta >= 0:
            raise ValueError(f"eta must be >= 0 (0: Euler, 1: ancestral), got eta={eta!r}")
        if not s_noise >= 0:
            raise ValueError(f"s_noise must be >= 0 (1: no inflation), got s_noise={s_noise!r}")
        super().__init__(process, **kwargs)
        self.eta, self.s_noise = float(eta), float(s_noise)

    def sigma_step(self, D, x, i, generator):
        sigma, sigma_next = self.step_sigmas[i], self.step_sigmas[i + 1]
        sigma_down, sigma_up = ancestral_step(sigma, sigma_next, self.eta)
        x0 = D(x, sigma)
        d = (x - x0) / sigma  # the ODE's slope, Karras et al. 2022 Algorithm 1 line 4
        x = x + (sigma_down - sigma) * d
        if sigma_up > 0:
            x = x + self.noise(x, generator) * self.s_noise * sigma_up
        return x, x0
