"""Classifier-free guidance (Ho & Salimans 2022) as a denoiser wrapper, so that it works with every
sampler and every parameterization.

With the conditional and unconditional predictions of one network at the same (x_t, t),

    guided = uncond + w (cond - uncond)                        Ho & Salimans 2022, eq. 6

in diffusers' convention for w (`guidance_scale`): w = 1 is the plain conditional model, w = 0
the unconditional one, w > 1 guides. x0_hat and eps_hat are both affine in the network output at
fixed x_t (for epsilon, x0, v and mu alike), so guiding the `Prediction`'s pair is the same as
guiding the raw output, which is what diffusers does with the noise. The two passes run as one
batched forward of 2B inputs; w = 1 and w = 0 run only the pass they need.

Guidance rescale (Lin et al. 2023, sec. 3.4, `guidance_rescale` phi) pulls the guided output's
per-sample standard deviation back to the conditional one's, in the parameterization's own output
space as diffusers' `rescale_noise_cfg` does: out = phi out_g std(out_c) / std(out_g) + (1 - phi) out_g.
A learned variance is taken from the conditional pass (as GLIDE does).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from ddpm_lightning.denoiser import Cond, as_timesteps
from ddpm_lightning.parameterizations import Prediction


def check_guidance(scale: float, rescale: float = 0.0) -> None:
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not scale >= 0:
        raise ValueError(f"guidance scale must be a number >= 0 (1: conditional, 0: unconditional), got {scale!r}")
    if not 0 <= rescale <= 1:
        raise ValueError(f"guidance_rescale must be in [0, 1], got {rescale!r}")


def _concat_cond(cond: Mapping[str, Any], uncond: Mapping[str, Any], batch: int) -> dict[str, Any]:
    """cond and uncond stacked along the batch: tensors of B rows are concatenated, a value given
    once for the whole batch (a class id) is broadcast to B rows first."""
    out = {}
    for key in cond:
        a, b = (torch.as_tensor(v) for v in (cond[key], uncond[key]))
        a = a.expand(batch, *a.shape[1:]) if a.ndim and a.shape[0] == batch else a.expand(batch)
        b = b.expand(batch, *b.shape[1:]) if b.ndim and b.shape[0] == batch else b.expand(batch)
        out[key] = torch.cat([a, b.to(a.dtype)])
    return out


class ClassifierFreeGuidance(nn.Module):
    """`guided(x_t, t, cond) -> Prediction` from a conditional denoiser.

    Args:
        denoiser: a `Denoiser` (or any (x_t, t, cond) -> Prediction) of a model trained with
            condition dropout.
        scale: w in diffusers' convention (>= 0).
        uncond: the unconditional inputs for a given cond, e.g. `lambda c: {"class": null_id}`.
        rescale: guidance rescale phi in [0, 1] (0: off).
    """

    def __init__(self, denoiser: Callable[..., Prediction], scale: float, uncond: Callable[[Mapping[str, Any]], Mapping[str, Any]],
                 rescale: float = 0.0) -> None:
        super().__init__()
        check_guidance(scale, rescale)
        self.denoiser, self.scale, self.uncond, self.rescale = denoiser, float(scale), uncond, float(rescale)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor | int | float, cond: Cond = None) -> Prediction:
        if cond is None:
            raise ValueError("classifier-free guidance needs the conditioning inputs (cond=...)")
        if self.scale == 1.0:
            return self.denoiser(x_t, t, cond)
        uncond = self.uncond(cond)
        if self.scale == 0.0:
            return self.denoiser(x_t, t, uncond)
        b = x_t.shape[0]
        t = as_timesteps(t, b, x_t.device)
        both = self.denoiser(torch.cat([x_t, x_t]), torch.cat([t, t]), _concat_cond(cond, uncond, b))
        c, u = (Prediction(*(None if f is None else f[s] for f in both)) for s in (slice(0, b), slice(b, None)))
        w = self.scale
        guided = Prediction(u.x0 + w * (c.x0 - u.x0), u.eps + w * (c.eps - u.eps), c.log_var, c.var_frac)
        return self._rescaled(x_t, t, guided, c) if self.rescale > 0 else guided

    def _rescaled(self, x_t: torch.Tensor, t: torch.Tensor, guided: Prediction, cond: Prediction) -> Prediction:
        # in the network's own output space (eps, x0, v or mu), as diffusers' rescale_noise_cfg
        param, process = self.denoiser.parameterization, self.denoiser.process
        out_g = param.from_prediction(process, x_t, t, guided)
        out_c = param.from_prediction(process, x_t, t, cond)
        dims = list(range(1, out_g.ndim))
        ratio = out_c.std(dim=dims, keepdim=True) / out_g.std(dim=dims, keepdim=True)
        out = self.rescale * out_g * ratio + (1 - self.rescale) * out_g
        return param.predict(process, x_t, t, out)._replace(log_var=cond.log_var, var_frac=cond.var_frac)
