"""`ImageConditioning`: image-to-image diffusion (SR3, Saharia et al. 2021; Palette, Saharia et
al. 2022): the network gets a conditioning image built from the target, `cond = {"image": c}`
(B, c, H, W), concatenated to x_t on the channels (`networks.UNet(cond_channels=c)`).

The task (`image_tasks`) makes the (target, condition) pairs from any image dataset: the batch's
images are the targets x0 and the condition is computed from them on their device, so no data
set needs pairs. Training draws random inpainting masks from the global generator (seeded, and
restored on resume by the rng_state callback); validation passes its own per-batch generator, so
its masks are the same at every validation. The null condition (classifier-free guidance) is an
all-zero image: it means something only for a model trained with p_uncond > 0.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from ddpm_lightning.conditioning import image_tasks
from ddpm_lightning.conditioning.base import Conditioning
from ddpm_lightning.conditioning.build import register
from ddpm_lightning.denoiser import Cond

KEY = "image"


@register
class ImageConditioning(Conditioning):
    """Conditioned on an image derived from the target by `task`.

    Args:
        task: "super_resolution", "inpainting" or "colorization" (`image_tasks`).
        factor: super-resolution's downsampling factor (it must divide the image size).
        p_uncond: probability of the null (all-zero) condition in training; 0: none.
        guidance_scale: default w at sampling (1: plain conditional; other values need p_uncond > 0).
        data_shape: (C, H, W) of the data (train.py fills it from the datamodule,
            `conditioning_for_data`); it sets the condition's channels and checks given images.
        min_area, max_area, mask: inpainting's random masks: the share of the image each covers,
            drawn uniformly in [min_area, max_area], and their kind ("mixed", "box", "stroke").
    """

    type = "image"

    def __init__(
        self,
        task: str = "super_resolution",
        factor: int = 4,
        p_uncond: float = 0.0,
        guidance_scale: float = 1.0,
        data_shape: Sequence[int] | None = None,
        min_area: float = 0.1,
        max_area: float = 0.5,
        mask: str = "mixed",
    ) -> None:
        super().__init__(p_uncond, guidance_scale)
        if data_shape is not None:
            data_shape = tuple(int(d) for d in data_shape)
            if len(data_shape) != 3:
                raise ValueError(f"conditioning=image needs image data (C, H, W), but the data has shape {data_shape}: use an image data set")
        image_tasks.check_task(task, data_shape[0] if data_shape else None, data_shape[1:] if data_shape else None, factor)
        image_tasks.check_masks(min_area, max_area, mask)
        self.task, self.factor, self.data_shape = task, int(factor), data_shape
        self.min_area, self.max_area, self.mask = float(min_area), float(max_area), mask

    @property
    def cond_channels(self) -> int:
        if self.data_shape is None:
            raise ValueError("conditioning=image needs the data's shape: give conditioning data_shape=[C, H, W] (train.py fills it from the data)")
        return image_tasks.cond_channels(self.task, self.data_shape[0])

    # ---- the condition of a target -------------------------------------------------------------
    def condition_for(self, x0: torch.Tensor, generator: torch.Generator | None = None, mask: torch.Tensor | None = None) -> torch.Tensor:
        """The task's condition (B, c, H, W) of targets x0 (B, C, H, W) in [-1, 1]: what training
        sees, and what grids and evaluation restore. Inpainting draws random masks from
        `generator` (None: the global generator of x0's device) unless `mask` (B or 1, 1, H, W) is given."""
        if self.task == "super_resolution":
            return image_tasks.super_resolution(x0, self.factor)
        if self.task == "colorization":
            return image_tasks.colorization(x0)
        options = {"min_area": self.min_area, "max_area": self.max_area, "kind": self.mask}
        return image_tasks.inpainting(x0, generator, mask=mask, **options)

    def picture(self, cond: torch.Tensor, channels: int) -> torch.Tensor:
        """A condition as an image of `channels` channels, to show beside the samples: the
        masked image (its hole mid-grey) for inpainting, the grey image repeated for colorization."""
        image = cond[:, :channels] if self.task == "inpainting" else cond
        return image.expand(-1, channels, -1, -1) if image.shape[1] == 1 else image

    # ---- training ------------------------------------------------------------------------------
    def split(self, batch: Any, generator: torch.Generator | None = None) -> tuple[torch.Tensor, Cond]:
        x0 = batch[0] if isinstance(batch, (tuple, list)) else batch  # labels, if any, are ignored
        return x0, {KEY: self.condition_for(x0, generator)}

    def drop(self, cond: Cond, generator: torch.Generator | None = None) -> Cond:
        if not self.p_uncond or cond is None:
            return cond
        image = cond[KEY]
        dev = generator.device if generator is not None else image.device
        dropped = (torch.rand(len(image), device=dev, generator=generator) < self.p_uncond).to(image.device)
        return {**cond, KEY: torch.where(dropped[:, None, None, None], torch.zeros_like(image), image)}

    def null(self, cond: Cond) -> Cond:
        return {**cond, KEY: torch.zeros_like(cond[KEY])}

    # ---- the network ---------------------------------------------------------------------------
    def network_keys(self) -> dict[str, Any]:
        return {"cond_channels": self.cond_channels}

    def example(self, batch_size: int, data_shape: tuple[int, ...], device: Any = "cpu") -> Cond:
        self._check_data(data_shape)
        x0 = torch.zeros(batch_size, *data_shape, device=device)
        return {KEY: self.condition_for(x0, torch.Generator().manual_seed(0))}

    def _check_data(self, data_shape: Sequence[int]) -> None:
        if self.data_shape is not None and tuple(data_shape) != self.data_shape:
            raise ValueError(f"conditioning data_shape {list(self.data_shape)} differs from the data's {list(data_shape)}")

    # ---- sampling ------------------------------------------------------------------------------
    def batch_of(self, cond: Any) -> int | None:
        """n of a batch of condition images (n, c, H, W); one image (c, H, W) is one sample."""
        if not isinstance(cond, Mapping) or not isinstance(cond.get(KEY), torch.Tensor):
            return None
        image = cond[KEY]
        return len(image) if image.ndim == 4 else 1 if image.ndim == 3 else None

    def prepare(self, cond: Any, n: int, device: Any = "cpu") -> Cond:
        """`{"image": tensor}` -> (n, c, H, W) on `device`: the condition itself ((c, H, W), or
        (1 or n, c, H, W)), or for super-resolution also the low-resolution image (C, H/factor,
        W/factor), resized as training does. Build one from a target with `condition_for`."""
        c = self.cond_channels
        _, h, w = self.data_shape
        if not isinstance(cond, Mapping) or KEY not in cond:
            raise ValueError(f"this model is image-conditioned (task {self.task}): give cond={{'image': tensor}} of shape (n, {c}, {h}, {w})"
                             " (condition_for(x0) builds it from target images)")
        image = torch.as_tensor(cond[KEY])
        image = image[None] if image.ndim == 3 else image
        if image.ndim != 4 or not image.dtype.is_floating_point:
            raise ValueError(f"cond['image'] must be a float tensor (n, {c}, {h}, {w}) in [-1, 1], got {image.dtype} of shape {tuple(image.shape)}")
        low = (h // self.factor, w // self.factor)
        if self.task == "super_resolution" and tuple(image.shape[1:]) == (c, *low):
            image = image_tasks.upsample(image.float(), (h, w))
        if tuple(image.shape[1:]) != (c, h, w):
            also = f" (or the low-resolution ({c}, {low[0]}, {low[1]}))" if self.task == "super_resolution" else ""
            raise ValueError(f"the conditioning image has shape {tuple(image.shape[1:])} but this model takes ({c}, {h}, {w}){also}")
        if len(image) not in (1, n):
            raise ValueError(f"{len(image)} conditioning images for {n} samples: give one, or one per sample "
                             f"(or leave n out: it is taken from the images' batch)")
        return {**cond, KEY: image.to(device=device, dtype=torch.float32).expand(n, -1, -1, -1)}

    # ---- persistence ---------------------------------------------------------------------------
    def spec(self) -> dict[str, Any]:
        return {"type": self.type, "task": self.task, "factor": self.factor, "p_uncond": self.p_uncond,
                "guidance_scale": self.guidance_scale, "data_shape": list(self.data_shape) if self.data_shape else None,
                "min_area": self.min_area, "max_area": self.max_area, "mask": self.mask}
