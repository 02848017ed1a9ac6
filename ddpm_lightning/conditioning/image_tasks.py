"""Image-to-image tasks as pure functions: each builds the conditioning image of a target x0.

x0 is (B, C, H, W) in [-1, 1]; the condition is concatenated to x_t on the channels by the
network (SR3, Saharia et al. 2021; Palette, Saharia et al. 2022), so it has x0's size:

* `super_resolution(x0, factor)`: x0 downsampled by `factor` with an area (box) filter, the
  antialiased average of each factor x factor block, then resized back to H x W bilinearly
  (SR3's convention: the low-resolution input upsampled to the target size). C channels.
* `inpainting(x0, generator)`: x0 with the masked region set to 0, plus the mask as one more
  channel (1 = to generate, 0 = keep: diffusers' convention). C + 1 channels. Masks are drawn by
  `random_masks`: a rectangle or a free-form brush stroke (Palette's two mask families), covering
  a share of the image drawn uniformly in [min_area, max_area].
* `colorization(x0)`: the luma of RGB data, Y' = 0.299 R + 0.587 G + 0.114 B (ITU-R BT.601).
  1 channel. It is linear with weights summing to 1, so it maps [-1, 1] onto [-1, 1].
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

TASKS = ("super_resolution", "inpainting", "colorization")
MASK_KINDS = ("mixed", "box", "stroke")
BT601 = (0.299, 0.587, 0.114)  # ITU-R BT.601 luma weights of R, G, B


def cond_channels(task: str, channels: int) -> int:
    """Channels of the condition of `task` for data with `channels` channels."""
    check_task(task, channels)
    return {"super_resolution": channels, "inpainting": channels + 1, "colorization": 1}[task]


def check_task(task: str, channels: int | None = None, size: tuple[int, int] | None = None, factor: int = 4) -> None:
    """One line for a task the data cannot have (before any work)."""
    if task not in TASKS:
        raise ValueError(f"conditioning.task={task!r} is not an image task; choose one of {list(TASKS)}")
    if task == "colorization" and channels is not None and channels != 3:
        raise ValueError(f"conditioning.task=colorization needs RGB data (3 channels), but the data has {channels}: use data=cifar10 (or another RGB set)")
    if task == "super_resolution":
        if isinstance(factor, bool) or not isinstance(factor, int) or factor < 2:
            raise ValueError(f"conditioning.factor must be an integer >= 2 (the downsampling factor), got {factor!r}")
        if size is not None and (size[0] % factor or size[1] % factor):
            raise ValueError(f"conditioning.factor={factor} must divide the image size {size[0]}x{size[1]} (the low-resolution image is H/factor x W/factor)")


# ---- super-resolution ---------------------------------------------------------------------------
def downsample(x0: torch.Tensor, factor: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, C, H/factor, W/factor): the mean of each factor x factor block."""
    return F.interpolate(x0, scale_factor=1 / factor, mode="area")


def upsample(low: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """A low-resolution image resized bilinearly to `size` (half-pixel centres)."""
    return F.interpolate(low, size=tuple(size), mode="bilinear", align_corners=False)


def super_resolution(x0: torch.Tensor, factor: int = 4) -> torch.Tensor:
    """SR3's condition: x0 downsampled by `factor`, then resized back to x0's size. (B, C, H, W)."""
    check_task("super_resolution", size=tuple(x0.shape[-2:]), factor=factor)
    return upsample(downsample(x0, factor), x0.shape[-2:])


# ---- inpainting ---------------------------------------------------------------------------------
def _uniform(shape: tuple[int, ...], generator: torch.Generator | None, device: Any) -> torch.Tensor:
    # drawn on the generator's device (a CPU generator gives the same masks on any device) or,
    # without one, from the global generator of `device`; then moved
    dev = generator.device if generator is not None else device
    return torch.rand(shape, generator=generator, device=dev).to(device)


def _first_pixels(keys: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
    """(B, P) distinct keys -> bool mask of the `count` (B,) pixels with the smallest keys."""
    ranks = keys.argsort(dim=1).argsort(dim=1)  # rank of each pixel's key in its row
    return ranks < count[:, None]


def _box_keys(b: int, h: int, w: int, pixels: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Pixel priorities that fill a rectangle of about `pixels` area (aspect ratio in [1/2, 2],
    random position) in raster order, then the rest of the image: trimming the rectangle to
    exactly `pixels` leaves at most its last row partly filled."""
    aspect = torch.exp((u[:, 0] * 2 - 1) * math.log(2.0))
    bh = torch.sqrt(pixels * aspect).ceil().clamp(1, h)
    bw = (pixels / bh).ceil().clamp(1, w)
    bh = torch.maximum(bh, (pixels / bw).ceil()).clamp(1, h)  # bh x bw >= pixels after clamping
    top = (u[:, 1] * (h - bh + 1)).floor()
    left = (u[:, 2] * (w - bw + 1)).floor()
    rows = torch.arange(h, device=u.device, dtype=u.dtype)[None, :, None]
    cols = torch.arange(w, device=u.device, dtype=u.dtype)[None, None, :]
    t, l, bh, bw = (v[:, None, None] for v in (top, left, bh, bw))
    inside = (rows >= t) & (rows < t + bh) & (cols >= l) & (cols < l + bw)  # (B, H, W)
    raster = torch.arange(h * w, device=u.device).expand(b, -1)
    return torch.where(inside.reshape(b, -1), raster, raster + h * w)


def _stroke_keys(b: int, h: int, w: int, pixels: torch.Tensor, generator: torch.Generator | None, device: Any) -> torch.Tensor:
    """Pixel priorities along a random brush stroke: a walk of dabs (discs of radius h/10..h/5,
    one radius apart, turning by U(-0.8, 0.8) rad each step, reflected at the borders); a pixel's
    key is the index of the first dab that covers it, so trimming to `pixels` keeps the stroke's
    beginning. Dabs are painted until every stroke covers its `pixels` (or `steps` ran out: the
    rest is filled in raster order)."""
    r_min = max(1.0, min(h, w) / 10)
    steps, chunk = 128, 8
    u = _uniform((b, 4 + steps), generator, device)
    radius = r_min * (1 + u[:, 0])  # (B,)
    y, x = u[:, 1] * (h - 1), u[:, 2] * (w - 1)
    angle = u[:, 3] * 2 * math.pi
    turns = (u[:, 4:] * 2 - 1) * 0.8  # (B, steps) radians
    centres = []
    for k in range(steps):  # the walk: (B,) tensors only
        centres.append(torch.stack([y, x], dim=1))
        angle = angle + turns[:, k]
        y, x = y + radius * torch.sin(angle), x + radius * torch.cos(angle)
        # reflect at the borders (and turn around), so the stroke stays in the image
        out_y, out_x = (y < 0) | (y > h - 1), (x < 0) | (x > w - 1)
        y, x = y.clamp(0, h - 1), x.clamp(0, w - 1)
        angle = torch.where(out_y, -angle, angle)
        angle = torch.where(out_x, math.pi - angle, angle)
    centres = torch.stack(centres, dim=1)  # (B, steps, 2)
    yy = torch.arange(h, device=device, dtype=u.dtype).repeat_interleave(w)[None, :, None]  # (1, H * W, 1)
    xx = torch.arange(w, device=device, dtype=u.dtype).repeat(h)[None, :, None]
    r2 = (radius**2)[:, None, None]
    first = torch.full((b, h * w), steps, device=device, dtype=torch.long)
    for start in range(0, steps, chunk):  # dabs in order, a chunk at a time (the dabs last: a fast reduction)
        c = centres[:, None, start : start + chunk]  # (B, 1, chunk, 2)
        disc = (yy - c[..., 0]) ** 2 + (xx - c[..., 1]) ** 2 <= r2  # (B, H * W, chunk)
        index = torch.arange(start, start + c.shape[2], device=device)
        first = torch.minimum(first, torch.where(disc, index, steps).amin(dim=2))
        if bool(((first < steps).sum(1) >= pixels).all()):
            break
    raster = torch.arange(h * w, device=device).expand(b, -1)
    return first * (h * w) + raster


def random_masks(
    n: int,
    size: tuple[int, int],
    generator: torch.Generator | None = None,
    device: Any = "cpu",
    min_area: float = 0.1,
    max_area: float = 0.5,
    kind: str = "mixed",
) -> torch.Tensor:
    """(n, 1, H, W) float masks, 1 = to generate. Each covers exactly round(a * H * W) pixels,
    a ~ U[min_area, max_area]: a rectangle (aspect ratio in [1/2, 2], its last row possibly
    partial), a free-form brush stroke, or (kind="mixed") either with probability 1/2."""
    check_masks(min_area, max_area, kind)
    h, w = size
    u = _uniform((n, 5), generator, device)
    area = min_area + (max_area - min_area) * u[:, 3]
    pixels = (area * h * w).round().clamp(math.ceil(min_area * h * w), math.floor(max_area * h * w))
    keys = _box_keys(n, h, w, pixels, u[:, :3]) if kind != "stroke" else None
    if kind != "box":
        strokes = _stroke_keys(n, h, w, pixels, generator, device)
        keys = strokes if keys is None else torch.where((u[:, 4] < 0.5)[:, None], keys, strokes)
    return _first_pixels(keys, pixels.long()).reshape(n, 1, h, w).float()


def check_masks(min_area: float, max_area: float, kind: str) -> None:
    if kind not in MASK_KINDS:
        raise ValueError(f"conditioning.mask={kind!r} is not a mask kind; choose one of {list(MASK_KINDS)}")
    if not 0 < min_area <= max_area < 1:
        raise ValueError(f"conditioning.min_area, max_area must satisfy 0 < min_area <= max_area < 1 (shares of the image), got {min_area!r}, {max_area!r}")


def masked(x0: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The inpainting condition (B, C + 1, H, W): x0 with the masked region (mask 1) set to 0,
    and the mask."""
    mask = mask.to(x0.dtype)
    return torch.cat([x0 * (1 - mask), mask], dim=1)


def inpainting(x0: torch.Tensor, generator: torch.Generator | None = None, mask: torch.Tensor | None = None, **mask_options: Any) -> torch.Tensor:
    """The inpainting condition of x0 with the given (B or 1, 1, H, W) mask, or random masks
    (`random_masks`, options min_area, max_area, kind) drawn on x0's device."""
    if mask is None:
        mask = random_masks(len(x0), tuple(x0.shape[-2:]), generator, x0.device, **mask_options)
    return masked(x0, mask.to(x0.device).expand(len(x0), 1, *x0.shape[-2:]))


# ---- colorization -------------------------------------------------------------------------------
def colorization(x0: torch.Tensor) -> torch.Tensor:
    """The BT.601 luma of RGB images (B, 3, H, W) -> (B, 1, H, W)."""
    check_task("colorization", x0.shape[1])
    weights = torch.tensor(BT601, device=x0.device, dtype=x0.dtype).view(1, 3, 1, 1)
    return (x0 * weights).sum(1, keepdim=True)
