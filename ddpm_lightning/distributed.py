"""Scale-out: check devices and strategy before any work, seed each DDP rank apart, and let
Lightning's DDP launcher run inside a Hydra multirun job.

How Lightning starts DDP processes, and what we add:

* `python train.py trainer.devices=N` (strategy `auto` or `ddp`): rank 0 re-runs the script N-1
  times with `LOCAL_RANK` set (Lightning's `_SubprocessScriptLauncher`). Under Hydra it passes
  `hydra.run.dir=<this run's dir>`, so every rank writes to one directory. That re-run is the
  command line, which under `-m` (a sweep, Optuna) would start the whole sweep again in each
  child; `job_scope` makes the children re-run *this job* instead (its overrides, its directory)
  and resets the process group and environment between jobs.
* `torchrun` and SLURM (`srun`) start every process themselves; Lightning detects them
  (`TorchElasticEnvironment`, `SLURMEnvironment`) and launches nothing.
* `strategy=ddp_spawn` starts processes with `torch.multiprocessing` (no re-run of the script).
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, ListConfig

log = logging.getLogger(__name__)

# set by Lightning's launchers in the launching process; reset between the jobs of a sweep
_LAUNCH_ENV = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE", "OMP_NUM_THREADS")
# strategies that start their processes with torch.multiprocessing instead of re-running the script
_SPAWN_STRATEGIES = ("ddp_spawn", "ddp_fork", "ddp_notebook")
_BASIC_LAUNCHER = "hydra._internal.core_plugins.basic_launcher.BasicLauncher"


# ---- checks before any work -------------------------------------------------------------------
def _cpu_count() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _resolve_accelerator(accelerator: Any) -> str:
    """"cpu" or "gpu" (what Lightning's "auto" would pick); other accelerators unchanged."""
    name = str(accelerator).lower()
    if name == "cuda":
        return "gpu"
    if name == "auto":
        return "gpu" if torch.cuda.is_available() else "cpu"
    return name


def _strategy_name(strategy: Any) -> str:
    """A strategy's registry name ("ddp", "fsdp", ...) or class name, from a string or a config node."""
    if isinstance(strategy, (DictConfig, dict)):
        target = str(strategy.get("_target_", ""))
        name = target.rsplit(".", 1)[-1]
        if name == "DDPStrategy":
            start = strategy.get("start_method", "popen")
            return "ddp" if start == "popen" else f"ddp_{start}"
        return {"FSDPStrategy": "fsdp", "DeepSpeedStrategy": "deepspeed"}.get(name, name)
    return str(strategy)


def _requested_devices(devices: Any, available: int, accelerator: str) -> list[int] | int:
    """The devices asked for, as a count (an int) or a list of indices."""
    if isinstance(devices, (ListConfig, list, tuple)):
        return [int(d) for d in devices]
    if isinstance(devices, str):
        text = devices.strip()
        if text == "auto":
            return available if accelerator == "gpu" else 1
        if "," in text:
            return [int(d) for d in text.split(",") if d.strip()]
        devices = int(text)
    if devices == -1:
        return available
    if isinstance(devices, bool) or not isinstance(devices, int) or devices < 1:
        raise ValueError(f"trainer.devices must be a positive number, -1 (all), 'auto' or a list of indices; got {devices!r}")
    return devices


def processes_per_node(trainer_cfg: DictConfig) -> int:
    """How many processes (devices) each node runs, as `check_scale_out` reads trainer.devices."""
    accelerator = _resolve_accelerator(trainer_cfg.get("accelerator", "auto"))
    available = torch.cuda.device_count() if accelerator == "gpu" else _cpu_count()
    try:
        requested = _requested_devices(trainer_cfg.get("devices", 1), available, accelerator)
    except ValueError:
        return 1  # a form we do not parse: Lightning's own checks report it
    return len(requested) if isinstance(requested, list) else requested


def launched_externally() -> bool:
    """True if torchrun, SLURM (srun) or a launching rank 0 started this process."""
    from lightning.fabric.plugins.environments import SLURMEnvironment, TorchElasticEnvironment

    return "LOCAL_RANK" in os.environ or TorchElasticEnvironment.detect() or SLURMEnvironment.detect()


def check_scale_out(cfg: DictConfig) -> None:
    """Raise a `ValueError` naming the value and the choices for a strategy, device count or node
    count that cannot run here; called before anything is built."""
    from lightning.pytorch.strategies import StrategyRegistry

    trainer_cfg = cfg.trainer
    raw_accelerator = trainer_cfg.get("accelerator", "auto")
    accelerator = _resolve_accelerator(raw_accelerator)
    strategy = _strategy_name(trainer_cfg.get("strategy", "auto"))

    # 1. the strategy exists and runs on these devices
    if "fsdp" in strategy:
        if accelerator != "gpu":
            raise ValueError(f"strategy=fsdp needs CUDA GPUs (Lightning's FSDP does not run on accelerator={accelerator}); use strategy=ddp")
        if any(str(node.get("_target_", "")).endswith(".EMA") for node in (cfg.get("callbacks") or {}).values() if node):
            raise ValueError("strategy=fsdp shards the weights, which the EMA callback cannot average: add ~callbacks.ema, or use strategy=ddp")
    if "deepspeed" in strategy:
        if importlib.util.find_spec("deepspeed") is None:
            raise ValueError("strategy=deepspeed needs DeepSpeed: `pip install deepspeed` (CUDA GPUs only); or use strategy=ddp")
        if accelerator != "gpu":
            raise ValueError(f"strategy=deepspeed needs CUDA GPUs, got accelerator={accelerator}; use strategy=ddp")
    known = sorted(set(StrategyRegistry.available_strategies()) | {"auto"})
    if isinstance(trainer_cfg.get("strategy"), str) and strategy not in known:
        raise ValueError(
            f"unknown strategy {strategy!r}: use strategy=<auto, ddp, ddp_spawn, fsdp, deepspeed> (a config"
            f" group) or trainer.strategy=<one of Lightning's: {', '.join(known)}>"
        )

    # 2. the devices exist
    if accelerator in ("gpu", "cpu"):
        _check_devices(trainer_cfg.get("devices", 1), accelerator, raw_accelerator)

    # 3. several nodes need a launcher that starts the other nodes' processes
    num_nodes = int(trainer_cfg.get("num_nodes", 1))
    if num_nodes > 1 and not (launched_externally() or "NODE_RANK" in os.environ):
        raise ValueError(
            f"trainer.num_nodes={num_nodes} needs every node's processes started by SLURM (srun), torchrun,"
            " or by hand with MASTER_ADDR, MASTER_PORT and NODE_RANK set on each node; see the README"
        )

    # 4. inside a sweep, Lightning can re-run only a job that runs in the sweep's own process
    if processes_per_node(trainer_cfg) > 1 and _relaunches_script(strategy) and not launched_externally():
        hc = _multirun_hydra_config()
        if hc is not None and hc.launcher.get("_target_") != _BASIC_LAUNCHER:
            raise ValueError(
                f"trainer.devices>1 with hydra/launcher={hc.launcher._target_.rsplit('.', 1)[-1]}: on SLURM set"
                " hydra.launcher.tasks_per_node to trainer.devices (SLURM then starts one process per device);"
                " elsewhere use strategy=ddp_spawn"
            )


def _check_devices(devices: Any, accelerator: str, raw_accelerator: Any) -> None:
    if accelerator == "gpu":
        available = torch.cuda.device_count()
        if available == 0:
            raise ValueError(f"trainer.accelerator={raw_accelerator} but no CUDA GPU is visible; use trainer.accelerator=cpu")
        kind = "CUDA GPU(s)"
    else:
        available, kind = _cpu_count(), "CPU core(s), and each CPU process needs one"
        if str(raw_accelerator) == "auto":
            kind += " (trainer.accelerator=auto found no GPU)"
    requested = _requested_devices(devices, available, accelerator)
    if isinstance(requested, list):
        bad = [d for d in requested if not 0 <= d < available]
        if bad:
            raise ValueError(f"trainer.devices={requested} names device(s) {bad}, but there are {available} {kind}: indices 0..{available - 1}")
    elif requested > available:
        every = " (or -1 for all)" if accelerator == "gpu" else ""
        raise ValueError(f"trainer.devices={requested} but this machine has {available} {kind}; use trainer.devices<={available}{every}")


def _relaunches_script(strategy: str) -> bool:
    return strategy not in _SPAWN_STRATEGIES and strategy != "SingleDeviceStrategy"


def _multirun_hydra_config() -> Any:
    """The Hydra config of the current job if it is one job of a multirun, else None."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return None
    hc = HydraConfig.get()
    return hc if hc.mode == RunMode.MULTIRUN else None


# ---- per-rank random streams --------------------------------------------------------------------
def rank_seed(global_rank: int, step: int = 0, seed: int | None = None) -> int:
    """A seed for (run seed, rank, step): different on every rank, reproducible, and fresh after
    a resume (the step moves on). The run seed defaults to the one `seed_everything` set."""
    if seed is None:
        seed = int(os.environ.get("PL_GLOBAL_SEED", torch.initial_seed() % 2**32))
    return int(np.random.SeedSequence([seed, global_rank, step]).generate_state(1)[0])


def seed_rank(global_rank: int, step: int = 0) -> int:
    """Reseed torch's global generators (CPU and CUDA) for this rank; return the seed."""
    seed = rank_seed(global_rank, step)
    torch.manual_seed(seed)
    return seed


# ---- DDP inside a Hydra multirun job ------------------------------------------------------------
def job_command(local_rank: int) -> tuple[list[str], str]:
    """The command that runs this Hydra job as DDP rank `local_rank`: the same entry point,
    config and overrides, in single-run mode, in this job's directory."""
    import __main__
    from hydra.core.hydra_config import HydraConfig

    hc = HydraConfig.get()
    if getattr(__main__, "__spec__", None) is None:
        command = [sys.executable, os.path.abspath(sys.argv[0])]
    else:
        command = [sys.executable, "-m", __main__.__spec__.name]
    command += ["--config-name", hc.job.config_name]
    for source in hc.runtime.config_sources:
        if source.provider == "command-line" and source.schema == "file":
            command += ["--config-dir", source.path]
    command += list(hc.overrides.task)
    command += [
        f'hydra.run.dir="{hc.runtime.output_dir}"',
        "hydra.output_subdir=null",  # rank 0 alone writes .hydra/
        f"hydra.job.name={hc.job.name}_rank{local_rank}",
    ]
    return command, hc.runtime.cwd


@contextlib.contextmanager
def job_scope() -> Iterator[None]:
    """Run one training as a self-contained DDP job, also when it is one job of a multirun.

    Under `-m` (a sweep, Optuna), Lightning's launcher would re-run the sweep's command line in
    each child; here the children run `job_command` instead. Afterwards the process group, the
    launch variables (`MASTER_PORT`, `LOCAL_RANK`, ...) and the thread count are reset, so the
    next job of the sweep launches its own processes on a fresh port. Outside a multirun it
    changes nothing. (The swap replaces Lightning's private `_hydra_subprocess_cmd`, as of
    lightning 2.6; tests/test_sweeps.py runs a sweep of DDP jobs to catch a change.)"""
    if _multirun_hydra_config() is None:
        yield
        return
    from unittest import mock

    from lightning.pytorch.strategies.launchers import subprocess_script

    saved_env = {key: os.environ.get(key) for key in _LAUNCH_ENV}
    saved_threads = torch.get_num_threads()
    try:
        with mock.patch.object(subprocess_script, "_hydra_subprocess_cmd", job_command):
            yield
    finally:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        torch.set_num_threads(saved_threads)


def wait_for_children(trainer: Any, timeout: float = 60.0) -> None:
    """Wait for the DDP processes this rank launched (if any) to exit, so that a job is over when
    it returns. Once rank 0 is done every collective is done, so a child still running after
    `timeout` is stuck (in a collective only it entered): it is killed, not left behind."""
    launcher = getattr(trainer.strategy, "launcher", None)
    for proc in getattr(launcher, "procs", []) or []:
        if not isinstance(proc, subprocess.Popen):
            continue  # ddp_spawn's processes: Lightning has joined them
        try:
            code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            log.error("DDP process %s still running %.0f s after rank 0 finished (stuck in a collective?): killed", proc.pid, timeout)
            proc.kill()
            continue
        if code:
            log.warning("DDP process %s exited with code %s", proc.pid, code)
