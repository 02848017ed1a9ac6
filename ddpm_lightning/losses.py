"""The training loss: a distance between network output and the parameterization's target,
per sample, with an optional timestep weighting.

Weightings are defined in x_0 space and converted to the parameterization's own space with
k(t)^2 (see `Parameterization.x0_error_scale2`), so `weighting=min_snr` means the same
objective whichever of epsilon / x0 / mu / v the network predicts (exactly so for `mse`):

* `none`: the plain loss on the parameterization's own target (Ho et al. 2020's L_simple for
  epsilon);
* `snr`: x_0 error weighted by SNR(t) (what epsilon-MSE implies; Kingma et al. 2021 / Salimans &
  Ho 2022 sec. 4);
* `snr_plus_one`: x_0 error weighted by SNR(t) + 1 ("truncated SNR", what v-MSE implies;
  Salimans & Ho 2022 sec. 4);
* `min_snr`: x_0 error weighted by min(SNR(t), gamma) (Hang et al. 2023, eq. 12; gamma = 5).

`DiffusionLoss` holds these options as one object (the `loss` config group, `conf/loss/`), with
two more types for a model that learns its variance (Nichol & Dhariwal 2021, sec. 3.1):

* `hybrid`: L_simple + lambda L_vlb with lambda = 0.001, the mean's gradient stopped inside
  L_vlb so that it only trains the variance (their eq. 16). L_vlb = sum_t L_t is estimated as
  T L_t at the sampled t, so the term is (T / 1000) L_t (improved-diffusion's RESCALED_MSE);
* `vlb`: L_vlb alone, T L_t, with timesteps importance-sampled by their loss history
  (`ddpm_lightning.timestep_samplers`, their sec. 3.3).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F

from ddpm_lightning.parameterizations import Parameterization
from ddpm_lightning.process import DiffusionProcess
from ddpm_lightning.variance import split_output
from ddpm_lightning.vlb import CDFS, vb_terms_from_prediction

LOSS_TYPES = ("mse", "l1", "huber", "hybrid", "vlb")
VB_TYPES = ("hybrid", "vlb")  # need the variational bound's terms, hence a learned variance
HYBRID_LAMBDA = 1e-3  # Nichol & Dhariwal 2021, sec. 3.1
WEIGHTINGS = ("none", "snr", "snr_plus_one", "min_snr")


def check_loss_options(loss_type: str, weighting: str, min_snr_gamma: float = 5.0, huber_delta: float = 1.0) -> None:
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"unknown loss type {loss_type!r}; choose one of {list(LOSS_TYPES)}")
    if weighting not in WEIGHTINGS:
        raise ValueError(f"unknown loss weighting {weighting!r}; choose one of {list(WEIGHTINGS)}")
    if not min_snr_gamma > 0:
        raise ValueError(f"min_snr_gamma must be > 0, got {min_snr_gamma!r}")
    if not huber_delta > 0:
        raise ValueError(f"huber_delta must be > 0, got {huber_delta!r}")


def loss_weight(
    process: DiffusionProcess,
    parameterization: Parameterization,
    t: torch.Tensor,
    weighting: str,
    min_snr_gamma: float = 5.0,
) -> torch.Tensor | None:
    """Per-sample weight (B,) on the parameterization's loss, or None for `none`."""
    if weighting == "none":
        return None
    shape = (t.shape[0],)
    snr = process.at("snr", t, shape)
    x0_weight = {
        "snr": snr,
        "snr_plus_one": snr + 1,
        "min_snr": snr.clamp(max=min_snr_gamma),
    }[weighting]
    return x0_weight / parameterization.x0_error_scale2(process, t, shape)


def per_sample_loss(
    output: torch.Tensor, target: torch.Tensor, loss_type: str = "mse", huber_delta: float = 1.0
) -> torch.Tensor:
    """Mean over all but the batch dimension of the elementwise distance: (B, ...) -> (B,)."""
    if loss_type in ("mse", "hybrid"):  # hybrid: L_simple is the MSE part
        err = F.mse_loss(output, target, reduction="none")
    elif loss_type == "l1":
        err = F.l1_loss(output, target, reduction="none")
    elif loss_type == "huber":
        err = F.huber_loss(output, target, reduction="none", delta=huber_delta)
    else:
        raise ValueError(f"unknown loss type {loss_type!r}; choose one of {list(LOSS_TYPES)}")
    return err.flatten(1).mean(1)


def diffusion_loss(
    process: DiffusionProcess,
    parameterization: Parameterization,
    output: torch.Tensor,
    target: torch.Tensor,
    t: torch.Tensor,
    loss_type: str = "mse",
    weighting: str = "none",
    min_snr_gamma: float = 5.0,
    huber_delta: float = 1.0,
) -> torch.Tensor:
    """Weighted per-sample loss (B,); the caller takes the mean (and may bin it by t)."""
    # half-precision outputs (autocast) are compared in float32; float64 stays float64
    dtype = torch.promote_types(output.dtype, torch.float32)
    loss = per_sample_loss(output.to(dtype), target.to(dtype), loss_type, huber_delta)
    w = loss_weight(process, parameterization, t, weighting, min_snr_gamma)
    return loss if w is None else loss * w


@dataclass(frozen=True)
class DiffusionLoss:
    """The training loss's options, callable as `loss(process, parameterization, output,
    target, t) -> (B,)` (see `diffusion_loss`).

    Args:
        type: "mse", "l1", "huber", or, for a learned variance, "hybrid" or "vlb".
        weighting: "none", "snr", "snr_plus_one" or "min_snr" (module docstring).
        min_snr_gamma: gamma of min-SNR weighting (Hang et al. 2023 use 5).
        huber_delta: where the Huber loss turns from quadratic to linear.
        decoder_cdf: the normal CDF of the L_0 decoder term of hybrid / vlb: "exact", or "tanh",
            the approximation of Ho et al.'s and improved-diffusion's code (their numbers exactly).
    """

    type: str = "mse"
    weighting: str = "none"
    min_snr_gamma: float = 5.0
    huber_delta: float = 1.0
    decoder_cdf: str = "exact"

    def __post_init__(self) -> None:
        check_loss_options(self.type, self.weighting, self.min_snr_gamma, self.huber_delta)
        if self.decoder_cdf not in CDFS:
            raise ValueError(f"unknown loss.decoder_cdf {self.decoder_cdf!r}; choose one of {list(CDFS)}")

    @classmethod
    def from_spec(cls, spec: DiffusionLoss | Mapping[str, Any] | None = None, **overrides: Any) -> DiffusionLoss:
        """From a `loss` config node (a `name` key, e.g. the group option's, is ignored), with
        `overrides` on top; unknown keys are an error naming the valid ones."""
        if isinstance(spec, DiffusionLoss):
            spec = spec.spec()
        options = {k: v for k, v in dict(spec or {}).items() if k not in ("name", "_target_")}
        options.update(overrides)
        valid = list(cls.__dataclass_fields__)
        unknown = sorted(set(options) - set(valid))
        if unknown:
            raise ValueError(f"unknown loss option(s) {unknown}; valid: {valid}")
        return cls(**options)

    def spec(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def needs_learned_variance(self) -> bool:
        return self.type in VB_TYPES

    def check(self, variance: str, data_shape: Sequence[int] | None, parameterization: str | None = None) -> None:
        """Refuse a loss that cannot train this model, before any work."""
        if parameterization == "mu" and self.weighting != "none":
            # An x_0-space weight w(t) becomes w(t) / c1(t)^2 on the mean's error, c1 = mu's
            # coefficient of x_0 (DDPM eq. 7), which goes to 0 as t -> T: min_snr's weights on mu
            # reach 2e4 (linear) / 9e4 (cosine) at large t, snr_plus_one's 6e7, so those steps
            # swamp every batch's gradient. Measured on experiment=toy2d (3000 steps, sliced
            # Wasserstein distance of 2000 samples to the data; data vs data 0.025): mu with none
            # 0.083; snr 2e12 and min_snr 1e7 (diverged), snr_plus_one 0.15; epsilon / x0 / v with
            # min_snr 0.028 / 0.038 / 0.025.
            raise ValueError(
                f"loss.weighting={self.weighting} does not train parameterization=mu (its weights on the mean's "
                "error reach 1e4-1e7 at large t and training diverges); use loss.weighting=none with mu, "
                "or parameterization=epsilon, x0 or v"
            )
        if self.needs_learned_variance and variance == "fixed":
            raise ValueError(
                f"loss.type={self.type} trains a learned variance (Nichol & Dhariwal 2021) but variance=fixed; "
                "use variance=learned_range (or learned), or a loss of type mse, l1 or huber"
            )
        if variance != "fixed" and not self.needs_learned_variance:
            raise ValueError(
                f"variance={variance} needs loss.type=hybrid or vlb: with loss.type={self.type} the "
                "variance output gets no gradient"
            )
        if self.type == "vlb" and self.weighting != "none":
            raise ValueError(f"loss.type=vlb is the variational bound itself: loss.weighting must be none, got {self.weighting!r}")
        if self.needs_learned_variance and data_shape is not None and len(data_shape) != 3:
            raise ValueError(
                f"loss.type={self.type} has a decoder term over 8-bit pixels: it needs images (C, H, W), "
                f"the data has shape {tuple(data_shape)}"
            )

    def __call__(self, process, parameterization, output, target, t) -> torch.Tensor:
        """The loss of a mean-only output against the parameterization's target (B,)."""
        return diffusion_loss(process, parameterization, output, target, t, loss_type=self.type,
                              weighting=self.weighting, min_snr_gamma=self.min_snr_gamma,
                              huber_delta=self.huber_delta)

    def training_loss(self, denoiser, x0: torch.Tensor, x_t: torch.Tensor, noise: torch.Tensor,
                      t: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
        """The per-sample training loss (B,) of a `Denoiser`'s raw output at (x_t, t)."""
        process, param = denoiser.process, denoiser.parameterization
        T = process.num_timesteps
        if self.type == "vlb":  # L_vlb ~ T L_t (improved-diffusion's RESCALED_KL)
            pred = denoiser.prediction(x_t, t, output.to(torch.promote_types(output.dtype, torch.float32)))
            return T * vb_terms_from_prediction(process, x0, x_t, t, pred, cdf=self.decoder_cdf)
        mean_out, var_out = split_output(output, denoiser.variance)
        loss = self(process, param, mean_out, param.target(process, x0, noise, t, x_t), t)
        if self.type == "hybrid":
            # L_vlb with the mean frozen: it trains only the variance (their eq. 16)
            frozen = torch.cat([mean_out.detach(), var_out], dim=1)
            frozen = frozen.to(torch.promote_types(frozen.dtype, torch.float32))
            vb = vb_terms_from_prediction(process, x0, x_t, t, denoiser.prediction(x_t, t, frozen), cdf=self.decoder_cdf)
            loss = loss + HYBRID_LAMBDA * T * vb
        return loss
