"""The sample command's `cond_image=FILE` for an image-conditioned model: the picture to restore,
made into the condition the model was trained with.

* super_resolution: a low-resolution image of H/factor x W/factor (resized back, as in
  training), or a full-size H x W image (degraded by the task: downsampled, then resized back);
* inpainting: an H x W image and `mask=FILE` (white = generate, black = keep), the masked
  region set to 0 as in training;
* colorization: an H x W image, grey or RGB (then reduced to its BT.601 luma).

A PNG/JPEG is one image (used for all n samples); an .npz holds N uint8 images in `arr_0`
(N x H x W x C): sample i gets image i. Any other size is refused, naming both sizes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ddpm_lightning.conditioning import image_tasks


def read_images(path: str | Path, mode: str | None, what: str = "cond_image") -> torch.Tensor:
    """(N, C, h, w) in [0, 1] at the file's own size; `mode` "L" / "RGB" converts a PNG (None:
    grey files stay grey, others become RGB)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} file {str(path)!r} does not exist")
    if path.suffix == ".npz":
        try:
            arr = np.load(path, allow_pickle=False)["arr_0"]
        except (OSError, KeyError, ValueError) as err:
            raise ValueError(f"cannot read {what} file {str(path)!r} (an .npz with arr_0: N x H x W x C uint8): {err}") from None
        if arr.ndim != 4 or arr.dtype != np.uint8:
            raise ValueError(f"{what} file {str(path)!r}: arr_0 must be uint8 N x H x W x C, got {arr.dtype} {arr.shape}")
        return torch.from_numpy(arr).permute(0, 3, 1, 2).float() / 255.0
    try:
        img = Image.open(path)
        grey = img.mode in ("1", "L", "LA", "I", "I;16", "F")
        img = img.convert(mode or ("L" if grey else "RGB"))
    except OSError as err:
        raise ValueError(f"cannot read {what} file {str(path)!r}: {err}") from None
    x = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0)
    return x[None, None] if x.ndim == 2 else x.permute(2, 0, 1)[None]


def condition_from_file(conditioning, path: str | Path, n: int, mask_path: str | Path | None = None) -> torch.Tensor:
    """The (n, c, H, W) condition of `cond_image=path` (and `mask=mask_path` for inpainting)."""
    c, h, w = conditioning.data_shape
    task = conditioning.task
    if task == "inpainting" and not mask_path:
        raise ValueError("this model inpaints: give mask=MASK.png (white = generate, black = keep) with cond_image=")
    if task != "inpainting" and mask_path:
        raise ValueError(f"mask= is for inpainting; this model's task is {task}")
    mode = None if task == "colorization" else ("L" if c == 1 else "RGB")
    x = read_images(path, mode) * 2 - 1  # (N, C', h', w') in [-1, 1]
    size, low = tuple(x.shape[-2:]), (h // conditioning.factor, w // conditioning.factor)
    sizes = f"{h}x{w}" + (f" or the low-resolution {low[0]}x{low[1]}" if task == "super_resolution" else "")
    if size != (h, w) and not (task == "super_resolution" and size == low):
        raise ValueError(f"cond_image {str(path)!r} is {size[0]}x{size[1]} but this model takes {sizes}")
    want = 1 if task == "colorization" and x.shape[1] == 1 else (3 if task == "colorization" else c)
    if x.shape[1] != want:
        raise ValueError(f"cond_image {str(path)!r} has {x.shape[1]} channel(s) but this model takes {want}")
    if task == "super_resolution":
        cond = image_tasks.upsample(x, (h, w)) if size == low else image_tasks.super_resolution(x, conditioning.factor)
    elif task == "colorization":
        cond = x if x.shape[1] == 1 else image_tasks.colorization(x)
    else:
        mask = read_images(mask_path, "L", "mask")
        if tuple(mask.shape[-2:]) != (h, w):
            raise ValueError(f"mask {str(mask_path)!r} is {mask.shape[-2]}x{mask.shape[-1]} but this model takes {h}x{w}")
        mask = (mask > 0.5).float()
        if len(mask) not in (1, len(x)):
            raise ValueError(f"mask file holds {len(mask)} masks for {len(x)} images: give one, or one per image")
        cond = image_tasks.masked(x, mask.expand(len(x), -1, -1, -1))
    if len(cond) == 1:
        return cond.expand(n, -1, -1, -1).contiguous()
    if len(cond) < n:
        raise ValueError(f"cond_image file holds {len(cond)} images but n={n} samples were asked for")
    return cond[:n].contiguous()
