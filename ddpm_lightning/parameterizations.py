"""What the network predicts: epsilon, x0, mu (the posterior mean) or v.

Every parameterization answers two questions (the lucidrains / EDM habit of one explicit
wrapper rather than branches scattered through the loss and the samplers):

* `target(process, x0, noise, t, x_t)`: the regression target for training;
* `predict(process, x_t, t, output)`: the network output turned into the common pair
  `Prediction(x0, eps)`, which is all a sampler consumes. So every sampler works with every
  parameterization.

`x0_error_scale2(process, t)` is k(t)^2, where (target error) = k(t) * (x0 error) for a fixed
x_t; the loss weightings use it to express one x0-space weighting in any parameterization.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from ddpm_lightning.process import DiffusionProcess


class Prediction(NamedTuple):
    """The model's estimate of the clean sample and of the noise in x_t, and, for a model that
    learns its reverse-process variance (`ddpm_lightning.variance`), the log-variance of
    p(x_{t-1} | x_t) and, for `learned_range`, the interpolation fraction f it came from
    (None: the sampler's fixed variance)."""

    x0: torch.Tensor
    eps: torch.Tensor
    log_var: torch.Tensor | None = None
    var_frac: torch.Tensor | None = None


class Parameterization:
    """Base class: subclass and register in PARAMETERIZATIONS to add one."""

    name: str = ""

    def target(self, process: DiffusionProcess, x0, noise, t, x_t) -> torch.Tensor:
        raise NotImplementedError

    def predict(self, process: DiffusionProcess, x_t, t, output) -> Prediction:
        raise NotImplementedError

    def from_prediction(self, process: DiffusionProcess, x_t, t, pred: Prediction) -> torch.Tensor:
        """The network output that would produce `pred` (the inverse of `predict`)."""
        return self.target(process, pred.x0, pred.eps, t, x_t)

    def x0_error_scale2(self, process: DiffusionProcess, t, shape) -> torch.Tensor:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class EpsilonParameterization(Parameterization):
    """Ho et al. 2020, eq. 11-12: the network predicts the noise eps."""

    name = "epsilon"

    def target(self, process, x0, noise, t, x_t):
        return noise

    def predict(self, process, x_t, t, output):
        return Prediction(process.x0_from_eps(x_t, t, output), output)

    def x0_error_scale2(self, process, t, shape):
        # eps = (x_t - sqrt(abar) x0) / sqrt(1 - abar)  =>  k^2 = abar / (1 - abar) = SNR
        return process.at("snr", t, shape)


class X0Parameterization(Parameterization):
    """The network predicts x_0 directly (diffusers' `sample`)."""

    name = "x0"

    def target(self, process, x0, noise, t, x_t):
        return x0

    def predict(self, process, x_t, t, output):
        return Prediction(output, process.eps_from_x0(x_t, t, output))

    def x0_error_scale2(self, process, t, shape):
        return torch.ones_like(process.at("snr", t, shape))


class MuParameterization(Parameterization):
    """The network predicts the posterior mean mu tilde(x_t, x_0) of DDPM eq. 7 directly
    (Ho et al. 2020 sec. 3.2, "mu" in their ablation; improved-diffusion's PREVIOUS_X)."""

    name = "mu"

    def target(self, process, x0, noise, t, x_t):
        return process.q_posterior(x0, x_t, t)[0]

    def predict(self, process, x_t, t, output):
        # invert eq. 7: x_0 = (mu - coef2 x_t) / coef1 (improved-diffusion _predict_xstart_from_xprev)
        coef1 = process.at("posterior_mean_coef1", t, x_t.shape)
        coef2 = process.at("posterior_mean_coef2", t, x_t.shape)
        x0 = (output - coef2 * x_t) / coef1
        return Prediction(x0, process.eps_from_x0(x_t, t, x0))

    def x0_error_scale2(self, process, t, shape):
        return process.at("posterior_mean_coef1", t, shape) ** 2


class VParameterization(Parameterization):
    """Salimans & Ho 2022, sec. 4 and App. D: v = sqrt(abar) eps - sqrt(1 - abar) x_0."""

    name = "v"

    def target(self, process, x0, noise, t, x_t):
        a = process.at("sqrt_alphas_cumprod", t, x0.shape)
        s = process.at("sqrt_one_minus_alphas_cumprod", t, x0.shape)
        return a * noise - s * x0

    def predict(self, process, x_t, t, output):
        a = process.at("sqrt_alphas_cumprod", t, x_t.shape)
        s = process.at("sqrt_one_minus_alphas_cumprod", t, x_t.shape)
        # x_0 = sqrt(abar) x_t - sqrt(1 - abar) v ;  eps = sqrt(1 - abar) x_t + sqrt(abar) v
        return Prediction(a * x_t - s * output, s * x_t + a * output)

    def x0_error_scale2(self, process, t, shape):
        # dv/dx0 at fixed x_t = -1 / sqrt(1 - abar)  =>  k^2 = 1 / (1 - abar) = SNR + 1
        return process.at("snr", t, shape) + 1


PARAMETERIZATIONS: dict[str, type[Parameterization]] = {
    p.name: p
    for p in (EpsilonParameterization, X0Parameterization, MuParameterization, VParameterization)
}


def get_parameterization(name: str | Parameterization) -> Parameterization:
    """A parameterization instance from its name (or the instance itself)."""
    if isinstance(name, Parameterization):
        return name
    if name not in PARAMETERIZATIONS:
        raise ValueError(f"unknown parameterization {name!r}; choose one of {list(PARAMETERIZATIONS)}")
    return PARAMETERIZATIONS[name]()
