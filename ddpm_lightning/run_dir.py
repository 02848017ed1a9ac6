"""One run per run directory: a new run refuses a directory that holds an earlier run's outputs.

`hydra.run.dir=SAME` twice used to mix two runs in one place: Lightning numbered the second
run's `last-v1.ckpt` (so `last.ckpt` stayed the old run's), sample grids were overwritten, and
Hydra rewrote `.hydra/config.yaml`, the record of how the old checkpoints were made. Now:

* a directory holding an earlier run's outputs (`checkpoints/`, `samples/`, logger folders that
  are not empty) is refused with one line saying how to resume or start over;
* resuming in place (`hydra.run.dir=D ckpt_path=D/checkpoints/last.ckpt`) is allowed: Lightning
  then continues the same `last.ckpt`;
* `overwrite=true` deletes the earlier run's outputs, then trains there afresh.

`.hydra/` alone is no earlier run: Hydra writes it before `train()` starts, also for a launch
that stopped at a typo. Hydra writes it before any code of ours runs, too, so the check runs as a
Hydra callback (`RunDirGuard`, `hydra.callbacks` in conf/hydra/default.yaml) at `on_run_start` /
`on_multirun_start`, before that write: a refused run leaves the old `.hydra/` as it was, and a
run that proceeds over an earlier one (resume, overwrite) first moves the old `.hydra/` to
`.hydra.<its date>`, so no config record is lost. `train()` repeats the check for runs started
without Hydra's command line (tests, `compose`) and for each job of a sweep.
"""

from __future__ import annotations

import datetime
import logging
import os
import shutil
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from ddpm_lightning.errors import one_line_errors

log = logging.getLogger(__name__)

# what a run writes into its directory, besides Hydra's .hydra/ and <job>.log
RUN_OUTPUTS = ("checkpoints", "samples", "wandb", "csv", "tensorboard")


def previous_outputs(run_dir: str | Path) -> list[str]:
    """The names in RUN_OUTPUTS that `run_dir` holds, not empty."""
    run_dir = Path(run_dir)
    return [name for name in RUN_OUTPUTS if (run_dir / name).is_dir() and any((run_dir / name).iterdir())]


def _inside(path: str | Path, directory: str | Path) -> bool:
    try:
        Path(path).resolve().relative_to(Path(directory).resolve())
        return True
    except ValueError:
        return False


def _first_process() -> bool:
    """False in the other processes of a multi-process run (DDP children, torchrun, srun): the
    directory is rank 0's to check, and it may already be writing there."""
    return all(os.environ.get(var, "0") in ("", "0") for var in ("LOCAL_RANK", "RANK", "NODE_RANK", "SLURM_PROCID"))


def check_run_dir(run_dir: str | Path, overwrite: bool = False, ckpt_path: str | None = None) -> list[str]:
    """ValueError (one line) if `run_dir` holds an earlier run and this run neither resumes from a
    checkpoint inside it nor has `overwrite`; returns the earlier outputs found (to delete when
    overwriting)."""
    if not _first_process():
        return []
    found = previous_outputs(run_dir)
    if not found:
        return []
    resuming = bool(ckpt_path) and _inside(ckpt_path, run_dir)
    if resuming and overwrite:
        raise ValueError(f"overwrite=true would delete the checkpoint being resumed ({ckpt_path}); drop one of the two")
    if resuming or overwrite:
        return found
    raise ValueError(
        f"run directory {str(run_dir)!r} already holds a run ({', '.join(f + '/' for f in found)}); resume it with"
        f" `hydra.run.dir={run_dir} ckpt_path={Path(run_dir) / 'checkpoints' / 'last.ckpt'}`, start over in it with"
        f" overwrite=true, or choose another hydra.run.dir"
    )


def clear_run_dir(run_dir: str | Path, found: list[str]) -> None:
    """Delete the earlier run's outputs `found` in `run_dir` (overwrite=true)."""
    for name in found:
        shutil.rmtree(Path(run_dir) / name)
    log.info("overwrite=true: deleted the earlier run's %s in %s", ", ".join(found), run_dir)


def keep_hydra_record(run_dir: str | Path, subdir: str = ".hydra") -> Path | None:
    """Move an earlier run's `.hydra/` aside (to `.hydra.<date of its config>`) before Hydra
    writes this run's; return where it went."""
    old = Path(run_dir) / subdir
    if not (old / "config.yaml").is_file():
        return None
    stamp = datetime.datetime.fromtimestamp((old / "config.yaml").stat().st_mtime).strftime("%Y-%m-%d_%H-%M-%S")
    target = old.with_name(f"{subdir}.{stamp}")
    n = 1
    while target.exists():
        target, n = old.with_name(f"{subdir}.{stamp}.{n}"), n + 1
    old.rename(target)
    log.info("kept the earlier run's %s as %s", subdir, target.name)
    return target


class RunDirGuard(Callback):
    """Hydra callback: refuse a run directory with an earlier run before Hydra writes into it."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        run_dir = OmegaConf.select(config, "hydra.run.dir")
        self._guard(config, [Path(str(run_dir))], config.hydra.get("output_subdir"))

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(str(OmegaConf.select(config, "hydra.sweep.dir")))
        jobs = [p for p in sweep_dir.iterdir() if p.is_dir()] if sweep_dir.is_dir() else []
        earlier = [f"{job.name}/{name}/" for job in sorted(jobs) for name in previous_outputs(job)]
        if earlier and not config.get("overwrite", False) and _first_process():
            with one_line_errors():
                raise ValueError(f"sweep directory {str(sweep_dir)!r} already holds runs ({', '.join(earlier[:4])}"
                                 f"{', ...' if len(earlier) > 4 else ''}); choose another hydra.sweep.dir, or"
                                 f" overwrite=true to start its jobs over")
        # each job's own .hydra/ is written per job; train() deletes its earlier outputs

    @staticmethod
    def _guard(config: DictConfig, run_dirs: list[Path], output_subdir: str | None) -> None:
        with one_line_errors():
            for run_dir in run_dirs:
                found = check_run_dir(run_dir, bool(config.get("overwrite", False)), config.get("ckpt_path"))
                if found and output_subdir:
                    keep_hydra_record(run_dir, output_subdir)
