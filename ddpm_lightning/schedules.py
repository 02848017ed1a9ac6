"""Noise schedules: functions T -> betas (float64), and the registry that picks one by name.

Each function returns the betas of a discrete forward process with T steps, in float64, as a
1-D tensor of values in (0, 1). The names follow diffusers where the two projects share a
schedule; the README has the full mapping (including denoising-diffusion-pytorch's, whose
`linear` rescales the endpoints by 1000 / T).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

_F64 = torch.float64


def linear_betas(T: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> torch.Tensor:
    """Ho et al. 2020, sec. 4: betas linear from 1e-4 to 0.02 (diffusers `linear`)."""
    return torch.linspace(beta_start, beta_end, T, dtype=_F64)


def scaled_linear_betas(
    T: int, beta_start: float = 0.00085, beta_end: float = 0.012
) -> torch.Tensor:
    """Rombach et al. 2022 (latent diffusion / Stable Diffusion): linear in sqrt(beta), then
    squared (diffusers `scaled_linear`). The defaults are Stable Diffusion's endpoints."""
    return torch.linspace(beta_start**0.5, beta_end**0.5, T, dtype=_F64) ** 2


def quadratic_betas(T: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> torch.Tensor:
    """The `quad` schedule of Ho et al.'s code (diffusion_utils.get_beta_schedule): the
    `scaled_linear` curve with DDPM's endpoints 1e-4 and 0.02."""
    return scaled_linear_betas(T, beta_start, beta_end)


def betas_for_alpha_bar(
    T: int, alpha_bar: Callable[[float], float], max_beta: float = 0.999
) -> torch.Tensor:
    """Discretise a continuous alpha_bar(t), t in [0, 1]: beta_i = 1 - abar((i+1)/T) / abar(i/T),
    clipped at `max_beta` (Nichol & Dhariwal 2021, eq. 17 and the paragraph after it)."""
    betas = [min(1 - alpha_bar((i + 1) / T) / alpha_bar(i / T), max_beta) for i in range(T)]
    return torch.tensor(betas, dtype=_F64)


def cosine_betas(T: int, s: float = 0.008, max_beta: float = 0.999) -> torch.Tensor:
    """Nichol & Dhariwal 2021, eq. 17: abar(t) = cos^2((t + s) / (1 + s) * pi / 2), s = 0.008,
    betas clipped at 0.999 (diffusers `squaredcos_cap_v2`)."""
    return betas_for_alpha_bar(T, lambda t: math.cos((t + s) / (1 + s) * math.pi / 2) ** 2, max_beta)


def sigmoid_betas(
    T: int, start: float = -3.0, end: float = 3.0, tau: float = 1.0, max_beta: float = 0.999
) -> torch.Tensor:
    """Jabri et al. 2022 ("Scalable Adaptive Computation for Iterative Generation", Algorithm 1
    / sec. 3.5): abar(t) = (sigmoid(end/tau) - sigmoid((t(end-start)+start)/tau)) /
    (sigmoid(end/tau) - sigmoid(start/tau)). This is denoising-diffusion-pytorch's `sigmoid`.
    diffusers' `sigmoid` is a different schedule: see `sigmoid_geodiff_betas`."""

    def sig(z: float) -> float:
        return 1.0 / (1.0 + math.exp(-z))

    v_start, v_end = sig(start / tau), sig(end / tau)

    def alpha_bar(t: float) -> float:
        return (v_end - sig((t * (end - start) + start) / tau)) / (v_end - v_start)

    # abar(0) = 1 exactly, so the ratio in betas_for_alpha_bar is well defined; abar(1) = 0
    # and the last beta is clipped at max_beta, as for the cosine schedule.
    return betas_for_alpha_bar(T, alpha_bar, max_beta)


def sigmoid_geodiff_betas(T: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> torch.Tensor:
    """Xu et al. 2022 (GeoDiff), the schedule diffusers calls `sigmoid`: betas follow a sigmoid
    of linspace(-6, 6, T), scaled to [beta_start, beta_end]."""
    return torch.sigmoid(torch.linspace(-6, 6, T, dtype=_F64)) * (beta_end - beta_start) + beta_start


SCHEDULES: dict[str, Callable[..., torch.Tensor]] = {
    "linear": linear_betas,
    "scaled_linear": scaled_linear_betas,
    "quadratic": quadratic_betas,
    "cosine": cosine_betas,
    "sigmoid": sigmoid_betas,
    "sigmoid_geodiff": sigmoid_geodiff_betas,
}


def rescale_zero_terminal_snr(betas: torch.Tensor) -> torch.Tensor:
    """Lin et al. 2023, Algorithm 1: shift and scale sqrt(abar) so that abar_T = 0 (zero terminal
    SNR) while abar_1 is unchanged; return the betas of the rescaled process.

    The last beta becomes exactly 1. Epsilon- and x0-parameterized models cannot predict at
    abar = 0 (x0 is not identifiable from x_T), which is why Lin et al. pair this with `v`."""
    if betas.numel() < 2:
        raise ValueError("zero terminal SNR rescaling needs at least 2 timesteps")
    sqrt_abar = torch.cumprod(1 - betas.to(_F64), 0).sqrt()
    first, last = sqrt_abar[0].clone(), sqrt_abar[-1].clone()
    sqrt_abar = (sqrt_abar - last) * first / (first - last)
    abar = sqrt_abar**2
    alphas = torch.cat([abar[:1], abar[1:] / abar[:-1]])
    return 1 - alphas


def make_betas(
    schedule: str | Sequence[float] | torch.Tensor,
    num_timesteps: int | None = None,
    zero_terminal_snr: bool = False,
    **kwargs: float,
) -> torch.Tensor:
    """Betas (float64) from a schedule name and T, or from an explicit list of betas.

    Raises ValueError for an unknown name, a T < 1, or betas outside (0, 1)."""
    if isinstance(schedule, str):
        if schedule not in SCHEDULES:
            raise ValueError(
                f"unknown noise schedule {schedule!r}; choose one of {sorted(SCHEDULES)} "
                "or pass an explicit list of betas"
            )
        if num_timesteps is None or int(num_timesteps) < 1:
            raise ValueError(f"num_timesteps must be an integer >= 1, got {num_timesteps!r}")
        betas = SCHEDULES[schedule](int(num_timesteps), **kwargs)
    else:
        betas = torch.as_tensor(list(schedule) if not torch.is_tensor(schedule) else schedule)
        betas = betas.to(_F64).flatten()
        if betas.numel() == 0:
            raise ValueError("an explicit beta schedule must hold at least one value")
        if num_timesteps is not None and int(num_timesteps) != betas.numel():
            raise ValueError(
                f"num_timesteps={num_timesteps} does not match the {betas.numel()} betas given"
            )
    bad = (betas <= 0) | (betas >= 1) | ~torch.isfinite(betas)
    if bad.any():
        i = int(bad.nonzero()[0])
        raise ValueError(
            f"betas must lie in the open interval (0, 1); beta[{i}] = {betas[i].item()!r}"
        )
    if zero_terminal_snr:
        betas = rescale_zero_terminal_snr(betas)
    return betas
