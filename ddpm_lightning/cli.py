"""What `python -m ddpm_lightning.sample` and `python -m ddpm_lightning.evaluate` share: Hydra entry
points over `conf/sample.yaml` and `conf/evaluate.yaml`, one line for every error a user can cause
(ours and Hydra's own override errors), the old `key=value` spellings, and the sampler spec a
command line asks for.

The `sampler` node. Both configs reuse train.py's `sampler` group, so `sampler=dpmpp_2m
sampler.num_steps=20` means one thing everywhere. Without `sampler=NAME` the checkpoint's own
sampler config is used, and `sampler.KEY=VALUE` alone must still override one of its options.
Hydra composes in struct mode, where a key that is not in the config cannot be set, so the
`sampler_options` node (registered below, first in both defaults lists) holds every option any
preset in conf/sampler has, all null; a chosen preset is merged over it. null means "not given".
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import hydra
from hydra.core.config_store import ConfigStore
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import ConfigCompositionException, MissingConfigException, OverrideParseException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError

from ddpm_lightning.errors import one_line_errors

CONF_DIR = Path(__file__).resolve().parent / "conf"
# old spelling -> sampler option (the commands took these as top-level keys before Hydra)
LEGACY_SAMPLER_KEYS = {"steps": "num_steps", "eta": "eta", "spacing": "spacing", "clip": "clip_denoised"}


def sampler_option_names() -> list[str]:
    """Every option of every sampler preset (conf/sampler/*.yaml), in first-seen order."""
    names: dict[str, None] = {}
    for path in sorted((CONF_DIR / "sampler").glob("*.yaml")):
        names.update(dict.fromkeys(OmegaConf.load(path)))
    return list(names)


def group_options(group: str) -> str:
    """The options of a config group, "ddim, ddpm, ...": `${options_of:sampler}` in a help text."""
    return ", ".join(sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml")))


ConfigStore.instance().store(name="sampler_options", node={"sampler": dict.fromkeys(sampler_option_names())})
OmegaConf.register_new_resolver("options_of", group_options, replace=True)


# ---- the sampler a command line means ----------------------------------------------------------
def sampler_spec(cfg: DictConfig, checkpoint_spec: Mapping[str, Any]) -> dict[str, Any]:
    """The chosen preset (`sampler=NAME`, or `sampler.name=NAME`) or else the checkpoint's own
    sampler config, with the given `sampler.KEY=VALUE` (and the old `steps=`, `eta=`, ...) over it."""
    from ddpm_lightning.module import sampler_preset

    given = {k: v for k, v in OmegaConf.to_container(cfg.sampler, resolve=True).items() if v is not None}
    for old, new in LEGACY_SAMPLER_KEYS.items():
        if cfg.get(old) is not None:  # the old spelling wins over a chosen preset's value
            print(f"note: {old}= is now spelled sampler.{new}=", file=sys.stderr)
            given[new] = cfg[old]
    base = sampler_preset(given["name"]) if "name" in given else dict(checkpoint_spec)
    return {**base, **given}


def sampler_summary(spec: Mapping[str, Any]) -> dict[str, Any]:
    """name, num_steps and the options that differ from the preset of that name (for results)."""
    from ddpm_lightning.module import sampler_preset

    preset = sampler_preset(spec["name"])
    changed = {k: v for k, v in spec.items() if k not in ("name", "num_steps") and preset.get(k) != v}
    return {"name": spec["name"], "num_steps": spec.get("num_steps"), **changed}


# ---- Hydra's errors as one line ----------------------------------------------------------------
def _valid_keys(config_name: str, key: str) -> str:
    if key.startswith("sampler."):
        return f"sampler options: {sampler_option_names()} (any other: +sampler.KEY=VALUE)"
    top = OmegaConf.load(CONF_DIR / f"{config_name}.yaml")
    return f"{sorted(k for k in top if k not in ('defaults', 'hydra', 'task_name'))}, sampler.KEY; see --help"


@contextlib.contextmanager
def hydra_user_errors(config_name: str) -> Iterator[None]:
    """Re-raise Hydra's composition errors (an unknown key, an unknown group option, a sweep
    value outside -m, a syntax error) as a one-line ValueError naming the valid choices."""
    try:
        yield
    except MissingConfigException as err:
        group, _, name = str(err.missing_cfg_file or "").rpartition("/")
        if err.options and group:
            raise ValueError(f"unknown {group}={name!r}; choose one of {sorted(err.options)}") from None
        raise ValueError(_one_line(err)) from None
    except (ConfigCompositionException, OverrideParseException) as err:  # not errors of the job itself
        cause = err.__cause__
        if isinstance(cause, (ConfigAttributeError, ConfigKeyError)):  # a key not in the config
            key = cause.full_key or cause.key
            raise ValueError(f"unknown option(s) [{str(key)!r}]; valid: {_valid_keys(config_name, str(key))}") from None
        raise ValueError(_one_line(err)) from None


def _one_line(err: BaseException) -> str:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return "; ".join(line for line in lines if not line.startswith("Set the environment variable HYDRA_FULL_ERROR"))


# ---- entry points ------------------------------------------------------------------------------
def compose(config_name: str, argv: Sequence[str]) -> DictConfig:
    """The command's config from `key=value` overrides, as the command line would compose it
    (for the Python API `main(argv)` and tests; no output directory is made)."""
    backup = GlobalHydra.instance().hydra if GlobalHydra.instance().is_initialized() else None
    GlobalHydra.instance().clear()
    try:
        with hydra_user_errors(config_name), hydra.initialize_config_dir(str(CONF_DIR), version_base="1.3"):
            return hydra.compose(config_name, overrides=list(argv))
    finally:
        if backup is not None:
            GlobalHydra.instance().initialize(backup)


def job_dir() -> Path:
    """This job's output directory: hydra.run.dir, or sweep.dir/subdir under -m."""
    return Path(HydraConfig.get().runtime.output_dir)


def is_multirun() -> bool:
    from hydra.types import RunMode

    return HydraConfig.get().mode == RunMode.MULTIRUN


def run_command(config_name: str, task: Callable[[DictConfig], Any]) -> None:
    """`python -m ddpm_lightning.<config_name>`: Hydra's main over conf/<config_name>.yaml with
    `task(cfg)` as the job. A user error, ours or one of Hydra's override errors, ends the
    process with one line `error: ...` and exit code 2."""
    # Hydra prints its own errors over several lines and exits 1; this makes it re-raise them,
    # so that `hydra_user_errors` can say them in one line.
    os.environ.setdefault("HYDRA_FULL_ERROR", "1")

    @hydra.main(version_base="1.3", config_path="conf", config_name=config_name)
    def _main(cfg: DictConfig) -> None:
        with one_line_errors():
            task(cfg)

    with one_line_errors(), hydra_user_errors(config_name):
        _main()
