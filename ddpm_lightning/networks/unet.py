"""A thin wrapper over diffusers' `UNet2DModel` that meets our (x_t, t, cond) -> output contract and
checks the data shape before training starts."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from diffusers import UNet2DModel
from torch import nn


class UNet(nn.Module):
    """diffusers' UNet2DModel with the output unwrapped.

    Args:
        in_channels: image channels; None means "not image data" and is refused with advice
            (the configs fill it from `data.channels`).
        sample_size: the image size; only used for the shape check (the UNet itself is
            fully convolutional).
        out_channels: defaults to in_channels.
        num_class_embeds: rows of the class-embedding table (classes + 1 for the null class of
            classifier-free guidance; `conditioning=class` fills it), added to the timestep
            embedding as diffusers does; None: no class input.
        cond_channels: channels of a conditioning image concatenated to x_t (`conditioning=image`
            fills it; SR3 / Palette's input concatenation); 0: none.
        unet_kwargs: any other UNet2DModel argument (block_out_channels, layers_per_block,
            down_block_types, up_block_types, dropout, attention_head_dim, ...).
    """

    def __init__(
        self,
        in_channels: int | None = 3,
        sample_size: int | None = None,
        out_channels: int | None = None,
        num_class_embeds: int | None = None,
        cond_channels: int | None = 0,
        **unet_kwargs,
    ) -> None:
        super().__init__()
        if in_channels is None:
            raise ValueError(
                "the UNet takes images (C, H, W) but the data has no channels (2-D points?): "
                "use network=mlp for data=toy2d"
            )
        for key in ("block_out_channels", "down_block_types", "up_block_types"):
            if key in unet_kwargs and unet_kwargs[key] is not None:
                unet_kwargs[key] = tuple(unet_kwargs[key])
        self.cond_channels = int(cond_channels or 0)
        self.num_class_embeds = num_class_embeds
        self.unet = UNet2DModel(
            sample_size=sample_size,
            in_channels=in_channels + self.cond_channels,
            out_channels=out_channels or in_channels,
            num_class_embeds=num_class_embeds,
            **unet_kwargs,
        )
        self.in_channels = in_channels
        self.out_channels = out_channels or in_channels  # 2 * in_channels for a learned variance
        self.sample_size = sample_size

    @property
    def downsampling_factor(self) -> int:
        # every down block but the last halves the resolution
        n_down = sum(1 for b in self.unet.down_blocks if getattr(b, "downsamplers", None))
        return 2**n_down

    def check_data_shape(self, data_shape: Sequence[int]) -> None:
        """Refuse data this UNet cannot process, with the reason and the fix."""
        if len(data_shape) != 3:
            raise ValueError(
                f"the UNet takes images (C, H, W) but the data has shape {tuple(data_shape)}: "
                "use network=mlp for 2-D points (data=toy2d)"
            )
        c, h, w = data_shape
        if c != self.in_channels:
            raise ValueError(
                f"the data has {c} channel(s) but the network takes in_channels={self.in_channels}"
            )
        f = self.downsampling_factor
        if h % f or w % f:
            raise ValueError(
                f"image size {h}x{w} cannot be downsampled by this UNet: its {len(self.unet.down_blocks)} "
                f"down blocks halve the resolution {f.bit_length() - 1} times, so height and width "
                f"must be multiples of {f} (e.g. data.image_size={max(f, (h // f + 1) * f)})"
            )

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: dict | None = None) -> torch.Tensor:
        # t: int64 timesteps or continuous float time; UNet2DModel embeds either sinusoidally.
        # cond: {"class": (B,) int64} and / or {"image": (B, cond_channels, H, W)}; keys this
        # UNet was not built for are ignored (the contract of ddpm_lightning.denoiser)
        cond = cond or {}
        labels = cond.get("class") if self.num_class_embeds else None
        if self.num_class_embeds and labels is None:
            raise ValueError("this UNet is class-conditional (num_class_embeds set): give cond={'class': labels}")
        if self.cond_channels:
            image = cond.get("image")
            if image is None:
                raise ValueError(f"this UNet takes a {self.cond_channels}-channel conditioning image: give cond={{'image': ...}}")
            x = torch.cat([x, image.to(device=x.device, dtype=x.dtype)], dim=1)
        return self.unet(x, t, class_labels=labels).sample  # (B, C_out, H, W)
