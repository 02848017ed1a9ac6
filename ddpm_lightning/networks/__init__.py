"""Denoising networks. The contract every network meets: `network(x_t, t, cond=None) -> output`,
with x_t of shape (B, *data_shape), t a (B,) tensor of timesteps (int64 in [0, T), or float
continuous time), cond a dict of conditioning inputs or None, and the output of the same shape
as x_t (twice its channels for a learned variance), whatever the parameterization predicts.
Any `nn.Module` with that contract can be used through a Hydra `_target_`; see
`ddpm_lightning.denoiser`."""

from ddpm_lightning.networks.build import check_network, fill_shape_keys
from ddpm_lightning.networks.mlp import MLPDenoiser
from ddpm_lightning.networks.pretrained import PretrainedUNet
from ddpm_lightning.networks.presets import build_network, network_config, presets
from ddpm_lightning.networks.unet import UNet

__all__ = ["MLPDenoiser", "PretrainedUNet", "UNet", "build_network", "check_network", "fill_shape_keys", "network_config", "presets"]
