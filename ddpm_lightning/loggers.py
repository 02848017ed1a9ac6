"""Loggers that never prompt and never block: W&B goes offline when it has no credentials."""

from __future__ import annotations

import netrc
import os
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers import WandbLogger


def wandb_has_credentials() -> bool:
    """True if W&B could log in without asking: an API key in the environment or ~/.netrc."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        path = os.environ.get("NETRC", str(Path.home() / ".netrc"))
        host = os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai").split("//")[-1].rstrip("/")
        return netrc.netrc(path).authenticators(host) is not None
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


def wandb_logger(offline: bool | None = None, **kwargs: Any) -> WandbLogger:
    """A `WandbLogger` that is offline unless told otherwise or credentials exist.

    `WANDB_MODE` (online / offline / disabled) wins when set. Offline runs are written under
    `save_dir/wandb/` and can be uploaded later with `wandb sync`."""
    mode = os.environ.get("WANDB_MODE")
    if offline is None:
        offline = mode in ("offline", "dryrun") or (mode is None and not wandb_has_credentials())
    # never wait on a terminal prompt, even if something asks W&B to log in
    os.environ.setdefault("WANDB_SILENT", "true")
    os.environ.setdefault("WANDB_CONSOLE", "off")
    if offline:
        os.environ.setdefault("WANDB_MODE", "offline")
    if kwargs.get("save_dir"):
        Path(kwargs["save_dir"]).mkdir(parents=True, exist_ok=True)
    return WandbLogger(offline=offline, **kwargs)
