"""Samplers behind one small interface (`set_timesteps`, then `step`); one file per algorithm."""

from __future__ import annotations

from ddpm_lightning.process import DiffusionProcess
from ddpm_lightning.samplers.base import SPACINGS, Sampler, StepOutput, make_timesteps
from ddpm_lightning.samplers.ddim import DDIMSampler
from ddpm_lightning.samplers.ddpm import DDPMSampler
from ddpm_lightning.samplers.diffusers_adapter import DiffusersSampler
from ddpm_lightning.samplers.dpm_solver import DPMSolverSampler

SAMPLERS: dict[str, type[Sampler]] = {
    DDPMSampler.name: DDPMSampler,
    DDIMSampler.name: DDIMSampler,
    DPMSolverSampler.name: DPMSolverSampler,  # "dpmpp_2m"
    "dpm_solver++": DPMSolverSampler,  # the paper's name; also valid on a Hydra command line
    DiffusersSampler.name: DiffusersSampler,  # "diffusers"
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
    "SPACINGS",
    "DDIMSampler",
    "DDPMSampler",
    "DPMSolverSampler",
    "DiffusersSampler",
    "Sampler",
    "StepOutput",
    "get_sampler",
    "make_timesteps",
]
