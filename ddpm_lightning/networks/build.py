"""Building a network for a dataset, and the start-up check that it can process the data."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn


def check_network(network: nn.Module, data_shape: Sequence[int], output_factor: int = 1, cond: Mapping[str, Any] | None = None) -> None:
    """Raise ValueError if `network` cannot map (B, *data_shape) to outputs of `output_factor`
    times the data's channels (2 for a learned variance: `ddpm_lightning.variance`), given the
    conditioning inputs `cond` of two examples (None: unconditional).

    Our networks check their shape rules directly (clear messages); any other module gets a
    dry run on two zero inputs."""
    expected_out = data_shape[0] * output_factor
    if hasattr(network, "check_data_shape"):
        network.check_data_shape(data_shape)
        out = getattr(network, "out_channels", None)
        if out is not None and out != expected_out:
            raise ValueError(_channels_message(out, expected_out, output_factor, data_shape))
        return
    x = torch.zeros(2, *data_shape)
    t = torch.zeros(2, dtype=torch.long)
    try:
        with torch.no_grad():
            out = network(x, t) if cond is None else network(x, t, cond)
    except Exception as err:  # noqa: BLE001 - any failure means the pairing is wrong
        raise ValueError(
            f"network {type(network).__name__} fails on data of shape {tuple(data_shape)}: {err}"
        ) from err
    expected = (2, expected_out, *data_shape[1:])
    if not torch.is_tensor(out) or out.shape != expected:
        got = tuple(out.shape) if torch.is_tensor(out) else type(out).__name__
        if torch.is_tensor(out) and out.shape[0] == 2 and tuple(out.shape[2:]) == tuple(data_shape[1:]):
            raise ValueError(_channels_message(out.shape[1], expected_out, output_factor, data_shape))
        raise ValueError(
            f"network {type(network).__name__} must return a tensor of shape {expected} for input "
            f"{tuple(x.shape)}, got {got} (contract: network(x_t, t, cond=None) -> output)"
        )


def _channels_message(got: int, expected: int, factor: int, data_shape: Sequence[int]) -> str:
    why = f"a learned variance needs {factor} x {data_shape[0]} (mean and variance)" if factor > 1 else "one per data channel"
    return f"the network outputs {got} channel(s) but {expected} are needed: {why}; set its out_channels / out_dim to {expected} (or null)"


# Config keys that, when left null, are filled from the data shape at build time (and, for
# `num_class_embeds` / `cond_channels`, from the conditioning: `Conditioning.network_keys`).
SHAPE_KEYS = ("in_channels", "out_channels", "sample_size", "dim", "out_dim", "num_class_embeds", "cond_channels")


def fill_shape_keys(cfg: Mapping[str, Any], data_shape: Sequence[int], output_factor: int = 1,
                    conditioning_keys: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A copy of a network config whose null `in_channels` / `out_channels` / `sample_size`
    (images) or `dim` / `out_dim` (vectors) are set from `data_shape`; the outputs get
    `output_factor` times the data's channels (2 for a learned variance). `conditioning_keys`
    (e.g. `{"num_class_embeds": 11}`) fill their null keys too; a conditioning key the config
    does not have is refused (the network could not take that condition). Explicit values are
    kept (and then checked by `check_network`)."""
    cfg = dict(cfg)
    for key, value in (conditioning_keys or {}).items():
        if key not in cfg and "_target_" in cfg:
            raise ValueError(
                f"network {cfg['_target_']} has no {key!r} option, so it cannot take this conditioning; "
                "use network=unet_small / unet_ddpm_cifar10 (images) or mlp (class labels only)"
            )
        if cfg.get(key) is None:
            cfg[key] = value
    if len(data_shape) == 3:
        c = data_shape[0]
        fill = {"in_channels": c, "out_channels": c * output_factor, "sample_size": data_shape[1]}
    elif len(data_shape) == 1:
        fill = {"dim": data_shape[0], "out_dim": data_shape[0] * output_factor}
    else:
        fill = {}
    for key, value in fill.items():
        if key in cfg and cfg[key] is None:
            cfg[key] = value
    return cfg
