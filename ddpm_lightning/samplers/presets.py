"""The sampler group's presets (conf/sampler/<name>.yaml) as plain dicts, for code that picks a
sampler by name outside Hydra (`DiffusionModule.make_sampler("ddim")`, the sample command)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

PRESET_DIR = Path(__file__).resolve().parents[1] / "conf" / "sampler"


def sampler_preset(name: str) -> dict[str, Any]:
    """The options of sampler `name` from its preset (conf/sampler/<name>.yaml), or just the
    name for a sampler without one."""
    path = PRESET_DIR / f"{name}.yaml"
    if not path.is_file():
        return {"name": name}  # get_sampler names the valid choices if this one is unknown
    return OmegaConf.to_container(OmegaConf.load(path), resolve=True)
