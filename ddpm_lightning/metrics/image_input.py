"""How the feature extractors read images: dtype/range checks, uint8 levels, grey -> RGB.

Every image feature extractor in this package accepts the same two input conventions, so a
callback can pass model samples or dataset batches without converting them first:

- float tensors in [-1, 1] (the range the diffusion model works in), shape (B, C, H, W);
- uint8 tensors in [0, 255] (what a PNG or a guided-diffusion `arr_0` batch holds).

Float inputs are clamped to [-1, 1] (samplers may overshoot by a little) and, by default, rounded
to the 256 uint8 levels, i.e. scored exactly as if the samples had been saved as PNG files. That
is what the reference evaluators (TF FID, the guided-diffusion evaluator, torch-fidelity) see,
and it makes a float image and its uint8 copy give identical features.
"""

from __future__ import annotations

import torch

VALID_CHANNELS = (1, 3)


def check_image_batch(images: torch.Tensor, valid_channels: tuple[int, ...] = VALID_CHANNELS) -> None:
    """Raise a ValueError/TypeError naming the problem if `images` is not a (B, C, H, W) batch."""
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"images must be a torch.Tensor of shape (B, C, H, W), got {type(images).__name__}")
    if images.ndim != 4:
        raise ValueError(f"images must have shape (B, C, H, W), got shape {tuple(images.shape)}")
    if images.shape[1] not in valid_channels:
        raise ValueError(
            f"images must have one of {valid_channels} channels, got {images.shape[1]} "
            f"(shape {tuple(images.shape)}; channels come second: (B, C, H, W))"
        )
    if images.dtype != torch.uint8 and not images.is_floating_point():
        raise TypeError(f"images must be uint8 in [0, 255] or float in [-1, 1], got dtype {images.dtype}")


def to_0_255(images: torch.Tensor, quantize: bool = True) -> torch.Tensor:
    """(B, C, H, W) uint8 [0, 255] or float [-1, 1] -> float32 in [0, 255].

    With `quantize`, float inputs are rounded to integer levels (as saving a PNG would).
    """
    check_image_batch(images)
    if images.dtype == torch.uint8:
        return images.float()
    x = images.float()
    # A float batch in [0, 255] is the one mistake we can detect: scaled as if it were in
    # [-1, 1] it would silently give meaningless features. ([0, 1] floats cannot be told apart.)
    if x.numel() > 0 and x.min() >= 0 and x.max() > 1.5:
        raise ValueError(
            f"float images must be in [-1, 1], got values in [{x.min().item():.3g}, {x.max().item():.3g}]; "
            "pass uint8 images for the [0, 255] range"
        )
    x = (x.clamp(-1.0, 1.0) + 1.0) * 127.5
    return x.round() if quantize else x


def to_minus1_1(images: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) uint8 [0, 255] or float [-1, 1] -> float32 in [-1, 1] (no rounding)."""
    return to_0_255(images, quantize=False) / 127.5 - 1.0


def grey_to_rgb(x: torch.Tensor) -> torch.Tensor:
    """(B, 1, H, W) -> (B, 3, H, W) by repeating the channel; (B, 3, H, W) is returned as is."""
    return x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x
