"""Building a network for a dataset, and the start-up check that it can process the data."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn


def check_network(network: nn.Module, data_shape: Sequence[int]) -> None:
    """Raise ValueError if `network` cannot map (B, *data_shape) to the same shape.

    Our networks check their shape rules directly (clear messages); any other module gets a
    dry run on two zero inputs."""
    if hasattr(network, "check_data_shape"):
        network.check_data_shape(data_shape)
        return
    x = torch.zeros(2, *data_shape)
    t = torch.zeros(2, dtype=torch.long)
    try:
        with torch.no_grad():
            out = network(x, t)
    except Exception as err:  # noqa: BLE001 - any failure means the pairing is wrong
        raise ValueError(
            f"network {type(network).__name__} fails on data of shape {tuple(data_shape)}: {err}"
        ) from err
    if not torch.is_tensor(out) or out.shape != x.shape:
        got = tuple(out.shape) if torch.is_tensor(out) else type(out).__name__
        raise ValueError(
            f"network {type(network).__name__} must return a tensor shaped like its input "
            f"{tuple(x.shape)}, got {got} (contract: network(x_t, t) -> output)"
        )


# Config keys that, when left null, are filled from the data shape at build time.
SHAPE_KEYS = ("in_channels", "out_channels", "sample_size", "dim")


def fill_shape_keys(cfg: Mapping[str, Any], data_shape: Sequence[int]) -> dict[str, Any]:
    """A copy of a network config whose null `in_channels` / `out_channels` / `sample_size`
    (images) or `dim` (vectors) are set from `data_shape`; explicit values are kept (and then
    checked by `check_network`)."""
    cfg = dict(cfg)
    if len(data_shape) == 3:
        fill = {"in_channels": data_shape[0], "out_channels": data_shape[0], "sample_size": data_shape[1]}
    elif len(data_shape) == 1:
        fill = {"dim": data_shape[0]}
    else:
        fill = {}
    for key, value in fill.items():
        if key in cfg and cfg[key] is None:
            cfg[key] = value
    return cfg
