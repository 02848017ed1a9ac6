"""Samplers behind one small interface (`set_timesteps`, then `sample_step` / `step`); one file
per algorithm. The sigma-space samplers (Karras et al. 2022) share `sigmas.SigmaSampler`."""

from __future__ import annotations

from ddpm_lightning.process import DiffusionProcess
from ddpm_lightning.samplers.base import SPACINGS, Sampler, StepOutput, make_timesteps
from ddpm_lightning.samplers.ddim import DDIMSampler
from ddpm_lightning.samplers.ddpm import DDPMSampler
from ddpm_lightning.samplers.diffusers_adapter import DiffusersSampler
from ddpm_lightning.samplers.dpm_solver import DPMSolverSampler
from ddpm_lightning.samplers.dpmpp_2m_sde import DPMSolverSDESampler
from ddpm_lightning.samplers.euler import EulerSampler
from ddpm_lightning.samplers.euler_ancestral import EulerAncestralSampler
from ddpm_lightning.samplers.heun import HeunSampler
from ddpm_lightning.samplers.sigmas import SIGMA_SPACINGS, SigmaSampler, karras_sigmas, make_sigmas

SAMPLERS: dict[str, type[Sampler]] = {
    DDPMSampler.name: DDPMSampler,
    DDIMSampler.name: DDIMSampler,
    DPMSolverSampler.name: DPMSolverSampler,  # "dpmpp_2m"; sigmas=karras: "DPM++ 2M Karras"
    "dpm_solver++": DPMSolverSampler,  # the paper's name; also valid on a Hydra command line
    DiffusersSampler.name: DiffusersSampler,  # "diffusers"
    EulerSampler.name: EulerSampler,  # "euler"
    HeunSampler.name: HeunSampler,  # "heun"
    EulerAncestralSampler.name: EulerAncestralSampler,  # "euler_ancestral"
    DPMSolverSDESampler.name: DPMSolverSDESampler,  # "dpmpp_2m_sde"
}


def get_sampler(name: str | Sampler, process: DiffusionProcess, **kwargs) -> Sampler:
    """A sampler from its name and options (or the instance itself)."""
    if isinstance(name, Sampler):
        return name
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; choose one of {list(SAMPLERS)}")
    return SAMPLERS[name](process, **kwargs)


__all__ = [
    "SAMPLERS",
    "SIGMA_SPACINGS",
    "SPACINGS",
    "DDIMSampler",
    "DDPMSampler",
    "DPMSolverSDESampler",
    "DPMSolverSampler",
    "DiffusersSampler",
    "EulerAncestralSampler",
    "EulerSampler",
    "HeunSampler",
    "Sampler",
    "SigmaSampler",
    "StepOutput",
    "get_sampler",
    "karras_sigmas",
    "make_sigmas",
    "make_timesteps",
]
