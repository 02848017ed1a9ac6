"""Loggers that never prompt and never block: W&B goes offline when it has no credentials or its
server does not answer within a few seconds; under a Hydra sweep (`-m`, Optuna) each job is its
own W&B run, grouped by sweep."""

from __future__ import annotations

import logging
import netrc
import os
import sys
import urllib.error
import urllib.request
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers import Logger, WandbLogger
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig

log = logging.getLogger(__name__)

# Without an answer from the server, `wandb.init` waits its init_timeout (90 s) and then fails
# the run; a healthy server answers a HEAD request in well under a second.
SERVER_TIMEOUT_S = 5.0
DEFAULT_BASE_URL = "https://api.wandb.ai"


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


def wandb_server_unreachable(timeout: float = SERVER_TIMEOUT_S) -> str | None:
    """Why the W&B server (`WANDB_BASE_URL`) cannot be reached within `timeout` seconds, or None
    if it answers at all (any HTTP status, even an error, is an answer). Honours proxy settings."""
    url = os.environ.get("WANDB_BASE_URL", DEFAULT_BASE_URL)
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=timeout):
            return None
    except urllib.error.HTTPError:
        return None
    except (urllib.error.URLError, OSError, ValueError) as err:
        reason = getattr(err, "reason", err)
        return f"{url} did not answer ({reason})"


def wandb_logger(offline: bool | None = None, **kwargs: Any) -> WandbLogger:
    """A `WandbLogger` that is offline unless told otherwise or credentials exist.

    `WANDB_MODE` (online / offline / disabled) wins when set. Offline runs are written under
    `save_dir/wandb/` and can be uploaded later with `wandb sync`."""
    mode = os.environ.get("WANDB_MODE")
    if offline is None:
        offline = mode in ("offline", "dryrun") or (mode is None and not wandb_has_credentials())
    if not offline and mode != "disabled":
        reason = wandb_server_unreachable()
        if reason:
            log.warning("W&B server unreachable: %s; logging offline under %s/wandb (upload later with `wandb sync`)",
                        reason, kwargs.get("save_dir") or ".")
            offline = True
            os.environ["WANDB_MODE"] = "offline"
    # never wait on a terminal prompt, even if something asks W&B to log in
    os.environ.setdefault("WANDB_SILENT", "true")
    os.environ.setdefault("WANDB_CONSOLE", "off")
    if offline:
        os.environ.setdefault("WANDB_MODE", "offline")
    if kwargs.get("save_dir"):
        Path(kwargs["save_dir"]).mkdir(parents=True, exist_ok=True)
    return WandbLogger(offline=offline, **kwargs)


def sweep_run_names() -> dict[str, str]:
    """W&B `group` and `name` for the current Hydra job when it is one job of a multirun, else {}.

    The group is the sweep directory (its last two parts: `train/2026-11-22_05-00-00`, or your
    `hydra.sweep.dir`), so a sweep's runs sit together. The name is the job's values of the swept
    keys (`parameterization=x0,schedule=cosine`), else all its overrides
    (`hydra.job.override_dirname`), else `job<N>`."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return {}
    hc = HydraConfig.get()
    if hc.mode != RunMode.MULTIRUN:
        return {}
    swept = _swept_keys(hc)
    name = ",".join(sorted(o for o in hc.overrides.task if _override_key(o) in swept))
    group = "/".join(Path(hc.sweep.dir).parts[-2:])
    return {"group": group[-128:], "name": name or hc.job.override_dirname or f"job{hc.job.num}"}  # W&B: <= 128 chars


def _override_key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def _swept_keys(hc: Any) -> set[str]:
    """Keys a sweep varies: its `hydra.sweeper.params` (Optuna, or the basic sweeper's) and the
    sweep overrides of the command line (`schedule=linear,cosine`, `range(...)`, `choice(...)`)."""
    keys = set((hc.sweeper.get("params") or {}).keys())
    try:
        from hydra.core.override_parser.overrides_parser import OverridesParser

        args = [a for a in sys.argv[1:] if "=" in a and not a.startswith("-")]
        keys |= {o.get_key_element().lstrip("+~") for o in OverridesParser.create().parse_overrides(args) if o.is_sweep_override()}
    except Exception:  # an argv that is not Hydra's (a submitit worker): the sweeper's params only
        pass
    return keys


def name_sweep_runs(logger_cfg: DictConfig | None) -> DictConfig | None:
    """The logger configs with the W&B logger's null `group` and `name` set by `sweep_run_names`."""
    wandb_cfg = logger_cfg.get("wandb") if logger_cfg else None
    if wandb_cfg:
        for key, value in sweep_run_names().items():
            if wandb_cfg.get(key) is None:
                wandb_cfg[key] = value
    return logger_cfg


@rank_zero_only
def finish_runs(loggers: Iterable[Logger]) -> None:
    """End the W&B run: in a sweep run in one process, the next job's `WandbLogger` would
    otherwise log into this job's run."""
    if "wandb" in sys.modules and any(isinstance(logger, WandbLogger) for logger in loggers):
        import wandb

        wandb.finish()
