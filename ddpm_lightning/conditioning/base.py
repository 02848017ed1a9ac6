"""`Conditioning`: what a model is conditioned on, as one object the module, the samplers' callers,
the callbacks and the commands share.

A conditioning says

* how a batch becomes (x0, cond): `split(batch)`; cond is the dict handed to the network as
  `network(x_t, t, cond)` (`ddpm_lightning.denoiser`), e.g. `{"class": labels}`;
* how training drops the condition for classifier-free guidance (Ho & Salimans 2022, Alg. 1:
  cond replaced by the null condition with probability `p_uncond`): `drop(cond)`;
* what the null (unconditional) input is: `null(cond)`;
* which network keys it fills (`network_keys`: a class-embedding table, extra input channels);
* how a user's cond (`{"class": 7}`) becomes the batched, checked tensors the network takes:
  `prepare(cond, n, device)`.

This base class is the unconditional model (`conditioning=none`, and every model and checkpoint
from before conditioning existed). A new kind of conditioning is a new subclass in its own file,
registered in `ddpm_lightning.conditioning.build`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch

from ddpm_lightning.denoiser import Cond
from ddpm_lightning.guidance import ClassifierFreeGuidance, check_guidance
from ddpm_lightning.parameterizations import Prediction


def check_p_uncond(p: Any) -> float:
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 <= p < 1:
        raise ValueError(f"conditioning.p_uncond must be in [0, 1) (the share of training examples with the null condition), got {p!r}")
    return float(p)


class Conditioning:
    """Unconditional: batches are images (or (image, label) pairs whose label is ignored).

    Args:
        p_uncond: probability of the null condition in training (classifier-free guidance).
        guidance_scale: the default w for sampling (validation grids, FID, the sample command),
            in diffusers' convention (1: conditional, 0: unconditional, > 1: guided).
    """

    type = "none"

    def __init__(self, p_uncond: float = 0.0, guidance_scale: float = 1.0) -> None:
        self.p_uncond = check_p_uncond(p_uncond)
        check_guidance(guidance_scale)
        self.guidance_scale = float(guidance_scale)

    @property
    def is_conditional(self) -> bool:
        return self.type != "none"

    # ---- training ----------------------------------------------------------------------------
    def split(self, batch: Any, generator: torch.Generator | None = None) -> tuple[torch.Tensor, Cond]:
        """(x0, cond) of a batch: a tensor, or a tuple / list whose first item is the images.
        `generator`: for a cond drawn at random (inpainting masks), validation's fixed draw."""
        return (batch[0] if isinstance(batch, (tuple, list)) else batch), None

    def drop(self, cond: Cond, generator: torch.Generator | None = None) -> Cond:
        """cond with each example's condition replaced by the null one with probability p_uncond."""
        return cond

    def null(self, cond: Cond) -> Cond:
        """The unconditional inputs matching `cond` (classifier-free guidance's second pass)."""
        raise ValueError("this model is unconditional: it has no null condition to guide with")

    # ---- the network ---------------------------------------------------------------------------
    def network_keys(self) -> dict[str, Any]:
        """Network config keys this conditioning fills when they are null (`fill_shape_keys`)."""
        return {}

    def example(self, batch_size: int, data_shape: tuple[int, ...], device: Any = "cpu") -> Cond:
        """A cond of `batch_size` rows for a dry run of the network (start-up checks, export)."""
        return None

    # ---- sampling ------------------------------------------------------------------------------
    def prepare(self, cond: Any, n: int, device: Any = "cpu") -> Cond:
        """A user's cond as the network's batched tensors for `n` samples, checked (one line)."""
        if cond is not None:
            raise ValueError(
                f"this model is unconditional (trained with conditioning=none), but cond={_short(cond)} was given; "
                "train with conditioning=class (or image) to condition samples"
            )
        return None

    def batch_of(self, cond: Any) -> int | None:
        """The number of samples a user's cond asks for by itself (a batch of condition images,
        a list of labels), so that `sample(cond=...)` needs no n; None where it does not say."""
        return None

    def balanced(self, indices: Any, device: Any = "cpu") -> Cond:
        """The cond of samples `indices` (or a count n) covering the conditions evenly (grids,
        FID), sample i's depending on i only; None where there is nothing to draw (unconditional,
        or a condition that must be given, such as an image)."""
        return None

    def guided(self, denoiser: Callable[..., Prediction], scale: float | None = None, rescale: float = 0.0) -> Callable[..., Prediction]:
        """The denoiser to sample with: itself at w = 1 (or for an unconditional model asked for
        nothing), else classifier-free guidance at w (`ddpm_lightning.guidance`)."""
        w = self.guidance_scale if scale is None else scale
        check_guidance(w, rescale)
        if float(w) == 1.0 and not rescale:
            return denoiser
        if not self.is_conditional:
            raise ValueError(f"guidance_scale={w!r} needs a conditional model; this one is unconditional (use guidance_scale=1)")
        if self.p_uncond == 0:
            raise ValueError(
                f"guidance_scale={w!r} needs a model trained with condition dropout (conditioning.p_uncond > 0); "
                "this one was trained with p_uncond=0, so its null condition means nothing: use guidance_scale=1"
            )
        return ClassifierFreeGuidance(denoiser, w, self.null, rescale)

    # ---- persistence ---------------------------------------------------------------------------
    def spec(self) -> dict[str, Any] | None:
        """What rebuilds this conditioning (`build_conditioning`); None for unconditional."""
        return None

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.spec()})"


def _short(cond: Any) -> str:
    if isinstance(cond, Mapping):
        return "{" + ", ".join(f"{k!r}: ..." for k in cond) + "}"
    return type(cond).__name__
