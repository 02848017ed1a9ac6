"""A small MLP denoiser for low-dimensional data (the 2-D toy datasets)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of the timestep (Vaswani et al. 2017, as in DDPM's UNet): (B,) -> (B, dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class MLPDenoiser(nn.Module):
    """x_t (B, dim) and t -> output (B, out_dim), out_dim = dim unless a learned variance asks
    for 2 * dim: residual SiLU MLP blocks conditioned by adding a projected timestep embedding
    to the hidden state. With `num_class_embeds` (classes + 1 for the null class; `conditioning=class`
    fills it) a learned label embedding is added to the timestep's, as diffusers' UNet does."""

    def __init__(self, dim: int = 2, hidden: int = 128, depth: int = 3, time_embed_dim: int = 64, out_dim: int | None = None,
                 num_class_embeds: int | None = None) -> None:
        super().__init__()
        if dim is None or dim < 1:
            raise ValueError(
                f"the MLP denoiser takes vectors (D,), but got dim={dim!r} (image data?): "
                "use a UNet (network=unet_small) for images"
            )
        self.dim, self.time_embed_dim = dim, time_embed_dim
        self.time_mlp = nn.Sequential(nn.Linear(time_embed_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        self.inp = nn.Linear(dim, hidden)
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
            for _ in range(depth)
        )
        self.num_class_embeds = num_class_embeds
        self.class_embed = nn.Embedding(num_class_embeds, hidden) if num_class_embeds else None
        self.out_channels = out_dim or dim  # 2 * dim for a learned variance
        self.out = nn.Sequential(nn.SiLU(), nn.Linear(hidden, self.out_channels))

    def check_data_shape(self, data_shape: Sequence[int]) -> None:
        if tuple(data_shape) != (self.dim,):
            raise ValueError(
                f"the MLP denoiser takes vectors of shape ({self.dim},) but the data has shape "
                f"{tuple(data_shape)}: use a UNet (network=unet_small) for images"
            )

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: dict | None = None) -> torch.Tensor:
        emb = self.time_mlp(timestep_embedding(t, self.time_embed_dim))  # (B, hidden)
        if self.class_embed is not None:
            if not cond or cond.get("class") is None:
                raise ValueError("this MLP is class-conditional (num_class_embeds set): give cond={'class': labels}")
            emb = emb + self.class_embed(cond["class"].long())
        h = self.inp(x)
        for block in self.blocks:
            h = h + block(h + emb)
        return self.out(h)  # (B, out_dim)
