"""`conditioning.json`: what a diffusers pipeline folder's UNet is conditioned on.

A UNet2DModel config knows only its shapes: `num_class_embeds` (a class-embedding table) and
`in_channels` (which, for an image-conditioned model, are the data's channels plus the
condition's, SR3 / Palette's input concatenation). What they mean (how many classes, which row
is the null class of classifier-free guidance, the dropout rate it was trained with, the default
guidance scale; the image task and its channels) is ours, so the diffusers export writes it
beside `model_index.json`:

    {"format": "ddpm_lightning.conditioning", "version": 1,
     "conditioning": {...},          # Conditioning.spec(): what build_conditioning takes
     "num_class_embeds": 11, "null_class": 10,                      # class-conditional
     "cond_channels": 2, "data_channels": 1, "task": "inpainting"}  # image-conditioned

Only `conditioning` is read back (`module_from_pipeline`); the other keys say the same thing
for a reader outside this package. The UNet config is checked against the spec when the module is
built (`PretrainedUNet`: the class table's rows, the input channels), so a record that does not
fit its UNet is one line, not another model. An
unconditional model writes no file, so its folder stays exactly what `DDPMPipeline.save_pretrained`
writes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

CONDITIONING_FILE = "conditioning.json"
FORMAT = "ddpm_lightning.conditioning"
FOLDER_CONDITIONINGS = ("none", "class", "image")  # what a UNet2DModel folder can carry


def check_folder_conditioning(conditioning: Any, format: str) -> None:
    """One line for a conditioning a UNet2DModel folder (or the ONNX graph) has no input for."""
    kind = getattr(conditioning, "type", "none")
    if kind not in FOLDER_CONDITIONINGS:
        raise ValueError(f"format={format} carries conditioning types {list(FOLDER_CONDITIONINGS)}, but this model's is "
                         f"{kind!r} ({type(conditioning).__name__}); export format=safetensors instead")


def conditioning_record(conditioning: Any, data_channels: int) -> dict[str, Any] | None:
    """The conditioning.json contents for `conditioning` (None: unconditional, no file)."""
    spec = conditioning.spec()
    if spec is None:
        return None
    record: dict[str, Any] = {"format": FORMAT, "version": 1, "conditioning": spec, **conditioning.network_keys()}
    if conditioning.type == "class":
        record["null_class"] = conditioning.null_class
    if conditioning.type == "image":
        record.update(data_channels=int(data_channels), task=conditioning.task)
    return record


def write_conditioning(conditioning: Any, data_channels: int, folder: str | Path) -> Path | None:
    record = conditioning_record(conditioning, data_channels)
    if record is None:
        return None
    path = Path(folder) / CONDITIONING_FILE
    path.write_text(json.dumps(record, indent=2) + "\n")
    return path


def read_conditioning(folder: str | Path) -> dict[str, Any] | None:
    """The conditioning spec a pipeline folder records (None: no conditioning.json, unconditional);
    one line for a file that is not ours."""
    path = Path(folder) / CONDITIONING_FILE
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not JSON ({err}); it should be the conditioning record the diffusers export writes") from None
    if not isinstance(record, dict) or record.get("format") != FORMAT or not isinstance(record.get("conditioning"), dict):
        raise ValueError(f"{path} is not a ddpm_lightning conditioning record (format {FORMAT!r} with a 'conditioning' spec)")
    spec = dict(record["conditioning"])
    if "_target_" in spec or spec.get("type") not in FOLDER_CONDITIONINGS:
        # a folder may only build our own conditionings: nothing named in a file is imported
        raise ValueError(f"{path} records conditioning type {spec.get('type', spec.get('_target_'))!r}; "
                         f"a pipeline folder carries {list(FOLDER_CONDITIONINGS)} only")
    return spec


def recorded_hint(unet_folder: Path) -> str:
    """'; its conditioning.json records ...' for an error about a UNet folder of an export, or ''."""
    for folder in (unet_folder, unet_folder.parent):
        try:
            spec = read_conditioning(folder)
        except ValueError:
            return ""
        if spec is not None:
            options = " ".join(f"conditioning.{k}={v}" for k, v in spec.items() if k in ("num_classes", "task", "factor"))
            return f"; its {folder / CONDITIONING_FILE} records conditioning={spec['type']} {options}".rstrip()
    return ""
