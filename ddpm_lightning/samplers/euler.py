"""Euler's method for the probability-flow ODE in sigma space: Karras et al. 2022 ("Elucidating
the Design Space of Diffusion-Based Generative Models"), Algorithm 1 with first-order steps,
and with `s_churn > 0` the stochastic sampler of their Algorithm 2 (k-diffusion's sample_euler,
diffusers' EulerDiscreteScheduler).

With sigma(t) = t and s(t) = 1 the ODE is dx/dsigma = (x - D(x; sigma)) / sigma (eq. 1 and
Algorithm 1 line 4), and one Euler step is x_{i+1} = x_i + (sigma_{i+1} - sigma_i) d_i.
"""

from __future__ import annotations

from ddpm_lightning.process import DiffusionProcess
from ddpm_lightning.samplers.sigmas import ChurnMixin, SigmaSampler


class EulerSampler(ChurnMixin, SigmaSampler):
    """First-order ODE steps in sigma space; one network call per step.

    Args:
        s_churn, s_tmin, s_tmax, s_noise: Algorithm 2's churn (0 = deterministic; s_tmax None = inf).
        sigmas, rho, sigma_min, sigma_max, spacing, clip_denoised, ...: see `SigmaSampler`.
    """

    name = "euler"

    def __init__(
        self,
        process: DiffusionProcess,
        s_churn: float = 0.0,
        s_tmin: float = 0.0,
        s_tmax: float | None = None,
        s_noise: float = 1.0,
        **kwargs,
    ) -> None:
        super().__init__(process, **kwargs)
        self.init_churn(s_churn, s_tmin, s_tmax, s_noise)

    def derivative(self, D, x, sigma):
        """(x0_hat, d): d = (x - D(x; sigma)) / sigma, Algorithm 1 line 4."""
        x0 = D(x, sigma)
        return x0, (x - x0) / sigma

    def sigma_step(self, D, x, i, generator):
        x_hat, sigma_hat = self.churn(x, i, generator)  # Algorithm 2 lines 4-6 (no-op without churn)
        x0, d = self.derivative(D, x_hat, sigma_hat)
        # Algorithm 1 line 5: x_{i+1} = x_hat + (sigma_{i+1} - sigma_hat) d_i
        return x_hat + (self.step_sigmas[i + 1] - sigma_hat) * d, x0
