"""Loading a `DiffusionModule` without trusting the file: the checkpoint and pretrained-folder
class methods, as a mixin of the module (`ddpm_lightning.safe_load` does the checking)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


class SafeLoading:
    """`load_from_checkpoint` (safe by default) and `from_pretrained` for a LightningModule."""

    @classmethod
    def load_from_checkpoint(cls, checkpoint_path: Any, map_location: Any = None, hparams_file: Any = None,
                             strict: bool | None = None, *, trust_checkpoint: bool = False, **kwargs: Any) -> Any:
        """Lightning's `load_from_checkpoint`, safe by default: the pickle is read with
        `weights_only=True` and the hyperparameters may only build our own classes and torch's
        optimizers (`ddpm_lightning.safe_load`); `trust_checkpoint=True` lifts both checks."""
        from ddpm_lightning.safe_load import load_checkpoint

        if isinstance(checkpoint_path, (str, Path)):
            # mmap: the tensors are not read, only the pickle is checked (one line if refused)
            load_checkpoint(checkpoint_path, trust_checkpoint)
        kwargs.setdefault("weights_only", not trust_checkpoint)
        return super().load_from_checkpoint(checkpoint_path, map_location, hparams_file, strict, **kwargs)

    @classmethod
    def from_pretrained(cls, path: str | Path, weights: str = "ema", trust_checkpoint: bool = False,
                        map_location: Any = None, **overrides: Any) -> Any:
        """The module of a folder written by `python -m ddpm_lightning.export format=safetensors`
        (hparams.json + safetensors weights): nothing is unpickled. `weights`: "ema" or "live"."""
        from ddpm_lightning.export.to_safetensors import read_pretrained

        hparams, state = read_pretrained(path, weights, trust_checkpoint)
        module = cls(**{**hparams, **overrides})
        module.load_state_dict(state)
        return module.to(map_location) if map_location is not None else module
