"""Export to safetensors: the weights and a JSON of the hyperparameters, nothing pickled.

The folder holds:

* `hparams.json`: the module's hyperparameters (network config with `_target_`, schedule,
  parameterization, loss, sampler, data shape, ...), what `DiffusionModule(**hparams)` takes;
* `model.safetensors`: the checkpoint's `state_dict`, i.e. the EMA weights when training ran
  with the EMA callback (what `load_from_checkpoint` loads);
* `live.safetensors`: the live (non-averaged) weights, `current_model_state` of an EMA
  checkpoint; absent when the checkpoint has no EMA (then model.safetensors is the live weights).

`DiffusionModule.from_pretrained(DIR)` rebuilds the module from these (`read_pretrained`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

HPARAMS_FILE = "hparams.json"
WEIGHTS_FILES = {"ema": "model.safetensors", "live": "live.safetensors"}


def _tensors(state: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    # safetensors stores contiguous CPU tensors that share no memory
    return {k: v.detach().cpu().contiguous().clone() for k, v in state.items() if torch.is_tensor(v)}


def export_safetensors(checkpoint: Mapping[str, Any], out: str | Path) -> Path:
    """Write a checkpoint dict (from `safe_load.load_checkpoint`) as a safetensors folder."""
    from safetensors.torch import save_file

    out = Path(out)
    hparams = dict(checkpoint.get("hyper_parameters") or {})
    if "network" not in hparams:
        raise ValueError("the checkpoint's hyperparameters hold no network config (a network passed as an object "
                         "cannot be exported): train with a network config, e.g. network=unet_small")
    text = json.dumps(hparams, indent=2)  # fails before anything is written if not JSON-able
    out.mkdir(parents=True, exist_ok=True)
    live = checkpoint.get("current_model_state")
    meta = {"global_step": str(checkpoint.get("global_step", "")), "ema": "true" if live is not None else "false"}
    save_file(_tensors(checkpoint["state_dict"]), out / WEIGHTS_FILES["ema"], metadata=meta)
    if live is not None:
        save_file(_tensors(live), out / WEIGHTS_FILES["live"], metadata={**meta, "ema": "false"})
    (out / HPARAMS_FILE).write_text(text + "\n")
    return out


def read_pretrained(path: str | Path, weights: str = "ema", trust_checkpoint: bool = False) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(hyperparameters, state dict) of a folder written by `export_safetensors`."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    from ddpm_lightning.safe_load import check_targets

    path = Path(path)
    if weights not in WEIGHTS_FILES:
        raise ValueError(f"weights={weights!r}; choose one of {sorted(WEIGHTS_FILES)}")
    if not path.is_dir():
        raise FileNotFoundError(f"{str(path)!r} is not a folder (a safetensors export: python -m ddpm_lightning.export format=safetensors)")
    if not (path / HPARAMS_FILE).is_file():
        raise FileNotFoundError(f"{path} has no {HPARAMS_FILE}: not a safetensors export (python -m ddpm_lightning.export format=safetensors)")
    hparams = json.loads((path / HPARAMS_FILE).read_text())
    check_targets(hparams, path / HPARAMS_FILE, trust_checkpoint)
    file = path / WEIGHTS_FILES[weights]
    if weights == "live" and not file.is_file() and (path / WEIGHTS_FILES["ema"]).is_file():
        with safe_open(path / WEIGHTS_FILES["ema"], framework="pt") as f:
            if (f.metadata() or {}).get("ema") == "false":
                file = path / WEIGHTS_FILES["ema"]  # trained without EMA: these are the live weights
    if not file.is_file():
        raise FileNotFoundError(f"{path} has no {file.name} (weights={weights!r})")
    return hparams, load_file(file)
