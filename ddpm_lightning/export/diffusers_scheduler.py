"""Our schedule, parameterization and sampler options <-> a diffusers scheduler config, both ways.

The named schedules that diffusers computes the same way keep their name (readable configs):

    ours                      diffusers beta_schedule
    linear                    linear (beta_start, beta_end)
    scaled_linear, quadratic  scaled_linear (beta_start, beta_end)
    cosine (s=0.008)          squaredcos_cap_v2
    sigmoid_geodiff           sigmoid (beta_start, beta_end)
    zero_terminal_snr         rescale_betas_zero_snr

Anything else (our `sigmoid` of Jabri et al., explicit betas, other options) is written as
`trained_betas`. Every mapping is checked by building the scheduler and comparing its
alphas_cumprod with ours; a mismatch falls back to the explicit betas, so a config is never
silently a different schedule.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

import torch

from ddpm_lightning.process import DiffusionProcess
from ddpm_lightning.schedules import SCHEDULES, make_betas

# our parameterization -> diffusers prediction_type (mu, the posterior mean, has none)
PREDICTION_TYPES = {"epsilon": "epsilon", "x0": "sample", "v": "v_prediction"}
_NAMES = {"linear": "linear", "scaled_linear": "scaled_linear", "quadratic": "scaled_linear",
          "cosine": "squaredcos_cap_v2", "sigmoid_geodiff": "sigmoid"}
_WITH_ENDPOINTS = ("linear", "scaled_linear", "sigmoid")
_COSINE_DEFAULTS = {"s": 0.008, "max_beta": 0.999}  # the only cosine diffusers computes


def _same_schedule(abar: torch.Tensor, process: DiffusionProcess) -> bool:
    # diffusers builds its betas in float32, ours in float64: equal to float32 precision
    return abar.shape == process.alphas_cumprod.shape and torch.allclose(
        abar.double(), process.alphas_cumprod_f64.double(), rtol=1e-5, atol=1e-7)


def prediction_type(parameterization: str) -> str:
    if parameterization not in PREDICTION_TYPES:
        raise ValueError(
            f"parameterization {parameterization!r} has no diffusers prediction_type (diffusers has "
            f"{sorted(PREDICTION_TYPES.values())} for our {sorted(PREDICTION_TYPES)}); export format=safetensors or onnx instead"
        )
    return PREDICTION_TYPES[parameterization]


def beta_schedule_kwargs(process: DiffusionProcess) -> dict[str, Any]:
    """DDPMScheduler arguments that rebuild `process`'s schedule."""
    from diffusers import DDPMScheduler

    config = dict(process.config)
    name, T = config.pop("name"), config.pop("num_timesteps")
    zero_snr = config.pop("zero_terminal_snr", False)
    kwargs: dict[str, Any] = {"num_train_timesteps": T}
    if isinstance(name, str) and name in _NAMES:
        defaults = {k: p.default for k, p in inspect.signature(SCHEDULES[name]).parameters.items() if k != "T"}
        options = {**defaults, **config}
        ours = _NAMES[name]
        if ours in _WITH_ENDPOINTS and set(options) == {"beta_start", "beta_end"}:
            kwargs.update(beta_schedule=ours, beta_start=float(options["beta_start"]), beta_end=float(options["beta_end"]))
        elif name == "cosine" and options == _COSINE_DEFAULTS:
            kwargs.update(beta_schedule=ours)
        if zero_snr and "beta_schedule" in kwargs:
            kwargs["rescale_betas_zero_snr"] = True
    if "beta_schedule" in kwargs and _same_schedule(DDPMScheduler(**kwargs).alphas_cumprod, process):
        return kwargs
    betas = make_betas(name, T, zero_snr, **config)  # float64, as the process computed them
    if zero_snr:  # our abar_T is clamped to 2**-24; diffusers does the same for rescaled betas
        return {"num_train_timesteps": T, "trained_betas": betas.tolist(), "rescale_betas_zero_snr": True}
    return {"num_train_timesteps": T, "trained_betas": betas.tolist()}


def sampler_kwargs(sampler: Any) -> dict[str, Any]:
    """The scheduler options that reproduce one of our samplers: spacing, clipping, variance."""
    kwargs: dict[str, Any] = {
        "timestep_spacing": sampler.spacing,
        "clip_sample": bool(sampler.clip_denoised) and not sampler.dynamic_threshold,
        "clip_sample_range": float(sampler.clip_range),
    }
    if sampler.dynamic_threshold:
        kwargs.update(thresholding=True, dynamic_thresholding_ratio=float(sampler.dynamic_threshold),
                      sample_max_value=float(sampler.dynamic_threshold_max or sampler.clip_range))
    if getattr(sampler, "variance", None) in ("fixed_small", "fixed_large"):
        kwargs["variance_type"] = sampler.variance
    return kwargs


def schedule_from_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """Our schedule spec (`DiffusionProcess(**spec)`) of a diffusers scheduler config."""
    from diffusers import DDPMScheduler

    reference = DDPMScheduler.from_config(dict(config))  # diffusers' own betas: the ground truth
    T = int(reference.config.num_train_timesteps)
    zero_snr = bool(config.get("rescale_betas_zero_snr", False))
    theirs = config.get("beta_schedule", "linear")
    spec: dict[str, Any] | None = None
    if config.get("trained_betas") is None:
        ours = {v: k for k, v in _NAMES.items() if k != "quadratic"}.get(theirs)
        if ours is not None:
            spec = {"name": ours, "num_timesteps": T, "zero_terminal_snr": zero_snr}
            if theirs in _WITH_ENDPOINTS:
                spec.update(beta_start=float(reference.config.beta_start), beta_end=float(reference.config.beta_end))
    if spec is not None and _same_schedule(reference.alphas_cumprod, DiffusionProcess(**spec)):
        return spec
    # trained betas, an unmapped name, or a mismatch: diffusers' betas as they are (rescaled already)
    betas = reference.betas.double().clamp(max=1 - 2.0**-24).tolist()
    return {"name": betas, "num_timesteps": T, "zero_terminal_snr": False}


def parameterization_from_config(config: Mapping[str, Any]) -> str:
    theirs = config.get("prediction_type", "epsilon")
    ours = {v: k for k, v in PREDICTION_TYPES.items()}
    if theirs not in ours:
        raise ValueError(f"scheduler prediction_type {theirs!r} is not one of {sorted(ours)}")
    return ours[theirs]


def sampler_from_config(class_name: str, config: Mapping[str, Any]) -> dict[str, Any]:
    """Our sampler spec closest to the pipeline's scheduler: DDIM for a DDIMScheduler, else DDPM,
    with its spacing and clipping (`steps_offset` is not reproduced: our timesteps start at 0)."""
    spec: dict[str, Any] = {
        "spacing": config.get("timestep_spacing", "leading"),
        "clip_denoised": bool(config.get("clip_sample", True)) and not config.get("thresholding", False),
        "clip_range": float(config.get("clip_sample_range", 1.0)),
    }
    if config.get("thresholding", False):
        spec.update(dynamic_threshold=float(config.get("dynamic_thresholding_ratio", 0.995)),
                    dynamic_threshold_max=float(config.get("sample_max_value", 1.0)))
    if class_name.startswith("DDIM"):
        return {"name": "ddim", "num_steps": 50, "eta": 0.0, **spec}
    variance = config.get("variance_type", "fixed_small")
    return {"name": "ddpm", "num_steps": None, "clip_mean": True,
            "variance": variance if variance in ("fixed_small", "fixed_large") else "fixed_small", **spec}
