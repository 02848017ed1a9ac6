"""Pictures of samples: image grids, denoising-trajectory strips, scatter plots for 2-D data.
All return HWC uint8 numpy arrays, which W&B, TensorBoard and PIL all take."""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision.utils import make_grid


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """Images in [-1, 1] (B, C, H, W) -> uint8 in [0, 255], same layout."""
    return ((x.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def _upscale(x: torch.Tensor, min_size: int) -> torch.Tensor:
    factor = max(1, math.ceil(min_size / x.shape[-1]))
    return F.interpolate(x, scale_factor=factor, mode="nearest") if factor > 1 else x


def image_grid(x: torch.Tensor, nrow: int | None = None, min_size: int = 48) -> np.ndarray:
    """(B, C, H, W) in [-1, 1] -> one HWC uint8 grid; small images are enlarged (nearest) so
    each is at least `min_size` pixels wide."""
    x = _upscale(x.detach().float().cpu().clamp(-1, 1), min_size)
    nrow = nrow or max(1, math.ceil(math.sqrt(x.shape[0])))
    grid = make_grid((x + 1) / 2, nrow=nrow, padding=2, pad_value=1.0)  # (C, H, W) in [0, 1]
    grid = (grid * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    return grid[..., 0] if grid.shape[-1] == 1 else grid


def strip(frames: torch.Tensor, min_size: int = 48) -> np.ndarray:
    """Frames (F, B, C, H, W) -> a grid with one row per example and one column per frame."""
    f, b = frames.shape[:2]
    rows = frames.transpose(0, 1).reshape(f * b, *frames.shape[2:])
    return image_grid(rows, nrow=f, min_size=min_size)


def class_rows(samples: torch.Tensor, num_classes: int, per_class: int | None = None) -> torch.Tensor:
    """Class-balanced samples (sample i of class i mod K, `Conditioning.balanced`) reordered for a
    grid of `per_class` columns whose row r holds class r: sample r + K j goes to row r, column j.
    (n, ...) -> (K * per_class, ...); per_class defaults to n // K (the rest are left out)."""
    k = num_classes
    m = len(samples) // k if per_class is None else per_class
    if m < 1 or k * m > len(samples):
        raise ValueError(f"{len(samples)} samples cannot fill {k} class rows of {m}")
    return samples[: k * m].reshape(m, k, *samples.shape[1:]).transpose(0, 1).reshape(k * m, *samples.shape[1:])


def class_grid(samples: torch.Tensor, num_classes: int, per_class: int | None = None,
               names: list[str] | None = None, min_size: int = 48) -> np.ndarray:
    """Class-balanced samples (sample i of class i mod K) as a grid with one row per class, in
    order 0..K-1, each row labelled on its left with the class (its name, or its index)."""
    rows = class_rows(samples, num_classes, per_class)
    m = len(rows) // num_classes
    grid = image_grid(rows, nrow=m, min_size=min_size)
    return _label_rows(grid, [str(c) for c in (names or range(num_classes))])


def _label_rows(grid: np.ndarray, labels: list[str]) -> np.ndarray:
    """A white margin on the left of `grid` with labels[r] written level with row r."""
    from PIL import ImageDraw

    img = Image.fromarray(grid).convert("RGB")
    width = 8 + 7 * max(len(s) for s in labels)  # PIL's default bitmap font: ~6 px a character
    out = Image.new("RGB", (img.width + width, img.height), "white")
    out.paste(img, (width, 0))
    draw = ImageDraw.Draw(out)
    row_h = (img.height - 2) / len(labels)  # make_grid: 2 px of padding around every cell
    for r, text in enumerate(labels):
        draw.text((4, 2 + r * row_h + row_h / 2 - 6), text, fill="black")
    arr = np.asarray(out)
    return arr[..., 0].copy() if grid.ndim == 2 else arr


def frame_indices(num_available: int, num_frames: int) -> list[int]:
    """`num_frames` evenly spaced indices into a trajectory, always including both ends."""
    num_frames = max(2, min(num_frames, num_available))
    return sorted({round(i * (num_available - 1) / (num_frames - 1)) for i in range(num_frames)})


def scatter(points: torch.Tensor, reference: torch.Tensor | None = None, title: str = "") -> np.ndarray:
    """2-D points (N, 2) as a scatter plot (HWC uint8), with reference data in grey behind."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4, 4), dpi=100)
    if reference is not None:
        r = reference.detach().cpu().numpy()
        ax.scatter(r[:, 0], r[:, 1], s=2, c="0.8", label="data")
    p = points.detach().float().cpu().numpy()
    ax.scatter(p[:, 0], p[:, 1], s=2, c="tab:blue", label="samples")
    ax.set_aspect("equal")
    ax.set_title(title)
    if reference is not None:
        ax.legend(loc="upper right", markerscale=4)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    plt.close(fig)
    buf.seek(0)
    return np.asarray(Image.open(buf).convert("RGB"))


def save_png(image: np.ndarray, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path)
    return path
