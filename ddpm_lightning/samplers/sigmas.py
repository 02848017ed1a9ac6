"""Sampling in sigma space: noise-level schedules (Karras, exponential, the trained schedule's
own) and `SigmaSampler`, the base of the samplers that step x = x_0 + sigma eps.

Karras et al. 2022 ("Elucidating the Design Space of Diffusion-Based Generative Models", EDM)
write a diffusion as x = s(t) (x_0 + sigma(t) eps) (their eq. 1-2). Our DDPM process is the case
s = sqrt(abar) = 1 / sqrt(1 + sigma^2) with sigma = sqrt((1 - abar) / abar), so the loop's state,
always the variance-preserving x_t of DDPM eq. 4, converts exactly:

    x = x_t * sqrt(1 + sigma^2)          (the variance-exploding view, s = 1)
    x_t = x / sqrt(1 + sigma^2)          (and x itself at sigma = 0, the data)

and the denoiser D(x; sigma) of EDM is our `Denoiser`'s x0_hat at the continuous timestep
`process.t_from_sigma(sigma)` (x0 and eps are the same in both views). A `SigmaSampler` converts
the state on entering and leaving each step, so the one loop of `ddpm_lightning.sampling`, its
img2img (`q_sample` at `timesteps[first]`) and its inpainting (`q_sample` at `prev_timesteps[i]`)
work unchanged with its float timesteps.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch

from ddpm_lightning.parameterizations import Prediction
from ddpm_lightning.process import DiffusionProcess, randn
from ddpm_lightning.samplers.base import Sampler, StepOutput, make_timesteps

SIGMA_SPACINGS = ("karras", "exponential", "schedule")
# a sigma_min / sigma_max this far outside the trained range is refused (the denoiser is only
# defined there); the slack admits diffusers' float32 sigmas of the same schedule
RANGE_SLACK = 1e-3

DenoiseFn = Callable[[torch.Tensor, torch.Tensor], Prediction]  # the loop's denoise(x_t, t)


def schedule_sigmas(process: DiffusionProcess) -> torch.Tensor:
    """sigma_t = sqrt((1 - abar_t) / abar_t) at the T training timesteps (float64, increasing)."""
    abar = process.alphas_cumprod_f64
    return ((1 - abar) / abar).sqrt()


def karras_sigmas(n: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> torch.Tensor:
    """Karras et al. 2022 eq. 5: sigma_i = (sigma_max^(1/rho) + i / (n - 1) (sigma_min^(1/rho)
    - sigma_max^(1/rho)))^rho, i = 0 .. n-1 (float64, descending; k-diffusion's get_sigmas_karras
    without the final 0)."""
    ramp = np.linspace(0, 1, n)  # numpy, as diffusers' _convert_to_karras
    max_inv, min_inv = sigma_max ** (1 / rho), sigma_min ** (1 / rho)
    return torch.from_numpy((max_inv + ramp * (min_inv - max_inv)) ** rho)


def exponential_sigmas(n: int, sigma_min: float, sigma_max: float) -> torch.Tensor:
    """n sigmas evenly spaced in log sigma from sigma_max to sigma_min (float64; k-diffusion's
    get_sigmas_exponential without the final 0)."""
    return torch.from_numpy(np.exp(np.linspace(math.log(sigma_max), math.log(sigma_min), n)))


def sigma_range(process: DiffusionProcess) -> tuple[float, float]:
    """(sigma(0), sigma(T - 1)): the range the network was trained on."""
    s = schedule_sigmas(process)
    return float(s[0]), float(s[-1])


def check_sigma_options(
    process: DiffusionProcess, sigmas: str, rho: float, sigma_min: float | None, sigma_max: float | None
) -> tuple[float, float]:
    """Validate the sigma options (one-line errors) and return the resolved (sigma_min, sigma_max)."""
    if sigmas not in SIGMA_SPACINGS:
        raise ValueError(f"unknown sigma spacing sigmas={sigmas!r}; choose one of {list(SIGMA_SPACINGS)}")
    if not rho > 0:
        raise ValueError(f"rho must be > 0 (Karras et al. use 7), got rho={rho!r}")
    lo, hi = sigma_range(process)
    if sigmas == "schedule" and (sigma_min is not None or sigma_max is not None):
        raise ValueError("sigma_min / sigma_max apply to sigmas='karras' or 'exponential', not to the schedule's own sigmas")
    s_min = lo if sigma_min is None else float(sigma_min)
    s_max = hi if sigma_max is None else float(sigma_max)
    if not 0 < s_min < s_max:
        raise ValueError(f"need 0 < sigma_min < sigma_max, got sigma_min={s_min!r}, sigma_max={s_max!r}")
    if s_min < lo * (1 - RANGE_SLACK) or s_max > hi * (1 + RANGE_SLACK):
        raise ValueError(
            f"sigma_min={s_min:.6g}, sigma_max={s_max:.6g} leave the trained schedule's range [{lo:.6g}, {hi:.6g}]"
        )
    return s_min, s_max


def make_sigmas(
    process: DiffusionProcess,
    num_steps: int,
    sigmas: str = "karras",
    rho: float = 7.0,
    sigma_min: float | None = None,
    sigma_max: float | None = None,
    spacing: str = "trailing",
) -> torch.Tensor:
    """The n + 1 noise levels of an n-step sampler, descending, float64, the last one 0.

    * karras: eq. 5 of Karras et al. 2022 between sigma_min and sigma_max (default: the trained
      schedule's range, sigma(0) .. sigma(T - 1), as diffusers with `use_karras_sigmas=True`);
    * exponential: evenly spaced in log sigma (diffusers' `use_exponential_sigmas=True`);
    * schedule: the schedule's own sigma at the `spacing`'s n integer timesteps (`make_timesteps`;
      diffusers' EulerDiscreteScheduler without Karras sigmas).
    """
    T = process.num_timesteps
    ts = make_timesteps(T, num_steps, spacing)  # also validates num_steps: an integer in [1, T]
    s_min, s_max = check_sigma_options(process, sigmas, rho, sigma_min, sigma_max)
    if sigmas == "karras":
        sig = karras_sigmas(num_steps, s_min, s_max, rho)
    elif sigmas == "exponential":
        sig = exponential_sigmas(num_steps, s_min, s_max)
    else:
        sig = schedule_sigmas(process)[ts]
    return torch.cat([sig.double(), sig.new_zeros(1, dtype=torch.float64)])


def vp_scale(sigma: float) -> float:
    """sqrt(1 + sigma^2) = 1 / sqrt(abar): x = x_t * vp_scale(sigma)."""
    return math.sqrt(1.0 + sigma * sigma)


class SigmaSampler(Sampler):
    """Base of the samplers of the variance-exploding view x = x_0 + sigma eps.

    Subclasses implement `sigma_step(D, x, i, generator) -> (x_next, x0_hat)`, with
    `D(x, sigma) -> x0_hat` the EDM denoiser and `self.step_sigmas[i]`, `self.step_sigmas[i + 1]`
    the levels of step i; the conversion from and to the loop's x_t happens here.

    Args:
        sigmas: the noise levels (`make_sigmas`): `karras` (default, EDM's), `exponential`, or
            `schedule` (the trained schedule's own, at `spacing`'s timesteps).
        rho: Karras et al.'s eq. 5 exponent (7 in the paper).
        sigma_min, sigma_max: the range of `karras` / `exponential` (default: the schedule's).
        spacing: timestep spacing of `sigmas=schedule` (`make_timesteps`).
        clip_denoised, dynamic_threshold, ...: as in `Sampler`, applied to x0_hat.
    """

    def __init__(
        self,
        process: DiffusionProcess,
        sigmas: str = "karras",
        rho: float = 7.0,
        sigma_min: float | None = None,
        sigma_max: float | None = None,
        spacing: str = "trailing",
        **kwargs,
    ) -> None:
        super().__init__(process, spacing=spacing, **kwargs)
        check_sigma_options(process, sigmas, rho, sigma_min, sigma_max)
        self.sigma_spacing = sigmas
        self.rho = float(rho)
        self.sigma_min, self.sigma_max = sigma_min, sigma_max
        self.step_sigmas: list[float] = []

    def set_timesteps(self, num_steps: int | None = None) -> torch.Tensor:
        """The n + 1 sigmas (last 0); the loop's timesteps are their continuous timesteps
        t_from_sigma (float), `prev_timesteps` the next ones and -1 (the data) after the last."""
        n = self.num_train_timesteps if num_steps is None else num_steps
        sig = make_sigmas(self.process, n, self.sigma_spacing, self.rho, self.sigma_min, self.sigma_max, self.spacing)
        self.step_sigmas = sig.tolist()
        ts = self.t_of(sig[:-1]).cpu()  # (n,) float32
        self.timesteps = ts
        self.prev_timesteps = torch.cat([ts[1:], ts.new_tensor([-1.0])])
        self.reset()
        return ts

    def reset(self) -> None:
        """Forget any multistep history (called by `set_timesteps`)."""

    def t_of(self, sigma: torch.Tensor | float) -> torch.Tensor:
        """The continuous timestep of noise level sigma (`DiffusionProcess.t_from_sigma`)."""
        s = torch.as_tensor(sigma, dtype=torch.float64).float().to(self.process.betas.device)
        return self.process.t_from_sigma(s)

    def noise(self, x: torch.Tensor, generator) -> torch.Tensor:
        return randn(x.shape, generator, x.device, x.dtype)

    def sample_step(self, denoise: DenoiseFn, x: torch.Tensor, i: int, generator=None) -> StepOutput:
        """Step i: x_t -> x = x_t sqrt(1 + sigma_i^2), the subclass's update in sigma space,
        then back to x_t at sigma_{i+1} (the sample itself at sigma = 0)."""
        batch = x.shape[0]

        def D(x_ve: torch.Tensor, sigma: float) -> torch.Tensor:
            # EDM's D(x; sigma): the denoiser sees the VP input x / sqrt(1 + sigma^2) at t(sigma)
            t = self.t_of(sigma).expand(batch).to(x_ve.device)
            return self.clip(denoise(x_ve / vp_scale(sigma), t).x0)

        x_ve = x * vp_scale(self.step_sigmas[i])
        x_next, x0 = self.sigma_step(D, x_ve, i, generator)
        return StepOutput(x_next / vp_scale(self.step_sigmas[i + 1]), x0)

    def sigma_step(self, D, x: torch.Tensor, i: int, generator) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def step(self, x_t, t, pred, generator=None, noise=None) -> StepOutput:
        raise NotImplementedError(f"{type(self).__name__} calls the denoiser itself: use sample_step (the sampling loop)")

    def __repr__(self) -> str:
        n = len(self.step_sigmas) - 1 if self.step_sigmas else "unset"
        return f"{type(self).__name__}(steps={n}, sigmas={self.sigma_spacing!r})"


class ChurnMixin:
    """Karras et al. 2022 Algorithm 2's stochastic churn (lines 4-6), shared by Euler and Heun:
    raise sigma_i to sigma_hat = (1 + gamma_i) sigma_i by adding fresh noise, with
    gamma_i = min(S_churn / n, sqrt(2) - 1) for sigma_i in [S_tmin, S_tmax], else 0."""

    def init_churn(self, s_churn: float, s_tmin: float, s_tmax: float | None, s_noise: float) -> None:
        s_tmax = math.inf if s_tmax is None else float(s_tmax)
        if not s_churn >= 0:
            raise ValueError(f"s_churn must be >= 0 (0: the deterministic Algorithm 1), got s_churn={s_churn!r}")
        if not s_tmin <= s_tmax:
            raise ValueError(f"need s_tmin <= s_tmax, got s_tmin={s_tmin!r}, s_tmax={s_tmax!r}")
        if not s_noise >= 0:
            raise ValueError(f"s_noise must be >= 0 (1: no inflation), got s_noise={s_noise!r}")
        self.s_churn, self.s_tmin, self.s_tmax, self.s_noise = float(s_churn), float(s_tmin), s_tmax, float(s_noise)

    def churn(self, x: torch.Tensor, i: int, generator) -> tuple[torch.Tensor, float]:
        sigma = self.step_sigmas[i]
        n = len(self.step_sigmas) - 1
        gamma = min(self.s_churn / n, math.sqrt(2) - 1) if self.s_tmin <= sigma <= self.s_tmax else 0.0
        sigma_hat = sigma * (1 + gamma)
        if gamma > 0:  # Algorithm 2 line 6: x_hat = x + sqrt(sigma_hat^2 - sigma^2) eps, eps ~ N(0, S_noise^2 I)
            x = x + self.noise(x, generator) * self.s_noise * math.sqrt(sigma_hat**2 - sigma**2)
        return x, sigma_hat


__all__ = [
    "SIGMA_SPACINGS",
    "ChurnMixin",
    "SigmaSampler",
    "check_sigma_options",
    "exponential_sigmas",
    "karras_sigmas",
    "make_sigmas",
    "schedule_sigmas",
    "sigma_range",
]
