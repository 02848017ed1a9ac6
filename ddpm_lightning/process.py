"""The Gaussian forward process as a module of buffers: q(x_t | x_{t-1}), q(x_t | x_0) and the
posterior q(x_{t-1} | x_t, x_0) of Ho et al. 2020 (DDPM).

Timesteps are 0-based, as in diffusers: index t in [0, T) is the paper's step t + 1, so
`alphas_cumprod[0] = 1 - beta_1` and x_{-1} means the data x_0. Every per-timestep quantity is
computed once in float64 and stored as a buffer (float32 by default), so it follows the module's
device and is saved in checkpoints.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ddpm_lightning.noise import randn  # noqa: F401  (re-exported: samplers import it from here)
from ddpm_lightning.schedules import make_betas


def extract(a: torch.Tensor, t: torch.Tensor, x_shape: Sequence[int]) -> torch.Tensor:
    """a[t] for a batch of timesteps t (B,), shaped (B, 1, ..., 1) to broadcast against x."""
    return a.gather(0, t.reshape(-1)).reshape(t.shape[0], *((1,) * (len(x_shape) - 1)))


def _lerp(values: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """values at continuous indices t (clamped to [0, len - 1]), linear between neighbours."""
    t = t.to(values.dtype).clamp(0, len(values) - 1)
    lo = t.floor().long().clamp(max=len(values) - 2) if len(values) > 1 else t.long()
    hi = (lo + 1).clamp(max=len(values) - 1)
    w = t - lo.to(t.dtype)
    return torch.lerp(values[lo], values[hi], w)


# abar-derived buffers as functions of the log-SNR l: abar = sigmoid(l), 1 - abar = sigmoid(-l)
_FROM_LOG_SNR = {
    "alphas_cumprod": torch.sigmoid,
    "sqrt_alphas_cumprod": lambda l: torch.sigmoid(l).sqrt(),
    "sqrt_one_minus_alphas_cumprod": lambda l: torch.sigmoid(-l).sqrt(),
    "log_one_minus_alphas_cumprod": lambda l: torch.nn.functional.logsigmoid(-l),
    "sqrt_recip_alphas_cumprod": lambda l: torch.sigmoid(l).rsqrt(),
    "sqrt_recipm1_alphas_cumprod": lambda l: torch.exp(-0.5 * l),
    "snr": torch.exp,
}


class DiffusionProcess(nn.Module):
    """Buffers of a discrete DDPM forward process and its closed forms.

    Args:
        name: a schedule from `ddpm_lightning.schedules.SCHEDULES` or an explicit list of betas
            (`schedule=` is accepted as an older spelling).
        num_timesteps: T (ignored shape check aside when betas are given explicitly).
        zero_terminal_snr: rescale to abar_T = 0 (Lin et al. 2023).
        dtype: dtype of the buffers; float32 unless a test wants float64.
        schedule_kwargs: extra arguments of the schedule function (beta_start, s, ...).
    """

    def __init__(
        self,
        name: str | Sequence[float] = "linear",
        num_timesteps: int | None = 1000,
        zero_terminal_snr: bool = False,
        dtype: torch.dtype = torch.float32,
        **schedule_kwargs: float,
    ) -> None:
        super().__init__()
        if "schedule" in schedule_kwargs:  # the key before `name` (checkpoints written until 0.1)
            name = schedule_kwargs.pop("schedule")
        if not isinstance(name, str):
            num_timesteps = None  # an explicit list of betas defines T itself
        betas = make_betas(name, num_timesteps, zero_terminal_snr, **schedule_kwargs)
        # enough to rebuild this process (stored in checkpoints' hyperparameters)
        self.config = {
            "name": name if isinstance(name, str) else [float(b) for b in name],
            "num_timesteps": int(betas.numel()),
            "zero_terminal_snr": bool(zero_terminal_snr),
            **schedule_kwargs,
        }
        self.schedule_name = name if isinstance(name, str) else "explicit"
        self.num_timesteps = int(betas.numel())

        alphas = 1.0 - betas
        abar = torch.cumprod(alphas, 0)
        if zero_terminal_snr:
            # abar_T = 0 makes 1/sqrt(abar_T) infinite; diffusers clamps it to 2**-24 for the
            # same reason (DDPMScheduler, rescale_betas_zero_snr).
            abar[-1] = max(float(abar[-1]), 2.0**-24)
        abar_prev = torch.cat([abar.new_ones(1), abar[:-1]])
        # DDPM eq. 7: beta tilde_t = (1 - abar_{t-1}) / (1 - abar_t) * beta_t
        post_var = (1.0 - abar_prev) / (1.0 - abar) * betas
        # log(beta tilde) is -inf at t = 0; improved-diffusion clips it to beta tilde_1.
        post_var_log = torch.log(torch.cat([post_var[1:2], post_var[1:]]) if len(betas) > 1 else betas)

        # A float64 CPU copy for the samplers' per-step tables (computed once per set_timesteps):
        # float32 abar loses most digits of 1 - abar near t = 0. Not a buffer on purpose: it is
        # derived from the schedule, never used on the device, and must not be cast by .half().
        self.alphas_cumprod_f64 = abar.clone()

        def buf(name: str, value: torch.Tensor) -> None:
            self.register_buffer(name, value.to(dtype))

        buf("betas", betas)
        buf("alphas", alphas)
        buf("alphas_cumprod", abar)
        buf("alphas_cumprod_prev", abar_prev)
        buf("sqrt_alphas", alphas.sqrt())
        buf("sqrt_alphas_cumprod", abar.sqrt())
        buf("sqrt_one_minus_alphas_cumprod", (1.0 - abar).sqrt())
        buf("log_one_minus_alphas_cumprod", torch.log1p(-abar))
        buf("sqrt_recip_alphas_cumprod", abar.rsqrt())
        buf("sqrt_recipm1_alphas_cumprod", (1.0 / abar - 1.0).sqrt())
        buf("posterior_variance", post_var)
        buf("posterior_log_variance_clipped", post_var_log)
        # DDPM eq. 7: mu tilde = coef1 * x_0 + coef2 * x_t
        buf("posterior_mean_coef1", abar_prev.sqrt() * betas / (1.0 - abar))
        buf("posterior_mean_coef2", alphas.sqrt() * (1.0 - abar_prev) / (1.0 - abar))
        # Kingma et al. 2021 (VDM): SNR(t) = abar_t / (1 - abar_t)
        buf("snr", abar / (1.0 - abar))

    def extra_repr(self) -> str:
        return f"schedule={self.schedule_name!r}, T={self.num_timesteps}"

    # ---- continuous time ------------------------------------------------------------------
    def at(self, name: str, t: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
        """Buffer `name` at timesteps t (B,), shaped (B, 1, ..., 1) to broadcast against `shape`.

        Integer t reads the buffer (`extract`). Floating-point t is continuous time in
        [0, T - 1], for samplers that step between the training timesteps (Karras sigmas,
        Heun's midpoints): the log-SNR is interpolated linearly between the two neighbouring
        timesteps, and every abar-derived quantity follows from it exactly, so x_t, x0_hat and
        eps_hat stay consistent (x_t = sqrt(abar) x_0 + sqrt(1 - abar) eps at every t). Since
        log-SNR = -2 log sigma (sigma = sqrt((1 - abar) / abar)), this is k-diffusion's
        `DiscreteSchedule` interpolation of log sigma. Other buffers (betas, posterior
        coefficients) are interpolated linearly in t."""
        if not t.is_floating_point():
            return extract(getattr(self, name), t, shape)
        t = t.reshape(-1)
        view = (t.shape[0], *((1,) * (len(shape) - 1)))
        if name in _FROM_LOG_SNR:
            return _FROM_LOG_SNR[name](self.log_snr_at(t)).reshape(view)
        return _lerp(getattr(self, name), t).reshape(view)

    def log_snr_at(self, t: torch.Tensor) -> torch.Tensor:
        """log SNR(t) = log(abar_t / (1 - abar_t)) (B,) at integer or continuous timesteps."""
        log_snr = self.snr.log()
        return log_snr[t] if not t.is_floating_point() else _lerp(log_snr, t)

    def sigma_at(self, t: torch.Tensor) -> torch.Tensor:
        """sigma(t) = sqrt((1 - abar_t) / abar_t) (B,), the noise level of x_t / sqrt(abar_t)
        (Karras et al. 2022's variance-exploding view of the same process)."""
        return torch.exp(-0.5 * self.log_snr_at(t))

    def t_from_sigma(self, sigma: torch.Tensor) -> torch.Tensor:
        """The continuous timestep (float, in [0, T - 1]) whose sigma is `sigma`: the inverse of
        `sigma_at`, linear in log sigma between the training timesteps (k-diffusion's
        `sigma_to_t`); sigmas outside the schedule's range clamp to its ends."""
        log_sigmas = -0.5 * self.snr.log()  # increasing in t
        log_sigma = torch.as_tensor(sigma, dtype=log_sigmas.dtype, device=log_sigmas.device).log()
        log_sigma = log_sigma.clamp(float(log_sigmas[0]), float(log_sigmas[-1]))
        hi = torch.searchsorted(log_sigmas, log_sigma.reshape(-1)).clamp(1, len(log_sigmas) - 1)
        lo = hi - 1
        w = (log_sigma.reshape(-1) - log_sigmas[lo]) / (log_sigmas[hi] - log_sigmas[lo])
        return (lo + w).reshape(log_sigma.shape)

    # ---- forward process ------------------------------------------------------------------
    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor | None = None,
                 generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Closed-form jump x_t ~ q(x_t | x_0) = N(sqrt(abar_t) x_0, (1 - abar_t) I), DDPM eq. 4.
        Returns (x_t, noise)."""
        return self._gaussian(x0, t, "sqrt_alphas_cumprod", "sqrt_one_minus_alphas_cumprod", noise, generator)

    def q_step(self, x_prev: torch.Tensor, t: torch.Tensor, noise: torch.Tensor | None = None,
               generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """One forward step x_t ~ q(x_t | x_{t-1}) = N(sqrt(1 - beta_t) x_{t-1}, beta_t I), DDPM
        eq. 2. Returns (x_t, noise)."""
        return self._gaussian(x_prev, t, "sqrt_alphas", "sqrt_betas", noise, generator)

    def _gaussian(self, x, t, scale: str, std: str, noise, generator) -> tuple[torch.Tensor, torch.Tensor]:
        """(scale_t x + std_t noise, noise), noise ~ N(0, I) drawn unless given."""
        if noise is None:
            noise = randn(x.shape, generator, x.device, x.dtype)
        std_t = self.at("betas", t, x.shape).sqrt() if std == "sqrt_betas" else self.at(std, t, x.shape)
        return self.at(scale, t, x.shape) * x + std_t * noise, noise

    def q_posterior(
        self, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Mean, variance and clipped log-variance of q(x_{t-1} | x_t, x_0), DDPM eqs. 6-7."""
        mean = (
            self.at("posterior_mean_coef1", t, x_t.shape) * x0
            + self.at("posterior_mean_coef2", t, x_t.shape) * x_t
        )
        var = self.at("posterior_variance", t, x_t.shape)
        log_var = self.at("posterior_log_variance_clipped", t, x_t.shape)
        return mean, var, log_var

    # ---- conversions between x_0, epsilon and x_t -----------------------------------------
    def x0_from_eps(self, x_t: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """Invert eq. 4: x_0 = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t)."""
        return (
            self.at("sqrt_recip_alphas_cumprod", t, x_t.shape) * x_t
            - self.at("sqrt_recipm1_alphas_cumprod", t, x_t.shape) * eps
        )

    def eps_from_x0(self, x_t: torch.Tensor, t: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
        """Invert eq. 4 for the noise: eps = (x_t - sqrt(abar_t) x_0) / sqrt(1 - abar_t)."""
        return (
            self.at("sqrt_recip_alphas_cumprod", t, x_t.shape) * x_t - x0
        ) / self.at("sqrt_recipm1_alphas_cumprod", t, x_t.shape)
