"""`format=web`: the ONNX export (`to_onnx.py`) plus a few real training images, with the static
page of `ddpm_lightning.web` around them (`build_site`), so that the folder samples the model in
a browser with no network."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from ddpm_lightning.export.to_onnx import check_onnx_exportable, export_onnx

DATA_SAMPLES_FILE = "data_samples.json"
NUM_DATA_SAMPLES = 16  # real images for the page's forward-process view


def write_model_dir(module: Any, out: str | Path, data_samples: torch.Tensor | None) -> Path:
    """The page's model files in `out`: denoiser.onnx, schedule.json and data_samples.json
    ((N, C, H, W) in [-1, 1]; left out when None: the page then says it has no real images)."""
    out = Path(out)
    export_onnx(module, out)
    if data_samples is not None:
        samples = data_samples.float().clamp(-1, 1)
        data = [round(v, 4) for v in samples.reshape(-1).tolist()]
        (out / DATA_SAMPLES_FILE).write_text(json.dumps({"shape": list(samples.shape), "data": data}) + "\n")
    return out


def run_data_samples(ckpt: str | Path, module: Any) -> torch.Tensor | None:
    """The first training images of the run that wrote `ckpt` (its .hydra/config.yaml), or None."""
    from ddpm_lightning.evaluation_inputs import run_datamodule

    if module.data_shape is None or len(module.data_shape) != 3:
        return None
    try:
        dm = run_datamodule(ckpt)
    except (ValueError, FileNotFoundError, OSError):
        return None
    if dm is None or tuple(dm.data_shape) != tuple(module.data_shape):
        return None
    return dm.real_samples(NUM_DATA_SAMPLES, "train")


def export_web(module: Any, ckpt: str | Path, out: str | Path) -> Path:
    from ddpm_lightning.web import build_site

    check_onnx_exportable(module, "web")  # before anything is written: the page gives no conditioning image
    write_model_dir(module, out, run_data_samples(ckpt, module))
    return build_site(out, out, overwrite=True)
