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

`DiffusionLoss` holds these options as one object (the `loss` config group, `conf/loss/`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F

from ddpm_lightning.parameterizations import Parameterization
from ddpm_lightning.process import DiffusionProcess

LOSS_TYPES = ("mse", "l1", "huber")
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
    if loss_type == "mse":
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
        type: "mse", "l1" or "huber".
        weighting: "none", "snr", "snr_plus_one" or "min_snr" (module docstring).
        min_snr_gamma: gamma of min-SNR weighting (Hang et al. 2023 use 5).
        huber_delta: where the Huber loss turns from quadratic to linear.
    """

    type: str = "mse"
    weighting: str = "none"
    min_snr_gamma: float = 5.0
    huber_delta: float = 1.0

    def __post_init__(self) -> None:
        check_loss_options(self.type, self.weighting, self.min_snr_gamma, self.huber_delta)

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

    def __call__(self, process, parameterization, output, target, t) -> torch.Tensor:
        return diffusion_loss(process, parameterization, output, target, t, loss_type=self.type,
                              weighting=self.weighting, min_snr_gamma=self.min_snr_gamma,
                              huber_delta=self.huber_delta)
