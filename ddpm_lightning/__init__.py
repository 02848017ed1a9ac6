"""ddpm_lightning: denoising diffusion models (DDPM, DDIM and descendants) with PyTorch
Lightning and Hydra.

The public API, importable from the package root:

* math (plain PyTorch): `DiffusionProcess`, `make_betas`, `get_parameterization`,
  `Prediction`, `Denoiser` (network + parameterization), `DiffusionLoss`, `diffusion_loss`,
  `get_sampler`, `DDPMSampler`, `DDIMSampler`, `sample`;
* training: `DiffusionModule`, `EMA`, `SampleGrid`, `FID`, and the datamodules of `ddpm_lightning.data`.
"""

from ddpm_lightning.denoiser import Denoiser
from ddpm_lightning.losses import DiffusionLoss, diffusion_loss
from ddpm_lightning.parameterizations import PARAMETERIZATIONS, Prediction, get_parameterization
from ddpm_lightning.process import DiffusionProcess, extract
from ddpm_lightning.samplers import SAMPLERS, DDIMSampler, DDPMSampler, Sampler, get_sampler
from ddpm_lightning.sampling import SampleOutput, sample
from ddpm_lightning.schedules import SCHEDULES, make_betas

__version__ = "0.1.0"


def __getattr__(name: str):
    # The Lightning side is imported lazily: the math stays importable without loading Lightning.
    if name == "DiffusionModule":
        from ddpm_lightning import module

        return module.DiffusionModule
    if name == "noise_loader":
        from ddpm_lightning.noise import noise_loader

        return noise_loader
    if name in ("EMA", "FID", "SampleGrid"):
        from ddpm_lightning import callbacks

        return getattr(callbacks, name)
    raise AttributeError(f"module 'ddpm_lightning' has no attribute {name!r}")


__all__ = [
    "PARAMETERIZATIONS",
    "SAMPLERS",
    "SCHEDULES",
    "DDIMSampler",
    "DDPMSampler",
    "Denoiser",
    "DiffusionLoss",
    "DiffusionModule",
    "DiffusionProcess",
    "EMA",
    "FID",
    "Prediction",
    "SampleGrid",
    "SampleOutput",
    "Sampler",
    "diffusion_loss",
    "extract",
    "get_parameterization",
    "get_sampler",
    "make_betas",
    "noise_loader",
    "sample",
]
