"""`Denoiser`: the network and its parameterization as one object, (x_t, t, cond) -> Prediction.

This is the unit that training, validation, sampling, bits/dim and export share (the EDM habit of
one visible preconditioning wrapper, Karras et al. 2022, sec. 5 and App. B.6): the network's raw
output is turned into `Prediction(x0, eps, log_var)` in this one place, so a sampler, a guidance
rule or an exporter never needs to know whether the network predicts epsilon, x0, mu or v.

The network contract is `network(x_t, t, cond=None) -> output shaped like x_t`:

* `x_t` (B, C, H, W) or (B, D), the noised data of DDPM eq. 4;
* `t` (B,): integer timesteps in [0, T) (int64), or continuous time in [0, T - 1] (float32)
  when a sampler steps between the training timesteps. The network gets `t` as it is: our
  UNet and MLP embed it sinusoidally, which is defined for any real t. The schedule at a
  continuous t is the log-SNR interpolated between the neighbouring timesteps
  (`DiffusionProcess.at`), and a noise level sigma maps to t through `t_from_sigma`;
* `cond`: a dict of conditioning inputs (class labels, a conditioning image, ...) or None.
  `cond=None` calls the network with two arguments, so networks written for the older
  `network(x_t, t)` contract (and checkpoints of them) keep working.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from ddpm_lightning.parameterizations import Parameterization, Prediction, get_parameterization
from ddpm_lightning.process import DiffusionProcess
from ddpm_lightning.variance import check_variance, learned_log_variance, split_output

Cond = Mapping[str, Any] | None


def as_timesteps(t: torch.Tensor | int | float, batch_size: int, device: torch.device | str) -> torch.Tensor:
    """t as a (B,) tensor on `device`: an int broadcasts to int64 timesteps, a float to
    continuous time (float32), a tensor keeps its dtype (a 0-d one is broadcast)."""
    if not torch.is_tensor(t):
        dtype = torch.float32 if isinstance(t, float) else torch.long
        return torch.full((batch_size,), t, device=device, dtype=dtype)
    t = t.to(device)
    return t.expand(batch_size) if t.ndim == 0 else t


class Denoiser(nn.Module):
    """network + parameterization: `denoiser(x_t, t, cond=None) -> Prediction(x0, eps, log_var)`.

    Args:
        network: an `nn.Module` (or any callable) with the contract of the module docstring.
        process: the forward process whose schedule the parameterization converts with.
        parameterization: "epsilon", "x0", "mu", "v" or a `Parameterization`.
        variance: "fixed" (the network predicts the mean only), or "learned" / "learned_range"
            (it outputs 2C channels, the second half the variance: `ddpm_lightning.variance`).
        channels_last: hand 4-D inputs to the network in channels-last memory format.
    """

    def __init__(
        self,
        network: nn.Module | Callable[..., torch.Tensor],
        process: DiffusionProcess,
        parameterization: str | Parameterization = "epsilon",
        channels_last: bool = False,
        variance: str = "fixed",
    ) -> None:
        super().__init__()
        self.network = network
        self.process = process
        self.parameterization = get_parameterization(parameterization)
        self.channels_last = channels_last
        self.variance = check_variance(variance)

    def network_output(self, x_t: torch.Tensor, t: torch.Tensor, cond: Cond = None) -> torch.Tensor:
        """The raw network output for x_t at timesteps t (B,): what the training loss compares
        with the parameterization's target."""
        if self.channels_last and x_t.ndim == 4:
            x_t = x_t.contiguous(memory_format=torch.channels_last)
        return self.network(x_t, t) if cond is None else self.network(x_t, t, cond)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor | int | float, cond: Cond = None) -> Prediction:
        """Prediction(x0, eps) of the clean sample and the noise in x_t at timesteps t."""
        t = as_timesteps(t, x_t.shape[0], x_t.device)
        output = self.network_output(x_t, t, cond)
        # the conversion runs in float32 at least, whatever precision the network ran in (bf16
        # autocast), and in float64 for a float64 network
        return self.prediction(x_t, t, output.to(torch.promote_types(output.dtype, torch.float32)))

    def prediction(self, x_t: torch.Tensor, t: torch.Tensor, output: torch.Tensor) -> Prediction:
        """The Prediction from a raw network output (B, C or 2C, ...) at timesteps t (B,)."""
        mean_out, var_out = split_output(output, self.variance)
        pred = self.parameterization.predict(self.process, x_t, t, mean_out)
        if var_out is None:
            return pred
        log_var, frac = learned_log_variance(self.process, t, var_out, self.variance)
        return pred._replace(log_var=log_var, var_frac=frac)

    def at_sigma(self, x: torch.Tensor, sigma: torch.Tensor | float, cond: Cond = None) -> Prediction:
        """The same prediction in the variance-exploding view of Karras et al. 2022 (eq. 1-2 with
        s(t) = 1): x = x_0 + sigma eps, i.e. x_t = x / sqrt(1 + sigma^2) at the timestep whose
        sigma it is. x0 and eps are the same in both views."""
        sigma = torch.as_tensor(sigma, dtype=torch.float32, device=x.device)
        sigma = sigma.expand(x.shape[0]) if sigma.ndim == 0 else sigma
        t = self.process.t_from_sigma(sigma)  # (B,) float
        scale = (1 + sigma**2).rsqrt().reshape(-1, *((1,) * (x.ndim - 1)))
        return self(x * scale, t, cond)

    def extra_repr(self) -> str:
        return f"parameterization={self.parameterization.name!r}, variance={self.variance!r}"
