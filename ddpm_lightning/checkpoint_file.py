"""Reading a checkpoint for the sample and evaluate commands: `load_module(path)` is
`DiffusionModule.load_from_checkpoint` (or `from_pretrained` for an exported folder, or a
diffusers pipeline folder) with one line for every file that is not what train.py
writes (missing, empty, truncated, not a torch file, a plain `torch.save(state_dict)`, another
project's .pt, a checkpoint of another network), saying what the file is and what was expected.

Files are read with `torch.load(..., weights_only=True)` explicitly, whatever the environment
says (`TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1` would otherwise let a crafted pickle run code): our
checkpoints hold only tensors, numbers, strings, lists and dicts, which torch's allow-list
covers.
"""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

EXPECTED = "expected a checkpoint written by train.py (a Lightning .ckpt with hyper_parameters and state_dict)"
LIGHTNING_KEYS = ("pytorch-lightning_version", "state_dict", "hyper_parameters")


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0]}" if text else type(err).__name__


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """The checkpoint's dict (tensors memory-mapped, not read), or a ValueError naming what the
    file is instead."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
    size = path.stat().st_size
    if size == 0:
        raise ValueError(f"checkpoint {str(path)!r} is an empty file (0 bytes); {EXPECTED}")
    if not zipfile.is_zipfile(path):  # torch.save writes a zip archive
        with open(path, "rb") as f:
            head = f.read(4)
        what = (f"a zip archive cut short at {size} bytes (a truncated save?)" if head == b"PK\x03\x04"
                else f"{size} bytes that are not a torch.save zip archive")
        raise ValueError(f"checkpoint {str(path)!r} is not a readable torch checkpoint: {what}; {EXPECTED}")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError as err:  # weights_only refused an object: not a file of ours
        refused = next((line.strip() for line in str(err).splitlines() if "Unsupported global" in line), "")
        refused = refused.split(" was not an allowed global")[0].replace("WeightsUnpickler error: ", "")
        raise ValueError(f"checkpoint {str(path)!r} holds Python objects beyond tensors and plain data, which are not "
                         f"loaded because unpickling them could run code ({refused or 'weights_only=True'}); {EXPECTED}") from None
    except (RuntimeError, EOFError, OSError, KeyError, ValueError, zipfile.BadZipFile) as err:
        raise ValueError(f"checkpoint {str(path)!r} cannot be read, truncated or corrupt? ({_first_line(err)}); {EXPECTED}") from None
    if not isinstance(checkpoint, dict):
        raise ValueError(f"checkpoint {str(path)!r} holds a {type(checkpoint).__name__}, not a checkpoint dict; {EXPECTED}")
    missing = [k for k in LIGHTNING_KEYS if k not in checkpoint]
    if missing:
        if checkpoint and all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
            what = f"a plain state_dict of {len(checkpoint)} tensors (torch.save(model.state_dict())), with no config"
        else:
            what = f"a .pt without Lightning's {missing} (its keys: {sorted(map(str, checkpoint))[:8]})"
        raise ValueError(f"checkpoint {str(path)!r} is {what}; {EXPECTED}")
    return checkpoint


def _keys(message: str, kind: str) -> list[str]:
    """The keys listed after 'Missing key(s) in state_dict:' (or 'Unexpected ...') in torch's message."""
    for line in message.splitlines():
        if f"{kind} key(s) in state_dict:" in line:
            return [k for k in line.split(":", 1)[1].replace('"', " ").replace(",", " ").split() if k != "."]
    return []


def _state_dict_mismatch(path: Path, checkpoint: dict[str, Any], err: RuntimeError) -> ValueError:
    """'Error(s) in loading state_dict' (a page of keys) as one line: what differs, by how much."""
    message = str(err)
    missing, unexpected = _keys(message, "Missing"), _keys(message, "Unexpected")
    sizes = [line.strip() for line in message.splitlines() if line.strip().startswith("size mismatch")]
    network = checkpoint["hyper_parameters"].get("network")
    name = network.get("_target_", "?") if isinstance(network, dict) else type(network).__name__
    parts = [f"{len(missing)} of its tensors missing (first: {missing[0]})" if missing else "",
             f"{len(unexpected)} unexpected (first: {unexpected[0]})" if unexpected else "",
             f"{len(sizes)} of other shapes (first: {sizes[0].rstrip('.')})" if sizes else ""]
    detail = ", ".join(p for p in parts if p) or message.splitlines()[0]
    return ValueError(
        f"checkpoint {str(path)!r} does not fit the network its config builds ({name}): {detail}; "
        "a checkpoint of another network, or of another version of the code?"
    )


def load_module(ckpt: str | Path, device: str = "auto", trust_checkpoint: bool = False, pipeline: bool = False):
    """The DiffusionModule of `ckpt`, in eval mode, on `device` (auto: cuda if any): a train.py
    checkpoint (read safely: `ddpm_lightning.safe_load`), a folder written by
    `python -m ddpm_lightning.export format=safetensors` (nothing unpickled), or a diffusers
    DDPM/DDIM pipeline folder (unet/ + scheduler/, its scheduler config gives the schedule; always
    with `pipeline=True`)."""
    from ddpm_lightning.module import DiffusionModule
    from ddpm_lightning.safe_load import load_checkpoint

    path = Path(ckpt)
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if pipeline or path.is_dir():
        if pipeline or (path / "unet").is_dir() or (path / "model_index.json").is_file():
            from ddpm_lightning.export.pipeline import module_from_pipeline

            return module_from_pipeline(path).to(device).eval()
        return DiffusionModule.from_pretrained(path, trust_checkpoint=trust_checkpoint, map_location=device).eval()
    checkpoint = load_checkpoint(path, trust_checkpoint)
    try:
        module = DiffusionModule.load_from_checkpoint(path, map_location=device, trust_checkpoint=trust_checkpoint)
    except RuntimeError as err:
        if "Error(s) in loading state_dict" not in str(err):
            raise
        raise _state_dict_mismatch(path, checkpoint, err) from None
    return module.eval()
