"""Network presets for plain-Python use: the same YAML files Hydra composes (conf/network/),
so `python train.py network=unet_small` and `network_config("unet_small", shape)` build the
same network."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch import nn

from ddpm_lightning.networks.build import check_network, fill_shape_keys

PRESET_DIR = Path(__file__).resolve().parents[1] / "conf" / "network"


def presets() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def network_config(name: str, data_shape: Sequence[int], **overrides: Any) -> dict[str, Any]:
    """The config dict of preset `name` (conf/network/<name>.yaml) for data of `data_shape`.

    Pass it as `DiffusionModule(network=...)`: a config dict is stored in the checkpoint, so
    `load_from_checkpoint(path)` alone rebuilds the network."""
    path = PRESET_DIR / f"{name}.yaml"
    if not path.is_file():
        raise ValueError(f"unknown network preset {name!r}; choose one of {presets()}")
    cfg = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    cfg.update(overrides)
    return fill_shape_keys(cfg, data_shape)


def build_network(name: str, data_shape: Sequence[int], **overrides: Any) -> nn.Module:
    """Instantiate preset `name` for `data_shape` and check that it fits the data."""
    net = instantiate(network_config(name, data_shape, **overrides))
    check_network(net, data_shape)
    return net
