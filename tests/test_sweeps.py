"""Hydra sweeps: `-m` over config groups (each job in its own directory with its own checkpoint
and W&B run, grouped by sweep), two-process DDP inside each job, an Optuna study, and the
submitit launchers (SLURM composes; the local one runs a job)."""

from __future__ import annotations

import glob
import importlib.util
import math
import os
import sys
from pathlib import Path

import pytest
import yaml
from conftest import compose_train
from omegaconf import open_dict, read_write
from test_ddp import TWO_CPUS, last_logged, run_train, tiny

from ddpm_lightning.loggers import sweep_run_names

HAS_OPTUNA = importlib.util.find_spec("hydra_plugins.hydra_optuna_sweeper") is not None
HAS_SUBMITIT = importlib.util.find_spec("hydra_plugins.hydra_submitit_launcher") is not None
needs_optuna = pytest.mark.skipif(not HAS_OPTUNA, reason="pip install hydra-optuna-sweeper")
needs_submitit = pytest.mark.skipif(not HAS_SUBMITIT, reason="pip install hydra-submitit-launcher")
QUIET = ["~callbacks.progress_bar", "trainer.enable_progress_bar=false"]


def job_dirs(sweep_dir: Path) -> list[Path]:
    return sorted((p for p in sweep_dir.iterdir() if p.name.isdigit()), key=lambda p: int(p.name))


def job_overrides(job_dir: Path) -> list[str]:
    return yaml.safe_load((job_dir / ".hydra" / "overrides.yaml").read_text())


def wandb_run_record(job_dir: Path):
    from test_train import read_wandb_records

    (run_dir,) = glob.glob(str(job_dir / "wandb" / "offline-run-*"))
    (log,) = glob.glob(f"{run_dir}/run-*.wandb")
    return next(r.run for r in read_wandb_records(log) if r.WhichOneof("record_type") == "run")


# ---- fast ---------------------------------------------------------------------------------------
def test_sweep_jobs_get_a_wandb_group_and_name(tmp_path, monkeypatch):
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    cfg = compose_train(["schedule=cosine"], tmp_path)
    assert sweep_run_names() == {}  # a single run: W&B's own naming

    def job(argv, task, dirname):
        monkeypatch.setattr(sys, "argv", ["train.py", "-m", *argv])
        with read_write(cfg.hydra), open_dict(cfg.hydra):
            cfg.hydra.mode = RunMode.MULTIRUN
            cfg.hydra.sweep.dir = "multirun/train/2026-11-22_05-00-00"
            cfg.hydra.overrides.task = task
            cfg.hydra.job.override_dirname = dirname
            cfg.hydra.job.num = 3
        HydraConfig().set_config(cfg)
        return sweep_run_names()

    task = ["schedule=cosine", "parameterization=x0", "trainer.max_steps=4"]
    names = job(["schedule=linear,cosine", "parameterization=epsilon,x0", "trainer.max_steps=4"], task, "every,override")
    assert names == {"group": "train/2026-11-22_05-00-00", "name": "parameterization=x0,schedule=cosine"}
    assert job(["schedule=cosine"], task, "every,override")["name"] == "every,override"  # nothing swept
    assert job([], [], "")["name"] == "job3"


@needs_optuna
def test_optuna_search_composes(tmp_path):
    cfg = compose_train(["hparams_search=optuna"], tmp_path)
    assert cfg.hydra.sweeper._target_.endswith("OptunaSweeper") and cfg.hydra.sweeper.direction == "minimize"
    assert set(cfg.hydra.sweeper.params) == {"optimizer.lr", "schedule", "parameterization"}
    assert cfg.optimized_metric == "val/fid" and "fid" in cfg.callbacks
    assert cfg.callbacks.model_checkpoint.monitor == "val/fid"


@needs_submitit
def test_slurm_launcher_composes_one_task_per_device(tmp_path):
    cfg = compose_train(["hydra/launcher=slurm", "trainer=gpu", "trainer.devices=4", "trainer.num_nodes=2"], tmp_path)
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert (launcher.tasks_per_node, launcher.gpus_per_node, launcher.nodes) == (4, 4, 2)


# ---- slow: real sweeps --------------------------------------------------------------------------
@pytest.mark.slow
def test_multirun_two_by_two(tmp_path):
    sweep = tmp_path / "sweep"
    run_train("-m", "schedule=linear,cosine", "parameterization=epsilon,x0", *tiny(), *QUIET,
              "trainer.accelerator=cpu", "logger=[csv,wandb]", f"hydra.sweep.dir={sweep}", cwd=tmp_path, timeout=600)
    jobs = job_dirs(sweep)
    assert [j.name for j in jobs] == ["0", "1", "2", "3"]
    combos = {tuple(o for o in job_overrides(j) if o.startswith(("schedule", "parameterization"))) for j in jobs}
    assert len(combos) == 4
    names = set()
    for job in jobs:
        assert (job / "checkpoints" / "last.ckpt").is_file()
        assert math.isfinite(last_logged(job / "csv" / "version_0" / "metrics.csv", "val/loss"))
        run = wandb_run_record(job)  # one W&B run per job, named by its overrides, grouped by sweep
        assert run.run_group == f"{tmp_path.name}/sweep"
        names.add(run.display_name)
    assert names == {f"parameterization={p},schedule={s}" for p in ("epsilon", "x0") for s in ("linear", "cosine")}
    assert not (tmp_path / "outputs").exists()


@pytest.mark.slow
@TWO_CPUS
def test_multirun_with_two_process_ddp_jobs(tmp_path):
    sweep = tmp_path / "sweep"
    output = run_train("-m", "schedule=linear,cosine", "trainer.accelerator=cpu", "trainer.devices=2", *tiny(), *QUIET,
                       "logger=csv", "~callbacks.sample_grid", f"hydra.sweep.dir={sweep}", cwd=tmp_path, timeout=600)
    assert output.count("Starting with 2 processes") == 2
    jobs = job_dirs(sweep)
    assert [j.name for j in jobs] == ["0", "1"]  # the children ran the job, not the sweep again
    for job in jobs:
        assert (job / "checkpoints" / "last.ckpt").is_file()
        assert (job / "train_rank1.log").is_file()  # rank 1 ran in the job's directory
        assert [p.name for p in (job / "csv").iterdir()] == ["version_0"]
        assert math.isfinite(last_logged(job / "csv" / "version_0" / "metrics.csv", "val/loss"))
    assert not (tmp_path / "outputs").exists() and not (tmp_path / "multirun").exists()


def sweep_rss_mb(tmp_path: Path, jobs: int, *extra: str) -> list[float]:
    """The sweep parent's resident memory (MB) after each of `jobs` default-network jobs
    (tests/rss_probe.py's Hydra callback, run after ours)."""
    probe = tmp_path / "rss.txt"
    os.environ["RSS_PROBE_FILE"] = str(probe)  # run_train passes os.environ to the child
    try:
        run_train("-m", f"seed=range(0,{jobs})", "trainer.max_steps=2", "trainer.val_check_interval=2",
                  "trainer.limit_val_batches=1", "~callbacks.sample_grid", "data.batch_size=16", *QUIET,
                  "trainer.enable_model_summary=false", "trainer.accelerator=cpu", "logger=wandb",
                  f"hydra.sweep.dir={tmp_path / 'sweep'}", "+hydra.callbacks.probe._target_=rss_probe.RSSProbe",
                  *extra, cwd=tmp_path, timeout=900)
    finally:
        del os.environ["RSS_PROBE_FILE"]
    rss = [int(line) / 1024 for line in probe.read_text().split()]
    assert len(rss) == jobs
    return rss


def growth_per_job(rss: list[float]) -> float:
    """Least-squares slope of the parent's RSS over jobs 2.. (the first job warms caches up)."""
    ys = rss[1:]
    xs = range(len(ys))
    mx, my = sum(xs) / len(ys), sum(ys) / len(ys)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)


@pytest.mark.slow
def test_a_36_job_multirun_keeps_the_parents_memory_flat(tmp_path):
    rss = sweep_rss_mb(tmp_path, 36)
    assert growth_per_job(rss) < 1.0, f"the sweep's parent grew {growth_per_job(rss):.1f} MB/job: {rss}"


@pytest.mark.slow
def test_the_memory_probe_sees_growth_without_release_memory(tmp_path):
    """The control: the same sweep without ddpm_lightning.release_memory grows (about 13 MB/job
    measured), so the flat line above is the callback's doing, not a probe that cannot see."""
    rss = sweep_rss_mb(tmp_path, 12, "~hydra.callbacks.release_memory")
    assert growth_per_job(rss) > 4.0, f"expected the unreleased sweep to grow; {growth_per_job(rss):.1f} MB/job: {rss}"


@pytest.mark.slow
@needs_optuna
def test_optuna_study_of_two_trials(tmp_path, monkeypatch):
    monkeypatch.setenv("DDPM_LIGHTNING_CACHE", str(tmp_path / "cache"))
    sweep = tmp_path / "sweep"
    fid = ["callbacks.fid.every_n_steps=2", "callbacks.fid.num_samples=64", "callbacks.fid.batch_size=64",
           "callbacks.fid.progress=false", "callbacks.fid.sampler.num_steps=3"]
    run_train("-m", "hparams_search=optuna", "hydra.sweeper.n_trials=2", "hydra.sweeper.sampler.n_startup_trials=2",
              *tiny(), *fid, *QUIET, "trainer.accelerator=cpu", "logger=csv", f"hydra.sweep.dir={sweep}",
              cwd=tmp_path, timeout=600)
    jobs = job_dirs(sweep)
    assert len(jobs) == 2
    fids = [last_logged(j / "csv" / "version_0" / "metrics.csv", "val/fid") for j in jobs]
    result = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert result["best_value"] == pytest.approx(min(fids), rel=1e-5)
    assert set(result["best_params"]) == {"optimizer.lr", "schedule", "parameterization"}


@pytest.mark.slow
@needs_submitit
def test_submitit_local_launcher_runs_a_job(tmp_path):
    sweep = tmp_path / "sweep"
    run_train("-m", "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=10", *tiny(), *QUIET,
              "trainer.accelerator=cpu", "logger=csv", f"hydra.sweep.dir={sweep}", cwd=tmp_path, timeout=600)
    (job,) = job_dirs(sweep)
    assert (job / "checkpoints" / "last.ckpt").is_file()
    assert glob.glob(str(sweep / ".submitit" / "*" / "*_result.pkl"))
