"""Multi-device training: start-up checks (fast), and two-process DDP on the CPU (gloo) run as a
user runs it, `python train.py trainer.accelerator=cpu trainer.devices=2` (slow).

What the DDP run must show: every rank starts from the same weights but draws its own noise and
timesteps; the EMA is the same on every rank; the sample grid holds each fixed noise's sample
once, from whichever rank drew it; `val/loss` is the mean over all ranks' validation examples;
one checkpoint, one set of logs; and the run ends.

What equality `val/loss` can have with a single process: validation noise is keyed by
(batch index, position in the batch), and DDP's `DistributedSampler` deals examples round-robin
(rank r gets examples r, r+W, ...), so rank r's batch 0 pairs other examples with batch 0's noise
than a single process does. The DDP value therefore equals the single-process mean over the same
per-rank batches (tested, to float rounding), not the single-process value over the unsplit set.
"""

from __future__ import annotations

import csv
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import TINY, compose_train
from hydra.utils import instantiate
from lightning.pytorch.callbacks import Callback
from omegaconf import open_dict, read_write

from ddpm_lightning.callbacks import EMA, SampleGrid
from ddpm_lightning.distributed import _cpu_count, job_command, rank_seed
from ddpm_lightning.module import DiffusionModule
from ddpm_lightning.noise import fixed_samples
from ddpm_lightning.train import build, train

REPO = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent
TWO_CPUS = pytest.mark.skipif(_cpu_count() < 2, reason="two DDP processes need two CPU cores")


def tiny(**replace: str) -> list[str]:
    """TINY with some values replaced: tiny(**{"callbacks.sample_grid.num_samples": "5"})."""
    out = [o for o in TINY if o.split("=", 1)[0] not in replace]
    return out + [f"{k}={v}" for k, v in replace.items()]


def run_train(*args: str, cwd: Path, timeout: float = 300, launcher: list[str] | None = None, returncode: int = 0) -> str:
    """Run `python train.py args` (or `launcher args`) in its own process group, as a user would;
    kill the whole group if it outlives `timeout` (a hung DDP run fails instead of hanging the
    suite). Returns stdout + stderr; fails the test on an exit code other than `returncode`."""
    env = {
        **os.environ,
        "WANDB_MODE": "offline",
        "WANDB_SILENT": "true",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")])),
    }
    command = (launcher or [sys.executable]) + [str(REPO / "train.py"), *args]
    proc = subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        output, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        output, _ = proc.communicate()
        pytest.fail(f"`{' '.join(command)}` still running after {timeout} s (a DDP hang?)\n{output[-5000:]}")
    assert proc.returncode == returncode, output[-8000:]
    return output


class RankProbe(Callback):
    """Saves, per rank, what the tests compare: the weights before DDP wraps them, the next
    random draw at the first training batch, the EMA and final weights, and the gathered grids."""

    def __init__(self, out_dir: str) -> None:
        self.out_dir = Path(out_dir)
        self.record: dict = {}

    def setup(self, trainer, pl_module, stage):
        if stage != "fit":
            return
        self.record["initial"] = {k: v.detach().clone() for k, v in pl_module.state_dict().items()}
        grid = next(cb for cb in trainer.callbacks if isinstance(cb, SampleGrid))
        write = grid._write

        def capture(trainer_, pl_module_, tag, samples, out):
            self.record.setdefault("grids", {})[tag] = samples.detach().cpu().clone()
            return write(trainer_, pl_module_, tag, samples, out)

        grid._write = capture

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if "next_draw" not in self.record:  # peek at the global generator without moving it
            state = torch.get_rng_state()
            self.record["next_draw"] = torch.rand(8)
            torch.set_rng_state(state)

    def teardown(self, trainer, pl_module, stage):
        if stage != "fit":
            return
        ema = next(cb for cb in trainer.callbacks if isinstance(cb, EMA))
        self.record["ema"] = {k: v.detach().clone() for k, v in ema._average_model.module.state_dict().items()}
        self.record["final"] = {k: v.detach().clone() for k, v in pl_module.state_dict().items()}
        self.out_dir.mkdir(parents=True, exist_ok=True)
        torch.save(self.record, self.out_dir / f"rank{trainer.global_rank}.pt")


def last_logged(metrics_csv: Path, key: str) -> float:
    rows = [r for r in csv.DictReader(metrics_csv.open()) if r.get(key)]
    return float(max(rows, key=lambda r: int(r["step"]))[key])


# ---- the DDP run ------------------------------------------------------------------------------
@pytest.mark.slow
@TWO_CPUS
@pytest.mark.filterwarnings("ignore:You are trying to `self.log")  # validation_step without a Trainer
def test_two_process_cpu_ddp_run(tmp_path):
    run_dir, probe_dir = tmp_path / "run", tmp_path / "probe"
    overrides = tiny(**{"callbacks.sample_grid.num_samples": "5"}) + [
        "sampler=ddim",  # deterministic sampling: the grid can be recomputed in this process
        "logger=csv",
        "~callbacks.progress_bar",
        "trainer.enable_progress_bar=false",
        "+callbacks.probe._target_=test_ddp.RankProbe",
        f"+callbacks.probe.out_dir={probe_dir}",
    ]
    output = run_train("trainer.accelerator=cpu", "trainer.devices=2", *overrides, f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert "distributed_backend=gloo" in output and "Starting with 2 processes" in output
    assert "effective batch size 32 = 16 per device x 2 device(s)" in output

    # one run directory, written once: one checkpoint set, one log version, one Hydra record
    ckpts = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    assert len(ckpts) == 2 and "last.ckpt" in ckpts, ckpts
    assert [p.name for p in (run_dir / "csv").iterdir()] == ["version_0"]
    assert (run_dir / ".hydra" / "config.yaml").is_file() and (run_dir / "train_ddp_process_1.log").is_file()
    assert (run_dir / "samples" / "samples_final.png").is_file()
    assert not list(tmp_path.glob("outputs")) and not list(tmp_path.glob("multirun"))
    assert "still running" not in output and "exited with code" not in output  # rank 1 ended cleanly

    r0, r1 = (torch.load(probe_dir / f"rank{r}.pt", weights_only=False) for r in (0, 1))
    # the same initial weights (same seed), before DDP's broadcast could hide a difference
    for k in r0["initial"]:
        assert torch.equal(r0["initial"][k], r1["initial"][k]), k
    # but each rank draws its own noise and timesteps
    assert not torch.equal(r0["next_draw"], r1["next_draw"])
    # the EMA (and the weights it was copied into at the end) agree on every rank
    for k in r0["ema"]:
        assert torch.equal(r0["ema"][k], r1["ema"][k]), k
        assert torch.equal(r0["final"][k], r1["final"][k]), k
    trained = next(k for k in r0["final"] if k.startswith("network.") and k.endswith("weight"))
    assert not torch.equal(r0["final"][trained], r0["initial"][trained])

    # the grid: sample i comes from fixed noise i, whichever rank drew it, each exactly once
    model = DiffusionModule.load_from_checkpoint(run_dir / "checkpoints" / "last.ckpt")
    model.load_state_dict(r0["final"])
    grid_cb = SampleGrid(num_samples=5, seed=0)
    expected = fixed_samples(model, range(grid_cb.num_samples), grid_cb.seed, sampler=grid_cb.sampler).samples
    grid = list(r0["grids"].values())[-1]  # the last one drawn: at the last validation or at the end
    assert grid.shape == expected.shape == (5, 1, 16, 16)
    # to float rounding: a batch of 3 per rank vs one of 5 here (measured: 4e-5)
    torch.testing.assert_close(grid, expected, atol=2e-4, rtol=0)

    # val/loss at the last validation (EMA weights = the final ones) is the mean over both ranks'
    # batches: recompute each rank's share here, with DDP's sampler, in one process
    cfg = compose_train(["trainer.accelerator=cpu", "logger=none", *overrides[:-2]], tmp_path / "single")
    dm = instantiate(cfg.data)
    dm.setup("fit")
    val_set = dm.val_dataloader().dataset
    model.eval()
    for rank in (0, 1):
        sampler = torch.utils.data.DistributedSampler(val_set, num_replicas=2, rank=rank, shuffle=False)
        batch = next(iter(torch.utils.data.DataLoader(val_set, batch_size=dm.batch_size, sampler=sampler)))
        with torch.no_grad():
            model.validation_step(batch, 0)  # limit_val_batches=1: batch 0 of each rank
    single = float(model.val_loss.compute())
    ddp = last_logged(run_dir / "csv" / "version_0" / "metrics.csv", "val/loss")
    assert abs(ddp - single) < 1e-5 * max(1.0, abs(single)), (ddp, single)


@pytest.mark.slow
@TWO_CPUS
def test_torchrun_starts_the_processes(tmp_path):
    run_dir = tmp_path / "run"
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    output = run_train("trainer.accelerator=cpu", "trainer.devices=2", *tiny(), "logger=csv", "~callbacks.sample_grid",
                       "~callbacks.progress_bar", "trainer.enable_progress_bar=false", f"hydra.run.dir={run_dir}", cwd=tmp_path, launcher=launcher)
    assert "Starting with 2 processes" in output
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    assert not (run_dir / "train_ddp_process_1.log").exists()  # torchrun started rank 1, not Lightning


@pytest.mark.slow
@TWO_CPUS
def test_ddp_spawn_runs_under_hydra(tmp_path):
    run_dir = tmp_path / "run"
    output = run_train("trainer.accelerator=cpu", "trainer.devices=2", "strategy=ddp_spawn", *tiny(), "logger=csv",
                       "~callbacks.sample_grid", "~callbacks.progress_bar", "trainer.enable_progress_bar=false",
                       f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert "Starting with 2 processes" in output
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    assert math.isfinite(last_logged(run_dir / "csv" / "version_0" / "metrics.csv", "val/loss"))


# ---- fast: what Lightning picks, and the start-up errors ---------------------------------------
@TWO_CPUS
def test_two_cpu_devices_default_to_ddp_over_gloo(make_cfg):
    from lightning.pytorch.strategies import DDPStrategy
    from lightning.pytorch.strategies.launchers import _SubprocessScriptLauncher

    for strategy in ("auto", "ddp"):
        _, _, trainer = build(make_cfg(f"strategy={strategy}", "trainer.devices=2"))
        assert type(trainer.strategy) is DDPStrategy, strategy
        assert trainer.strategy._get_process_group_backend() == "gloo"
        assert isinstance(trainer.strategy.launcher, _SubprocessScriptLauncher)
    _, _, trainer = build(make_cfg("strategy=ddp_spawn", "trainer.devices=2"))
    assert trainer.strategy.launcher._start_method == "spawn"


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        (["trainer.devices=512"], r"trainer.devices=512 but this machine has \d+ CPU core"),
        (["trainer.devices=[0,600]"], r"names device\(s\) \[600\]"),
        (["trainer.devices=0"], "positive number"),
        (["trainer.accelerator=gpu"], "no CUDA GPU is visible; use trainer.accelerator=cpu"),
        (["strategy=fsdp"], "strategy=fsdp needs CUDA GPUs.*use strategy=ddp"),
        (["strategy=deepspeed"], "strategy=deepspeed needs"),
        (["trainer.strategy=ddp_fast"], r"unknown strategy 'ddp_fast'.*ddp_spawn"),
        (["trainer.num_nodes=2"], "num_nodes=2 needs every node's processes started by SLURM"),
        (["lr_scaling.rule=cubic"], "lr_scaling.rule must be null, linear or sqrt"),
    ],
)
def test_scale_out_errors_come_before_any_work(make_cfg, tmp_path, monkeypatch, overrides, match):
    if torch.cuda.is_available() and any("gpu" in o or "fsdp" in o or "deepspeed" in o for o in overrides):
        pytest.skip("a GPU machine can run these")
    for var in ("LOCAL_RANK", "NODE_RANK", "SLURM_NTASKS", "TORCHELASTIC_RUN_ID"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(ValueError, match=match):
        train(make_cfg(*overrides))
    assert not (tmp_path / "checkpoints").exists()


def test_an_unknown_strategy_option_names_the_choices(tmp_path):
    from hydra.errors import MissingConfigException

    with pytest.raises(MissingConfigException) as err:
        compose_train(["strategy=horovod"], tmp_path)
    assert "ddp_spawn" in str(err.value) and "fsdp" in str(err.value)


def test_the_command_line_reports_a_bad_device_count_in_one_line(tmp_path, monkeypatch, capsys):
    from hydra.core.global_hydra import GlobalHydra

    from ddpm_lightning.train import main

    GlobalHydra.instance().clear()
    monkeypatch.setattr(sys, "argv", ["train.py", "trainer.accelerator=cpu", "trainer.devices=512", "logger=none",
                                      f"hydra.run.dir={tmp_path}", "hydra.output_subdir=null"])
    with pytest.raises(SystemExit) as exit_:
        main()
    assert exit_.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith("error: trainer.devices=512 but this machine has")


def test_lr_scaling_by_the_effective_batch(make_cfg):
    base = float(make_cfg().optimizer.lr)
    _, model, _ = build(make_cfg("data.batch_size=32", "lr_scaling.rule=linear", "lr_scaling.reference_batch_size=128"))
    assert model.configure_optimizers()["optimizer"].param_groups[0]["initial_lr"] == pytest.approx(base * 32 / 128)
    _, model, _ = build(make_cfg("data.batch_size=32", "lr_scaling.rule=sqrt", "lr_scaling.reference_batch_size=128"))
    assert model.configure_optimizers()["optimizer"].param_groups[0]["initial_lr"] == pytest.approx(base * 0.5)


def test_rank_seeds_differ_by_rank_and_step_and_repeat():
    seeds = {rank_seed(r, s, seed=0) for r in range(4) for s in (0, 1000)}
    assert len(seeds) == 8
    assert rank_seed(1, 0, seed=0) == rank_seed(1, 0, seed=0) != rank_seed(1, 0, seed=1)


def test_a_multirun_job_relaunches_itself_not_the_sweep(tmp_path, monkeypatch):
    """Under -m, a DDP child runs the job's own overrides in the job's directory, in run mode."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    cfg = compose_train(["schedule=cosine", "trainer.devices=2"], tmp_path / "3")
    with read_write(cfg.hydra), open_dict(cfg.hydra):
        cfg.hydra.mode = RunMode.MULTIRUN
        cfg.hydra.overrides.task = ["schedule=cosine", "trainer.devices=2"]
        cfg.hydra.job.config_name = "train"
        cfg.hydra.job.name = "train"
        cfg.hydra.runtime.cwd = str(tmp_path)
    HydraConfig().set_config(cfg)
    monkeypatch.setattr(sys, "argv", ["train.py", "-m", "schedule=linear,cosine", "trainer.devices=2"])
    command, cwd = job_command(1)
    assert command[command.index("--config-name"):] == ["--config-name", "train", "schedule=cosine", "trainer.devices=2",
                           f'hydra.run.dir="{tmp_path / "3"}"', "hydra.output_subdir=null", "hydra.job.name=train_rank1"]
    assert "schedule=linear,cosine" not in command and cwd == str(tmp_path)
