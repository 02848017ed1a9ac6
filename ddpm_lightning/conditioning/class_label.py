"""`ClassConditioning`: class labels, with classifier-free guidance (Ho & Salimans 2022).

The network gets `cond = {"class": labels}` (B,) int64. Training replaces a label by the null
class, index `num_classes`, with probability `p_uncond` (their Algorithm 1), so the same network
is also the unconditional model: its class-embedding table has `num_classes + 1` rows (diffusers'
`UNet2DModel(num_class_embeds=num_classes + 1)`, the MLP's label embedding).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from ddpm_lightning.conditioning.base import Conditioning
from ddpm_lightning.denoiser import Cond

KEY = "class"


class ClassConditioning(Conditioning):
    """Class-conditional: batches are (images, labels), labels in [0, num_classes).

    Args:
        num_classes: K, from the data (`datamodule.num_classes`); the null class is K.
        p_uncond: probability of the null class in training (default 0.1).
        guidance_scale: default w at sampling (1: plain conditional).
    """

    type = "class"

    def __init__(self, num_classes: int, p_uncond: float = 0.1, guidance_scale: float = 1.0) -> None:
        super().__init__(p_uncond, guidance_scale)
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"conditioning.num_classes must be a positive integer (null: from the data), got {num_classes!r}")
        self.num_classes = num_classes

    @property
    def null_class(self) -> int:
        return self.num_classes

    def split(self, batch: Any, generator: torch.Generator | None = None) -> tuple[torch.Tensor, Cond]:
        if not isinstance(batch, (tuple, list)) or len(batch) < 2:
            raise ValueError("conditioning=class needs (image, label) batches: set data.labels=true (conditioning=class does)")
        return batch[0], {KEY: batch[1].long()}

    def drop(self, cond: Cond, generator: torch.Generator | None = None) -> Cond:
        if not self.p_uncond or cond is None:
            return cond
        labels = cond[KEY]
        # drawn on the labels' device from the global generator (seeded; kept by the rng_state
        # callback, so a resumed run drops the same labels)
        dropped = torch.rand(labels.shape, device=labels.device, generator=generator) < self.p_uncond
        return {**cond, KEY: torch.where(dropped, torch.full_like(labels, self.null_class), labels)}

    def null(self, cond: Cond) -> Cond:
        labels = torch.as_tensor(cond[KEY]) if cond is not None else torch.zeros(1, dtype=torch.long)
        return {**(cond or {}), KEY: torch.full_like(labels, self.null_class)}

    def network_keys(self) -> dict[str, Any]:
        return {"num_class_embeds": self.num_classes + 1}

    def example(self, batch_size: int, data_shape: tuple[int, ...], device: Any = "cpu") -> Cond:
        return {KEY: torch.arange(batch_size, device=device) % self.num_classes}

    def prepare(self, cond: Any, n: int, device: Any = "cpu") -> Cond:
        """`{"class": 7}`, `{"class": [0, 1, ...]}` (n values, or one) or a (n,) tensor -> (n,) int64;
        `cond=None` draws nothing: it is refused (say which class, or use `balanced`)."""
        if cond is None:
            raise ValueError(f"this model is class-conditional: give cond={{'class': c}} with c in [0, {self.num_classes}) (or cond={{'class': 'all'}})")
        if not isinstance(cond, Mapping) or KEY not in cond:
            raise ValueError(f"a class-conditional model takes cond={{'class': c}}, got {cond!r}")
        value = cond[KEY]
        if isinstance(value, str) and value == "all":
            return {**cond, KEY: self.balanced(n, device)[KEY]}
        labels = torch.as_tensor(value)
        if labels.dtype.is_floating_point or labels.dtype == torch.bool or labels.ndim > 1:
            raise ValueError(f"class labels must be integers, got {value!r}")
        labels = labels.reshape(-1).long()
        if labels.numel() == 1:
            labels = labels.expand(n)
        if labels.numel() != n:
            raise ValueError(f"{labels.numel()} class labels for {n} samples: give one label or one per sample")
        bad = labels[(labels < 0) | (labels >= self.num_classes)]
        if bad.numel():
            raise ValueError(f"class {int(bad[0])} is outside [0, {self.num_classes}): this model has {self.num_classes} classes")
        return {**cond, KEY: labels.to(device)}

    def batch_of(self, cond: Any) -> int | None:
        """n of a list (or 1-D tensor) of labels; None for one label or "all" (they need n)."""
        if not isinstance(cond, Mapping) or isinstance(cond.get(KEY), str) or cond.get(KEY) is None:
            return None
        labels = torch.as_tensor(cond[KEY])
        return labels.numel() if labels.ndim == 1 else None

    def balanced(self, indices: Any, device: Any = "cpu") -> Cond:
        """Sample i gets class i mod K: any K consecutive samples cover every class once, so FID's
        draw is class-balanced, and the labels of sample i do not depend on the batch it is in
        (`noise.fixed_samples`). `indices`: a count n (samples 0..n-1) or the sample indices."""
        idx = torch.arange(indices) if isinstance(indices, int) else torch.as_tensor(list(indices), dtype=torch.long)
        return {KEY: (idx % self.num_classes).to(device)}

    def spec(self) -> dict[str, Any]:
        return {"type": self.type, "num_classes": self.num_classes, "p_uncond": self.p_uncond, "guidance_scale": self.guidance_scale}
