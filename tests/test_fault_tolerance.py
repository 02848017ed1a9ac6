"""Work is never lost: last.ckpt is the newest state (every N steps, after validations, at the
end, on SIGTERM), saves are atomic, a run never writes into another run's directory, a NaN loss
stops (or skips) without a NaN checkpoint, W&B falls back to offline, and bad checkpoint files
get one line."""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from lightning.pytorch.callbacks import Callback
from omegaconf import OmegaConf, open_dict
from torch.overrides import TorchFunctionMode

from ddpm_lightning.callbacks import NonFiniteLoss, NonFiniteLossError
from ddpm_lightning.checkpoint_io import AtomicCheckpointIO, remove_stale_temp_files, temp_path
from ddpm_lightning.run_dir import RunDirGuard
from ddpm_lightning.train import build, train

REPO = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent
# a run of a few seconds: 2-D points, a 16-unit MLP, no pictures
TOY = ["data=toy2d", "network=mlp", "network.hidden=16", "data.batch_size=32", "trainer.limit_val_batches=1",
       "trainer.enable_model_summary=false", "~callbacks.sample_grid", "~callbacks.progress_bar",
       "trainer.enable_progress_bar=false", "callbacks.ema.decay=0.9"]


def ckpt_step(path: Path) -> int:
    return torch.load(path, weights_only=False)["global_step"]


def env() -> dict:
    return {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true",
            "PYTHONPATH": os.pathsep.join([str(REPO), str(TESTS)])}


def cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "train.py"), *args], capture_output=True, text=True,
                          timeout=timeout, env=env(), cwd=REPO)


def all_finite(path: Path) -> bool:
    ckpt = torch.load(path, weights_only=False)
    tensors = list(ckpt["state_dict"].values()) + list(ckpt.get("current_model_state", {}).values())
    return all(torch.isfinite(t).all() for t in tensors if t.is_floating_point())


# ---- last.ckpt is the newest state ---------------------------------------------------------------
class LastProbe(Callback):
    """At the start of every training batch: (steps done, step held by last.ckpt or None)."""

    def __init__(self, path: Path) -> None:
        self.path, self.seen = path, []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.seen.append((trainer.global_step, ckpt_step(self.path) if self.path.is_file() else None))


@pytest.mark.parametrize("mode", ["min", "max"])  # max: the monitored "best" never improves after the first validation
def test_last_ckpt_follows_every_n_steps_validations_and_the_end(make_cfg, tmp_path, mode):
    cfg = make_cfg(*TOY, "trainer.max_steps=10", "trainer.val_check_interval=4",
                   "callbacks.model_checkpoint.save_last_every_n_steps=3", f"callbacks.model_checkpoint.mode={mode}")
    dm, model, trainer = build(cfg)
    last = tmp_path / "checkpoints" / "last.ckpt"
    probe = LastProbe(last)
    trainer.callbacks.append(probe)
    trainer.fit(model, datamodule=dm)
    # last.ckpt at the start of step g holds the newest multiple of 3 (the interval) or of 4 (validations)
    expected = [(g, max([s for s in range(1, g + 1) if s % 3 == 0 or s % 4 == 0], default=None)) for g in range(10)]
    assert probe.seen == expected
    assert ckpt_step(last) == 10  # the end of training, between validations
    assert sorted(p.name for p in last.parent.iterdir()) == sorted(["last.ckpt", next(p.name for p in last.parent.glob("best-*"))])


def test_finished_run_last_ckpt_holds_the_final_step_with_live_and_ema_weights(make_cfg, tmp_path):
    # the case, shrunk: ends 9 steps after the last validation, no periodic save
    cfg = make_cfg(*TOY, "trainer.max_steps=29", "trainer.val_check_interval=20",
                   "callbacks.model_checkpoint.save_last_every_n_steps=null")
    dm, model, trainer = build(cfg)
    trainer.fit(model, datamodule=dm)
    ckpt = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)
    assert ckpt["global_step"] == 29
    # saved before the EMA callback copies the average into the model at on_train_end:
    # the live weights are not the EMA weights
    name = next(k for k in ckpt["state_dict"] if k.endswith("weight"))
    assert not torch.equal(ckpt["state_dict"][name], ckpt["current_model_state"][name])


def test_fast_dev_run_writes_no_checkpoint(make_cfg, tmp_path):
    train(make_cfg(*TOY, "debug=fast_dev_run"))
    assert not list(tmp_path.rglob("*.ckpt"))


# ---- SIGTERM -------------------------------------------------------------------------------------
def test_sigterm_saves_the_step_at_the_signal_and_exits_nonzero(tmp_path):
    step_file = tmp_path / "step.txt"
    run_dir = tmp_path / "run"
    args = [*TOY, "trainer.accelerator=cpu", "logger=none", f"hydra.run.dir={run_dir}", "trainer.max_steps=100000",
            "trainer.val_check_interval=100000", "callbacks.model_checkpoint.save_last_every_n_steps=5",
            "+callbacks.step_file._target_=step_probe.StepFile", f"+callbacks.step_file.path={step_file}"]
    proc = subprocess.Popen([sys.executable, str(REPO / "train.py"), *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env(), cwd=REPO)
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and proc.poll() is None:
            # signal between periodic saves, once a few of them have happened
            if step_file.is_file() and (seen := int(step_file.read_text() or 0)) >= 12 and seen % 5 in (1, 2):
                break
            time.sleep(0.02)
        assert proc.poll() is None, proc.communicate()[0][-3000:]
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM, output[-3000:]
    reached = int(step_file.read_text())  # the last step the run finished
    saved = ckpt_step(run_dir / "checkpoints" / "last.ckpt")
    assert saved == reached and saved >= seen, (saved, reached, seen)
    assert f"stopped by SIGTERM at step {saved}" in output


# ---- atomic saves ----------------------------------------------------------------------------------
SLOW_WRITER = """
import io, sys, time, torch
import ddpm_lightning.checkpoint_io as cio
real_save = torch.save
def slow_save(obj, f):  # a slow disk: the bytes trickle out
    buf = io.BytesIO(); real_save(obj, buf); data = buf.getvalue()
    for i in range(0, len(data), 4096):
        f.write(data[i:i + 4096]); f.flush()
        if i == 0:
            print("writing", flush=True)
        time.sleep(0.01)
cio.torch.save = slow_save
ckpt = torch.load(sys.argv[1], weights_only=False)
ckpt["global_step"] = 12345
cio.AtomicCheckpointIO().save_checkpoint(ckpt, sys.argv[1])
"""


def test_kill_during_a_save_keeps_the_old_checkpoint_and_the_next_run_cleans_up(make_cfg, tmp_path):
    cfg = make_cfg(*TOY, "trainer.max_steps=4", "trainer.val_check_interval=4")
    train(cfg)
    last = tmp_path / "checkpoints" / "last.ckpt"
    assert ckpt_step(last) == 4
    proc = subprocess.Popen([sys.executable, "-c", SLOW_WRITER, str(last)], stdout=subprocess.PIPE, text=True, env=env())
    assert proc.stdout.readline().strip() == "writing"
    proc.kill()  # SIGKILL in the middle of the write
    proc.wait()
    partial = [p for p in last.parent.iterdir() if p.name.startswith(".last.ckpt.")]
    assert len(partial) == 1 and partial[0].stat().st_size > 0
    assert ckpt_step(last) == 4  # the old checkpoint, whole

    # the next run in this directory (resuming in place) starts from it and removes the leftover
    resumed = make_cfg(*TOY, "trainer.max_steps=6", "trainer.val_check_interval=4", f"ckpt_path={last}")
    train(resumed)
    assert ckpt_step(last) == 6
    assert not [p for p in last.parent.iterdir() if p.name.startswith(".")]


def test_a_write_that_fails_midway_leaves_the_old_file_and_no_temp_file(tmp_path, monkeypatch):
    import ddpm_lightning.checkpoint_io as cio

    io_ = AtomicCheckpointIO()
    target = tmp_path / "last.ckpt"
    io_.save_checkpoint({"global_step": 1, "w": torch.ones(3)}, target)

    def failing_save(obj, f):
        f.write(b"PK\x03\x04 half a checkpoint")
        raise OSError("No space left on device")

    monkeypatch.setattr(cio.torch, "save", failing_save)
    with pytest.raises(OSError, match="No space left"):
        io_.save_checkpoint({"global_step": 2, "w": torch.zeros(3)}, target)
    assert torch.load(target)["global_step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]


def test_stale_temp_files_of_live_processes_are_kept(tmp_path):
    mine = temp_path(tmp_path / "last.ckpt")  # this process is alive: a save in progress
    mine.write_bytes(b"x")
    dead = tmp_path / ".last.ckpt.999999999.tmp"  # no such process
    dead.write_bytes(b"x")
    assert remove_stale_temp_files(tmp_path) == [dead]
    assert mine.exists() and not dead.exists()


# ---- one run per directory -------------------------------------------------------------------------
def test_a_second_run_in_the_same_directory_is_refused_resume_and_overwrite_work(make_cfg, tmp_path):
    train(make_cfg(*TOY, "trainer.max_steps=4", "trainer.val_check_interval=2"))
    ckpts = tmp_path / "checkpoints"
    before = {p.name: p.stat().st_mtime_ns for p in ckpts.iterdir()}

    with pytest.raises(ValueError, match=r"already holds a run \(checkpoints/\).*ckpt_path=.*last.ckpt.*overwrite=true"):
        train(make_cfg(*TOY, "trainer.max_steps=4"))
    assert {p.name: p.stat().st_mtime_ns for p in ckpts.iterdir()} == before  # nothing touched

    # resuming in place continues the same last.ckpt (no last-v1.ckpt)
    train(make_cfg(*TOY, "trainer.max_steps=6", "trainer.val_check_interval=2", f"ckpt_path={ckpts / 'last.ckpt'}"))
    assert ckpt_step(ckpts / "last.ckpt") == 6 and not list(ckpts.glob("last-v*"))

    with pytest.raises(ValueError, match="would delete the checkpoint being resumed"):
        train(make_cfg(*TOY, "overwrite=true", f"ckpt_path={ckpts / 'last.ckpt'}"))
    # overwrite=true: the earlier run's files go, a fresh run takes their place
    train(make_cfg(*TOY, "trainer.max_steps=3", "trainer.val_check_interval=3", "overwrite=true"))
    assert ckpt_step(ckpts / "last.ckpt") == 3
    assert sorted(p.name for p in ckpts.iterdir()) == ["best-step3.ckpt", "last.ckpt"]


def test_a_failed_start_is_no_earlier_run(make_cfg, tmp_path):
    (tmp_path / ".hydra").mkdir()
    (tmp_path / ".hydra" / "config.yaml").write_text("seed: 0\n")
    (tmp_path / "checkpoints").mkdir()  # empty: nothing was saved
    train(make_cfg(*TOY, "trainer.max_steps=2", "trainer.val_check_interval=2"))
    assert ckpt_step(tmp_path / "checkpoints" / "last.ckpt") == 2


def _hydra_cfg(run_dir: Path, **top):
    cfg = OmegaConf.create({"hydra": {"run": {"dir": str(run_dir)}, "output_subdir": ".hydra"},
                            "overwrite": False, "ckpt_path": None})
    with open_dict(cfg):
        cfg.update(top)
    return cfg


def test_hydra_callback_refuses_before_hydra_writes_and_keeps_the_old_record(tmp_path, capsys):
    (tmp_path / ".hydra").mkdir()
    (tmp_path / ".hydra" / "config.yaml").write_text("old: record\n")
    (tmp_path / "samples").mkdir()
    (tmp_path / "samples" / "samples_latest.png").write_bytes(b"png")
    with pytest.raises(SystemExit) as exit_:
        RunDirGuard().on_run_start(_hydra_cfg(tmp_path))
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "already holds a run (samples/)" in err
    assert (tmp_path / ".hydra" / "config.yaml").read_text() == "old: record\n"

    # resuming in place: the old .hydra/ is moved aside, not overwritten
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "last.ckpt").write_bytes(b"x")
    RunDirGuard().on_run_start(_hydra_cfg(tmp_path, ckpt_path=str(tmp_path / "checkpoints" / "last.ckpt")))
    (kept,) = tmp_path.glob(".hydra.*")
    assert (kept / "config.yaml").read_text() == "old: record\n" and not (tmp_path / ".hydra").exists()


def test_hydra_callback_refuses_a_reused_sweep_directory(tmp_path, capsys):
    (tmp_path / "3" / "checkpoints").mkdir(parents=True)
    (tmp_path / "3" / "checkpoints" / "last.ckpt").write_bytes(b"x")
    cfg = OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path)}}, "overwrite": False})
    with pytest.raises(SystemExit):
        RunDirGuard().on_multirun_start(cfg)
    assert "already holds runs (3/checkpoints/)" in capsys.readouterr().err
    cfg.overwrite = True
    RunDirGuard().on_multirun_start(cfg)  # each job then empties its own directory


@pytest.mark.slow  # two launches of train.py (~40 s)
def test_cli_second_launch_in_the_same_dir_leaves_the_first_run_untouched(tmp_path):
    run_dir = tmp_path / "run"
    first = cli(*TOY, "logger=none", f"hydra.run.dir={run_dir}", "trainer.max_steps=3", "trainer.val_check_interval=3")
    assert first.returncode == 0, first.stderr[-3000:]
    record = (run_dir / ".hydra" / "config.yaml").read_text()
    second = cli(*TOY, "logger=none", f"hydra.run.dir={run_dir}", "trainer.max_steps=5", "seed=7")
    assert second.returncode == 2 and second.stderr.strip().count("\n") == 0, second.stderr
    assert second.stderr.startswith("error: run directory") and "overwrite=true" in second.stderr
    assert (run_dir / ".hydra" / "config.yaml").read_text() == record
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["best-step3.ckpt", "last.ckpt"]


# ---- NaN / Inf loss ------------------------------------------------------------------------------
def poison(model, steps: set[int]):
    """Make the training loss NaN at the given global steps."""
    original = model.training_step

    def training_step(batch, batch_idx):
        loss = original(batch, batch_idx)
        return loss * float("nan") if model.trainer.global_step in steps else loss

    model.training_step = training_step


def test_nan_loss_stops_at_once_with_one_line_and_no_nan_checkpoint(make_cfg, tmp_path):
    cfg = make_cfg(*TOY, "trainer.max_steps=20", "trainer.val_check_interval=2",
                   "callbacks.model_checkpoint.save_last_every_n_steps=1")
    dm, model, trainer = build(cfg)
    poison(model, {5})
    with pytest.raises(NonFiniteLossError) as err:
        trainer.fit(model, datamodule=dm)
    message = str(err.value)
    assert "\n" not in message and "nan at step 5" in message and f"optimizer.lr={cfg.optimizer.lr:g}" in message and "nan_policy=skip" in message
    assert trainer.global_step == 5  # stopped before that step's optimizer update
    ckpts = list((tmp_path / "checkpoints").glob("*.ckpt"))
    assert ckpts and all(all_finite(p) for p in ckpts) and ckpt_step(tmp_path / "checkpoints" / "last.ckpt") == 5


def test_nan_policy_skip_leaves_the_weights_and_counts_the_skips(make_cfg, tmp_path):
    cfg = make_cfg(*TOY, "nan_policy=skip", "trainer.max_steps=8", "trainer.val_check_interval=4",
                   "trainer.log_every_n_steps=1", "logger=csv")
    dm, model, trainer = build(cfg)
    poison(model, {2, 5})
    weights = {}

    class Snapshot(Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            weights[trainer.global_step] = [p.detach().clone() for p in pl_module.parameters()]

    trainer.callbacks.append(Snapshot())
    trainer.fit(model, datamodule=dm)
    assert trainer.global_step == 8 and float(trainer.callback_metrics["train/skipped_steps"]) == 2
    for step in range(7):  # a skipped step changes nothing; every other step does
        same = all(torch.equal(a, b) for a, b in zip(weights[step], weights[step + 1]))
        assert same == (step in (2, 5)), step
    assert all_finite(tmp_path / "checkpoints" / "last.ckpt")
    import csv

    rows = list(csv.DictReader(open(next(tmp_path.rglob("metrics.csv")))))
    skips = [float(r["train/skipped_steps"]) for r in rows if r.get("train/skipped_steps")]
    assert skips[-1] == 2 and skips == sorted(skips)


def test_nan_policy_must_be_a_known_choice(make_cfg, tmp_path):
    with pytest.raises(ValueError, match="nan_policy must be one of stop, skip; got 'ignore'"):
        train(make_cfg(*TOY, "nan_policy=ignore"))
    assert not (tmp_path / "checkpoints").exists()


class HostReads(TorchFunctionMode):
    """Counts Python-level reads of tensor values on the host (each a sync on a GPU), as
    benchmarks/sync_audit.py does on a CPU."""

    READS = {"item", "__bool__", "__int__", "__float__", "__index__", "tolist", "cpu", "numpy"}

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        self.count += getattr(func, "__name__", "") in self.READS
        return func(*args, **(kwargs or {}))


def test_without_per_step_reads_a_nan_is_caught_at_the_next_checkpoint_and_named(make_cfg, tmp_path):
    """The GPU path (no host read per step), run on the CPU: the loss is recorded on the device,
    read at boundaries; the first checkpoint after the NaN raises instead of saving."""
    cfg = make_cfg(*TOY, "trainer.max_steps=20", "trainer.val_check_interval=10", "trainer.log_every_n_steps=50",
                   "callbacks.model_checkpoint.save_last_every_n_steps=1")
    dm, model, trainer = build(cfg)
    guard = next(cb for cb in trainer.callbacks if isinstance(cb, NonFiniteLoss))
    guard.read_every_step = False
    reads = HostReads()
    record = guard.on_before_backward

    def counted(*args):
        with reads:
            record(*args)

    guard.on_before_backward = counted
    poison(model, {5})
    with pytest.raises(NonFiniteLossError, match=r"nan at step 5;"):
        trainer.fit(model, datamodule=dm)
    assert reads.count == 0  # recording the loss read nothing on the host, at any of the 7 steps
    assert trainer.global_step == 6  # the save at step 6 found the record and refused
    assert ckpt_step(tmp_path / "checkpoints" / "last.ckpt") == 5 and all_finite(tmp_path / "checkpoints" / "last.ckpt")


@pytest.mark.slow  # a digits run with a diverging learning rate through the command line (~35 s)
def test_cli_diverging_learning_rate_exits_2_with_one_line(tmp_path):
    run_dir = tmp_path / "run"
    res = cli("optimizer.lr=1e6", "trainer.max_steps=40", "trainer.accelerator=cpu", "logger=none",
              f"hydra.run.dir={run_dir}", *[o for o in __import__("conftest").TINY if "max_steps" not in o],
              "trainer.val_check_interval=10", "callbacks.model_checkpoint.save_last_every_n_steps=1")
    assert res.returncode == 2, res.stderr[-3000:]
    errors = [line for line in res.stderr.splitlines() if line.startswith("error:")]
    assert "Traceback" not in res.stderr and res.stderr.strip().splitlines()[-1] == errors[0], res.stderr[-3000:]
    assert len(errors) == 1 and errors[0].startswith("error: the training loss is") and "optimizer.lr=1e+06" in errors[0], errors
    assert all(all_finite(p) for p in run_dir.rglob("*.ckpt"))


# ---- W&B without a server ------------------------------------------------------------------------
def test_wandb_online_without_a_reachable_server_falls_back_to_offline(tmp_path, monkeypatch, caplog):
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("WANDB_MODE", "online")
    monkeypatch.setenv("WANDB_API_KEY", "0123456789abcdef0123456789abcdef01234567")
    monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{port}")
    import wandb

    from ddpm_lightning.loggers import wandb_logger

    wandb.finish()
    start = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="ddpm_lightning.loggers"):
        logger = wandb_logger(project="ddpm_lightning", save_dir=str(tmp_path))
        logger.experiment.log({"x": 1.0})
    wandb.finish()
    assert time.monotonic() - start < 30
    records = [r.getMessage() for r in caplog.records if r.name == "ddpm_lightning.loggers"]
    assert len(records) == 1 and "unreachable" in records[0] and "offline" in records[0]
    assert list((tmp_path / "wandb").glob("offline-run-*"))


# ---- unreadable checkpoints ------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["truncated", "garbage", "empty", "state_dict"])
def test_resume_from_an_unreadable_checkpoint_is_one_line(make_cfg, tmp_path, kind):
    bad = tmp_path / "bad.ckpt"
    if kind == "truncated":
        torch.save({"state_dict": {"w": torch.ones(1000)}, "pytorch-lightning_version": "2.6"}, bad)
        bad.write_bytes(bad.read_bytes()[:1500])
    elif kind == "garbage":
        bad.write_bytes(os.urandom(3000))
    elif kind == "empty":
        bad.write_bytes(b"")
    else:
        torch.save({"w": torch.ones(3)}, bad)
    cfg = make_cfg(*TOY, f"ckpt_path={bad}", output_dir=tmp_path / "run")
    with pytest.raises(ValueError) as err:
        train(cfg)
    assert "\n" not in str(err.value) and "bad.ckpt" in str(err.value) and "expected a checkpoint written by train.py" in str(err.value)
    assert not (tmp_path / "run" / "checkpoints").exists()
