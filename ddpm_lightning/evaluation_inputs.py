"""Where `python -m ddpm_lightning.evaluate` gets its data: .npz files of samples or reference
statistics, a data config (`data=NAME`, composed by Hydra), or the config of the run that wrote a
checkpoint; and the checks that the two sides of a comparison have one shape."""

from __future__ import annotations

import zipfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import OmegaConf

from ddpm_lightning.metrics import FeatureStats, load_reference_images

CONF_DIR = Path(__file__).resolve().parent / "conf"


def load_array_file(path: str | Path, what: str) -> torch.Tensor | FeatureStats:
    """An .npz of samples or reference data: uint8 images (N, C, H, W) (from arr_0 N x H x W x C),
    float points (N, 2), or, for a reference, stored `mu`/`sigma` statistics."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} file {str(path)!r} does not exist")
    try:
        with np.load(path, allow_pickle=False) as data:
            files = set(data.files)
            arr = data["arr_0"] if "arr_0" in files else None
    except (OSError, EOFError, ValueError, AttributeError, zipfile.BadZipFile, zlib.error) as err:
        # not a zip / npy, a pickle, a truncated file: numpy's reason, on one line
        raise ValueError(f"cannot read {what} file {str(path)!r} as .npz: {err}") from None
    if arr is None:
        if what == "reference" and {"mu", "sigma"} <= files:
            return FeatureStats.load(path)
        raise ValueError(f"{what} file {str(path)!r} has no arr_0 array (keys: {sorted(files)})")
    expected = "uint8 images (N, H, W, C) with C in (1, 3), or float points (N, 2)"
    if arr.ndim == 2 and arr.shape[1] == 2 and np.issubdtype(arr.dtype, np.floating):
        return torch.from_numpy(arr.astype(np.float32))  # (N, 2)
    if arr.ndim == 4 and arr.dtype == np.uint8 and arr.shape[-1] in (1, 3):
        return load_reference_images(path)  # (N, C, H, W) uint8
    raise ValueError(f"{what} file {str(path)!r}: arr_0 must hold {expected}; got dtype {arr.dtype}, shape {arr.shape}")


def _shape_text(shape: tuple[int, ...]) -> str:
    return f"images {shape} (C, H, W)" if len(shape) == 3 else f"points {shape}"


def check_same_shape(samples_shape: tuple[int, ...], ref_shape: tuple[int, ...], ref_name: str) -> None:
    if tuple(samples_shape) != tuple(ref_shape):
        raise ValueError(
            f"the samples are {_shape_text(tuple(samples_shape))} but {ref_name} has {_shape_text(tuple(ref_shape))}: "
            "FID compares data of one size; resize one set, or pick the matching reference"
        )


def find_run_config(ckpt: str | Path) -> Path | None:
    """The Hydra config of the run that wrote a checkpoint (<output_dir>/checkpoints/x.ckpt)."""
    ckpt = Path(ckpt).resolve()
    for folder in (ckpt.parent.parent, ckpt.parent):
        path = folder / ".hydra" / "config.yaml"
        if path.is_file():
            return path
    return None


def _instantiate_data(data: Any, paths: Any):
    """A datamodule from a data config node whose `${paths...}` the given paths config resolves."""
    from hydra.utils import instantiate

    from ddpm_lightning.errors import user_errors

    with user_errors():
        return instantiate(OmegaConf.create({"paths": paths, "data": data}).data)


def run_datamodule(ckpt: str | Path, data_dir: str | None = None):
    """The datamodule of the run that wrote `ckpt`, or None if its config is not beside it."""
    path = find_run_config(ckpt)
    if path is None:
        return None
    run = OmegaConf.load(path)
    if "data" not in run:
        return None
    paths = run.get("paths") or OmegaConf.load(CONF_DIR / "paths" / "default.yaml")
    if data_dir is not None:
        paths.data_dir = data_dir
    return _instantiate_data(run.data, paths)


def get_datamodule(args: dict[str, Any], required_for: str):
    """The reference data: the `data=NAME` config (conf/data, tuned by data.KEY=VALUE), or the
    data of the run that wrote `ckpt=`."""
    if args["data"]:
        return _instantiate_data(args["data"], args["paths"])
    if args["ckpt"]:
        dm = run_datamodule(args["ckpt"], args["data_dir"])
        if dm is not None:
            return dm
    raise ValueError(
        f"{required_for} needs reference data: give data=NAME (e.g. data=digits)"
        + (" or ref=FILE.npz" if required_for != "bits/dim" else "")
        + ("; no run config (.hydra/config.yaml) was found beside the checkpoint" if args["ckpt"] else "")
    )
