"""`python -m ddpm_lightning.export ckpt=PATH format=diffusers|safetensors|onnx|web out=DIR [overwrite=true]`

Everything is checked before anything is written: the format, the out folder (it must not exist
or be empty, unless overwrite=true), the checkpoint (loaded safely: `ddpm_lightning.safe_load`)
and whether the model fits the format. The files are written into a temporary folder beside
`out` and moved into place at the end, so a failed export leaves `out` as it was.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from ddpm_lightning.errors import one_line_errors

FORMATS = ("diffusers", "safetensors", "onnx", "web")


def check_out(out: str | Path, overwrite: bool) -> Path:
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"out={str(out)!r} is a file, not a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise ValueError(f"out={str(out)!r} exists and is not empty; choose another folder or pass overwrite=true")
    return out


def export(ckpt: str | Path, format: str, out: str | Path, overwrite: bool = False, trust_checkpoint: bool = False) -> Path:
    """Export checkpoint `ckpt` as `format` into folder `out`; returns `out`."""
    from ddpm_lightning.checkpoint_file import load_module
    from ddpm_lightning.export.to_diffusers import check_exportable, export_diffusers
    from ddpm_lightning.export.to_onnx import check_onnx_exportable, export_onnx
    from ddpm_lightning.export.to_safetensors import export_safetensors
    from ddpm_lightning.export.to_web import export_web
    from ddpm_lightning.web.site import find_ort_dist
    from ddpm_lightning.module import DiffusionModule
    from ddpm_lightning.safe_load import load_checkpoint

    if format not in FORMATS:
        raise ValueError(f"unknown format={format!r}; choose one of {list(FORMATS)}")
    out = check_out(out, overwrite)
    # the module is built for every format: its hyperparameters must rebuild it before anything is written
    checkpoint = load_checkpoint(ckpt, trust_checkpoint)  # one line naming a refused global or _target_
    if trust_checkpoint:
        module = DiffusionModule.load_from_checkpoint(ckpt, map_location="cpu", trust_checkpoint=True).eval()
    else:
        module = load_module(ckpt, device="cpu")  # one line for a file that is not a train.py checkpoint
    if format == "diffusers":
        check_exportable(module)  # UNet, prediction type, variance, conditioning the folder can carry
    if format in ("onnx", "web"):
        check_onnx_exportable(module, format)  # web: no conditioning image input on the page
    if format == "web":
        find_ort_dist()  # onnxruntime-web installed (npm ci), or one line saying how
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{out.name}.", dir=out.parent) as tmp:
        if format == "diffusers":
            export_diffusers(module, tmp)
        elif format == "safetensors":  # the raw checkpoint: EMA and live weights
            export_safetensors(checkpoint, tmp)
        elif format == "web":
            export_web(module, ckpt, tmp)
        else:
            export_onnx(module, tmp)
        out.mkdir(exist_ok=True)
        for item in Path(tmp).iterdir():
            target = out / item.name
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            elif target.exists() or target.is_symlink():
                target.unlink()
            shutil.move(str(item), str(target))
    return out


@hydra.main(version_base="1.3", config_path="../conf", config_name="export")
def main(cfg: DictConfig) -> None:
    with one_line_errors():
        missing = sorted(OmegaConf.missing_keys(cfg))
        if missing:
            raise ValueError(f"missing {', '.join(k + '=' for k in missing)}: python -m ddpm_lightning.export "
                             f"ckpt=PATH format={'|'.join(FORMATS)} out=DIR [overwrite=true]")
        out = export(cfg.ckpt, cfg.format, cfg.out, overwrite=bool(cfg.overwrite), trust_checkpoint=bool(cfg.trust_checkpoint))
    print(f"wrote {cfg.format} export to {out}")
