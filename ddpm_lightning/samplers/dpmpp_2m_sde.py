"""DPM-Solver++(2M) SDE in sigma space (Lu et al. 2022, "DPM-Solver++: Fast Solver for Guided
Sampling of Diffusion Probabilistic Models", arXiv:2211.01095, sec. 5 and App. B; k-diffusion's
sample_dpmpp_2m_sde, diffusers' DPMSolverMultistepScheduler(algorithm_type="sde-dpmsolver++")).

In the variance-exploding view (alpha = 1) the half log-SNR is lambda = -log sigma and
h = lambda_{i+1} - lambda_i. The first-order step of the SDE with the data prediction is

    x_{i+1} = sigma_{i+1} / sigma_i e^{-eta h} x_i + (1 - e^{-(1 + eta) h}) x0_hat_i
              + sigma_{i+1} sqrt(1 - e^{-2 eta h}) z,        z ~ N(0, I),

(eta = 1 is the SDE of Lu et al.'s eq. (B.7), eta = 0 the ODE, i.e. DPM-Solver++(2M)); the
second-order multistep correction adds c (1 / r) (x0_hat_i - x0_hat_{i-1}), r = h_{i-1} / h_i,
with c = (1 - e^{-H}) / 2 (`midpoint`, diffusers' default) or c = 1 - (1 - e^{-H}) / H
(`heun`), H = (1 + eta) h, as k-diffusion writes them.
The step to sigma = 0 returns x0_hat. The noise z is Gaussian from the loop's generator
(diffusers' choice; k-diffusion defaults to a Brownian tree, which needs torchsde).
"""

from __future__ import annotations

import math

from ddpm_lightning.process import DiffusionProcess
from ddpm_lightning.samplers.sigmas import SigmaSampler

SOLVER_TYPES = ("midpoint", "heun")


class DPMSolverSDESampler(SigmaSampler):
    """Stochastic multistep DPM-Solver++(2M); one network call per step.

    Args:
        eta: 1 (the SDE) .. 0 (the ODE, DPM-Solver++(2M)).
        s_noise: scale of the added noise.
        solver_type: the second-order correction, `midpoint` or `heun` (k-diffusion's names).
        sigmas (default karras: "DPM++ 2M SDE Karras"), rho, sigma_min, ...: see `SigmaSampler`.
    """

    name = "dpmpp_2m_sde"

    def __init__(
        self,
        process: DiffusionProcess,
        eta: float = 1.0,
        s_noise: float = 1.0,
        solver_type: str = "midpoint",
        **kwargs,
    ) -> None:
        if solver_type not in SOLVER_TYPES:
            raise ValueError(f"unknown DPM++ 2M SDE solver_type {solver_type!r}; choose one of {list(SOLVER_TYPES)}")
        if not eta >= 0:
            raise ValueError(f"eta must be >= 0 (1: the SDE, 0: the ODE), got eta={eta!r}")
        if not s_noise >= 0:
            raise ValueError(f"s_noise must be >= 0 (1: no inflation), got s_noise={s_noise!r}")
        super().__init__(process, **kwargs)
        self.eta, self.s_noise, self.solver_type = float(eta), float(s_noise), solver_type
        self._last = None  # (step index, x0_hat, h) of the previous step

    def reset(self) -> None:
        self._last = None

    def sigma_step(self, D, x, i, generator):
        sigma, sigma_next = self.step_sigmas[i], self.step_sigmas[i + 1]
        x0 = D(x, sigma)
        last, self._last = self._last, None
        if sigma_next == 0:
            return x0, x0  # lambda = +inf: the exact solution's limit is x0_hat
        h = math.log(sigma) - math.log(sigma_next)  # lambda_{i+1} - lambda_i, lambda = -log sigma
        eta_h = self.eta * h
        # 1. first order, eq. (B.7) of Lu et al. 2022 with alpha = 1
        c_x0 = -math.expm1(-h - eta_h)  # 1 - e^{-(1 + eta) h}
        x_next = (sigma_next / sigma) * math.exp(-eta_h) * x + c_x0 * x0
        # 2. multistep correction from the previous x0_hat (when the previous step was step i - 1)
        if last is not None and last[0] == i - 1:
            r = last[2] / h
            if self.solver_type == "midpoint":
                x_next = x_next + 0.5 * c_x0 * (1 / r) * (x0 - last[1])
            else:  # heun: c = 1 - (1 - e^{-H}) / H, H = (1 + eta) h
                x_next = x_next + (c_x0 / (-h - eta_h) + 1) * (1 / r) * (x0 - last[1])
        # 3. the SDE's fresh noise: std sigma_{i+1} sqrt(1 - e^{-2 eta h})
        if self.eta > 0:
            x_next = x_next + self.noise(x, generator) * sigma_next * math.sqrt(-math.expm1(-2 * eta_h)) * self.s_noise
        self._last = (i, x0, h)
        return x_next, x0
