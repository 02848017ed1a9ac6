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


class DiffusionProcess(nn.Module):
    """Buffers of a discrete DDPM forward process and its closed forms.

    Args:
        schedule: a name from `ddpm_lightning.schedules.SCHEDULES` or an explicit list of betas.
        num_timesteps: T (ignored shape check aside when betas are given explicitly).
        zero_terminal_snr: rescale to abar_T = 0 (Lin et al. 2023).
        dtype: dtype of the buffers; float32 unless a test wants float64.
        schedule_kwargs: extra arguments of the schedule function (beta_start, s, ...).
    """

    def __init__(
        self,
        schedule: str | Sequence[float] = "linear",
        num_timesteps: int | None = 1000,
        zero_terminal_snr: bool = False,
        dtype: torch.dtype = torch.float32,
        **schedule_kwargs: float,
    ) -> None:
        super().__init__()
        if not isinstance(schedule, str):
            num_timesteps = None  # an explicit list of betas defines T itself
        betas = make_betas(schedule, num_timesteps, zero_terminal_snr, **schedule_kwargs)
        # enough to rebuild this process (stored in checkpoints' hyperparameters)
        self.config = {
            "schedule": schedule if isinstance(schedule, str) else [float(b) for b in schedule],
            "num_timesteps": int(betas.numel()),
            "zero_terminal_snr": bool(zero_terminal_snr),
            **schedule_kwargs,
        }
        self.schedule_name = schedule if isinstance(schedule, str) else "explicit"
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

    def check_timesteps(self, t: torch.Tensor) -> None:
        if t.dtype not in (torch.int64, torch.int32) or t.ndim != 1:
            raise ValueError(f"timesteps must be a 1-D integer tensor, got {t.dtype} {tuple(t.shape)}")

    # ---- forward process ------------------------------------------------------------------
    def q_sample(
        self,
        x0: torch.Tensor,
        t: torch.Tensor,
        noise: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Closed-form jump x_t ~ q(x_t | x_0) = N(sqrt(abar_t) x_0, (1 - abar_t) I), DDPM eq. 4.
        Returns (x_t, noise)."""
        if noise is None:
            noise = randn(x0.shape, generator, x0.device, x0.dtype)
        x_t = (
            extract(self.sqrt_alphas_cumprod, t, x0.shape) * x0
            + extract(self.sqrt_one_minus_alphas_cumprod, t, x0.shape) * noise
        )
        return x_t, noise

    def q_step(
        self,
        x_prev: torch.Tensor,
        t: torch.Tensor,
        noise: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One forward step x_t ~ q(x_t | x_{t-1}) = N(sqrt(1 - beta_t) x_{t-1}, beta_t I), DDPM
        eq. 2. Returns (x_t, noise)."""
        if noise is None:
            noise = randn(x_prev.shape, generator, x_prev.device, x_prev.dtype)
        x_t = (
            extract(self.sqrt_alphas, t, x_prev.shape) * x_prev
            + extract(self.betas, t, x_prev.shape).sqrt() * noise
        )
        return x_t, noise

    def q_posterior(
        self, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Mean, variance and clipped log-variance of q(x_{t-1} | x_t, x_0), DDPM eqs. 6-7."""
        mean = (
            extract(self.posterior_mean_coef1, t, x_t.shape) * x0
            + extract(self.posterior_mean_coef2, t, x_t.shape) * x_t
        )
        var = extract(self.posterior_variance, t, x_t.shape)
        log_var = extract(self.posterior_log_variance_clipped, t, x_t.shape)
        return mean, var, log_var

    # ---- conversions between x_0, epsilon and x_t -----------------------------------------
    def x0_from_eps(self, x_t: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """Invert eq. 4: x_0 = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t)."""
        return (
            extract(self.sqrt_recip_alphas_cumprod, t, x_t.shape) * x_t
            - extract(self.sqrt_recipm1_alphas_cumprod, t, x_t.shape) * eps
        )

    def eps_from_x0(self, x_t: torch.Tensor, t: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
        """Invert eq. 4 for the noise: eps = (x_t - sqrt(abar_t) x_0) / sqrt(1 - abar_t)."""
        return (
            extract(self.sqrt_recip_alphas_cumprod, t, x_t.shape) * x_t - x0
        ) / extract(self.sqrt_recipm1_alphas_cumprod, t, x_t.shape)

    def sample_timesteps(
        self, batch_size: int, device=None, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Uniform t ~ U{0, ..., T-1} (DDPM Algorithm 1, line 3)."""
        gen_device = generator.device if generator is not None else device
        t = torch.randint(0, self.num_timesteps, (batch_size,), generator=generator, device=gen_device)
        return t.to(device)
