"""Import a diffusers DDPM/DDIM pipeline folder (`unet/` + `scheduler/`) as our module, to sample
it with our samplers or fine-tune it.

The UNet becomes `network=pretrained` (`ddpm_lightning.networks.PretrainedUNet`), the scheduler
config gives the schedule (`diffusers_scheduler.schedule_from_config`), the parameterization
(its `prediction_type`) and the default sampler (DDIM for a DDIMScheduler, else DDPM, with its
spacing and clipping). The conditioning is the one `conditioning.json` records (the diffusers
export writes it for a conditional model, `conditioning_file`), or a `conditioning=` override;
a folder without one is unconditional, and a class-conditional UNet then says what to give.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ddpm_lightning.conditioning import build_conditioning
from ddpm_lightning.export.conditioning_file import read_conditioning
from ddpm_lightning.export.diffusers_scheduler import (
    parameterization_from_config,
    sampler_from_config,
    schedule_from_config,
)
from ddpm_lightning.networks.pretrained import unet_folder


def read_pipeline(path: str | Path) -> tuple[Path, str, dict[str, Any]]:
    """(unet folder, scheduler class name, scheduler config) of a pipeline folder."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"pipeline={str(path)!r} does not exist (a diffusers pipeline folder with unet/ and scheduler/)")
    config_file = path / "scheduler" / "scheduler_config.json"
    if not (path / "unet").is_dir() or not config_file.is_file():
        missing = [p for p in ("unet/", "scheduler/scheduler_config.json") if not (path / p).exists()]
        raise ValueError(f"pipeline={str(path)!r} is not a diffusers pipeline folder: it has no {' and no '.join(missing)}")
    config = json.loads(config_file.read_text())
    return unet_folder(path / "unet"), str(config.get("_class_name", "DDPMScheduler")), config


def module_from_pipeline(path: str | Path, **overrides: Any):
    """A `DiffusionModule` of a diffusers DDPM/DDIM pipeline folder; `overrides` are passed to
    `DiffusionModule` (e.g. `sampler={"name": "dpmpp_2m", "num_steps": 20}`, or the
    `conditioning=` of a class-conditional UNet from elsewhere)."""
    from ddpm_lightning.module import DiffusionModule

    unet_dir, class_name, config = read_pipeline(path)
    unet = json.loads((unet_dir / "config.json").read_text())
    size = unet["sample_size"]
    hw = [size, size] if isinstance(size, int) else list(size)
    conditioning = overrides.get("conditioning", read_conditioning(path))
    # the UNet's in_channels are the data's plus a conditioning image's (SR3 / Palette concatenation)
    cond_channels = build_conditioning(conditioning).network_keys().get("cond_channels", 0)
    kwargs: dict[str, Any] = {
        "network": {"_target_": "ddpm_lightning.networks.PretrainedUNet", "path": str(unet_dir.resolve()),
                    "num_class_embeds": None, "cond_channels": None},  # filled from the conditioning
        "data_shape": [unet["in_channels"] - cond_channels, *hw],
        "conditioning": conditioning,
        "schedule": schedule_from_config(config),
        "parameterization": parameterization_from_config(config),
        "sampler": sampler_from_config(class_name, config),
    }
    return DiffusionModule(**{**kwargs, **overrides}).eval()
