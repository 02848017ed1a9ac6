"""Loading checkpoints without trusting them.

A Lightning `.ckpt` is a pickle: `torch.load(weights_only=False)` of a hostile file runs any code
its author put in it. Two doors stay open even with `weights_only=True`, and both are closed here:

1. the pickle itself: loaded with `torch.load(weights_only=True)`, which rebuilds only tensors,
   plain containers and the globals torch allow-lists. What our own checkpoints hold needs no
   more than that (checked on checkpoints written by `train.py`, with EMA, the sample-grid and
   checkpoint callbacks, the optimizer and the LR scheduler: `get_unsafe_globals_in_checkpoint`
   lists nothing), so `EXTRA_SAFE_GLOBALS` is empty; anything else is refused with its name;
   (`checkpoint_file.read_checkpoint` reads the file and names what else it is, if anything);
2. the hyperparameters: `DiffusionModule` instantiates the `_target_` of its network (and, for
   training, of its optimizer and LR scheduler) by name, so a hyperparameter `_target_: os.system`
   would run a command. Only targets under `SAFE_TARGET_PREFIXES` are built.

`trust_checkpoint=True` opens both doors, for files you made yourself.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch

# Globals our checkpoints need beyond torch's own weights_only allow-list: none (see above).
EXTRA_SAFE_GLOBALS: tuple[Any, ...] = ()
# Where our configs' `_target_`s live: our package (networks, LR schedules) and torch's optimizers.
SAFE_TARGET_PREFIXES = ("ddpm_lightning.", "torch.optim.")
OPT_IN = "pass trust_checkpoint=true only if you trust the file"


def _targets(tree: Any, where: str = "") -> Iterator[tuple[str, str]]:
    """(dotted key, target) of every `_target_` in a tree of dicts and lists."""
    if isinstance(tree, Mapping):
        for key, value in tree.items():
            if key == "_target_":
                yield f"{where}._target_" if where else "_target_", str(value)
            else:
                yield from _targets(value, f"{where}.{key}" if where else str(key))
    elif isinstance(tree, (list, tuple)):
        for i, value in enumerate(tree):
            yield from _targets(value, f"{where}[{i}]")


def check_targets(hparams: Mapping[str, Any], source: str | Path, trust_checkpoint: bool = False) -> None:
    """Raise ValueError if hyperparameters would build something outside our package or
    torch.optim (a `_target_` is imported and called when the module is built)."""
    if trust_checkpoint:
        return
    for key, target in _targets(hparams):
        if not target.startswith(SAFE_TARGET_PREFIXES):
            raise ValueError(
                f"{source}: hyperparameter {key}={target!r} would be imported and called, and is not under "
                f"{list(SAFE_TARGET_PREFIXES)}; {OPT_IN}"
            )


def _unsafe_globals(path: Path) -> list[str]:
    """The globals the pickle needs beyond the allow-list, found by disassembling it (nothing runs)."""
    try:
        with torch.serialization.safe_globals(list(EXTRA_SAFE_GLOBALS)):
            return sorted(torch.serialization.get_unsafe_globals_in_checkpoint(path))
    except Exception:  # noqa: BLE001 - not a torch.save zip: the weights_only unpickler will say why
        return []


def load_checkpoint(path: str | Path, trust_checkpoint: bool = False) -> dict[str, Any]:
    """The checkpoint dict of `path` (tensors memory-mapped), unpickled with `weights_only=True`
    unless trusted, and its hyperparameters checked by `check_targets`. Raises FileNotFoundError /
    ValueError with one line: a global the pickle needs and how to opt in, or (through
    `checkpoint_file.read_checkpoint`) what else the file is instead of a train.py checkpoint."""
    from ddpm_lightning.checkpoint_file import EXPECTED, read_checkpoint

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
    if trust_checkpoint:
        checkpoint = torch.load(path, map_location="cpu", weights_only=False, mmap=True)
    else:
        unsafe = _unsafe_globals(path)
        if unsafe:
            raise ValueError(f"checkpoint {str(path)!r} holds Python objects beyond tensors and plain data ({unsafe}), "
                             f"which are not loaded because unpickling them could run code; {OPT_IN}; {EXPECTED}")
        with torch.serialization.safe_globals(list(EXTRA_SAFE_GLOBALS)):
            checkpoint = read_checkpoint(path)
    if not isinstance(checkpoint, Mapping):
        raise ValueError(f"{path} holds a {type(checkpoint).__name__}, not a checkpoint dict")
    check_targets(checkpoint.get("hyper_parameters", {}), path, trust_checkpoint)
    return checkpoint
