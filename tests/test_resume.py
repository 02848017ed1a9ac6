"""Exact resume: a run killed (SIGKILL, between checkpoints) and resumed from `last.ckpt` ends
bit-identical to the uninterrupted run: weights, EMA, optimizer, LR schedule, loop counters and
the data loader's position, because the data order, the flips and the noise / timestep draws
continue where they stopped (ddpm_lightning/data/resumable.py, callbacks/rng_state.py).

The runs use a training split of 198 digits (val_fraction=0.89): 12 batches of 16 per epoch, so
a 20-step run crosses an epoch boundary and most resume steps are mid-epoch.
"""

from __future__ import annotations

import os
import random
import signal
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from conftest import compose_train
from test_ddp import TWO_CPUS, run_train, tiny

from ddpm_lightning.callbacks import RNGState
from ddpm_lightning.data import DigitsDataModule
from ddpm_lightning.train import train

BATCHES_PER_EPOCH = 12  # 198 training digits // 16
EVERY = 2  # steps between checkpoints


def run_args(**replace: str) -> list[str]:
    """The overrides of the test run, some replaced: TINY, 20 steps, validation and a sample grid
    every 7, a checkpoint every 2 steps, each one kept (so any even step can be resumed from;
    monitor=null: with a monitor, Lightning defers a save to the next validation).

    No resume step here is a validation step: a checkpoint saved by `every_n_train_steps` is
    written before that step's validation, which a run resumed from it does not repeat."""
    settings = {"data.val_fraction": "0.89", "trainer.max_steps": "20", "trainer.val_check_interval": "7",
                "callbacks.sample_grid.every_n_steps": "7", "callbacks.model_checkpoint.every_n_train_steps": str(EVERY),
                "callbacks.model_checkpoint.monitor": "null", "callbacks.model_checkpoint.save_top_k": "-1"}
    return ["trainer.accelerator=cpu", "logger=none", "~callbacks.progress_bar", "trainer.enable_progress_bar=false",
            *tiny(**{**settings, **replace})]


class KillAtStep(L.Callback):
    """SIGKILL the whole run (every DDP rank: the process group) once `step` optimizer steps are
    done: before ModelCheckpoint (Lightning runs checkpoint callbacks last) can save that step."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.step and trainer.global_rank == 0:
            os.killpg(os.getpgrp(), signal.SIGKILL)


class TermAtStep(L.Callback):
    """SIGTERM the whole run (every DDP rank: the process group, as a scheduler's preemption or
    `scancel` does) at the end of optimizer step `step`."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.step and trainer.global_rank == 0:
            os.killpg(os.getpgrp(), signal.SIGTERM)


def assert_same_state(a, b, path: str = "checkpoint", skip: tuple[str, ...] = ()) -> None:
    """Every tensor equal (torch.equal), every number and flag equal; strings (the run's own
    paths), ModelCheckpoint's path-keyed `best_k_models` and the paths in `skip` are not compared."""
    if path in skip:
        return
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape, path
        if not torch.equal(a, b):
            diff = (a.double() - b.double()).abs().max().item() if a.is_floating_point() else "n/a"
            raise AssertionError(f"{path} differs (max abs difference {diff})")
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), f"{path}: keys {sorted(map(str, a.keys() ^ b.keys()))} in only one"
        for key in a:
            if key != "best_k_models":
                assert_same_state(a[key], b[key], f"{path}/{key}", skip)
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same_state(x, y, f"{path}[{i}]", skip)
    elif not isinstance(a, str):
        assert a == b, f"{path}: {a!r} != {b!r}"


def load(run_dir: Path) -> dict:
    return torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)


def fit(run_dir: Path, overrides: list[str]) -> dict:
    """`train()` in this process, as `python train.py overrides` runs it; the last checkpoint."""
    train(compose_train(overrides, run_dir))
    return load(run_dir)


# ---- the data loader alone -----------------------------------------------------------------------
def epochs(loader, start_epoch: int, n: int) -> list[torch.Tensor]:
    """The batches of n epochs, calling set_epoch as Lightning's fit loop does."""
    out = []
    for epoch in range(start_epoch, start_epoch + n):
        loader.sampler.set_epoch(epoch)
        out += list(loader)
    return out


@pytest.mark.parametrize("num_workers", [0, 2])
@pytest.mark.parametrize("stop", [3, BATCHES_PER_EPOCH])  # mid-epoch, and at the epoch's last batch
def test_training_loader_resumes_order_and_flips(num_workers, stop):
    def loader():
        return DigitsDataModule(batch_size=16, val_fraction=0.89, hflip=True, shuffle_seed=7,
                                num_workers=num_workers).train_dataloader()

    reference = epochs(loader(), 0, 3)
    first = loader()
    first.sampler.set_epoch(0)
    it = iter(first)
    seen = [next(it) for _ in range(stop)]
    state = first.state_dict()
    del it, first
    resumed = loader()
    resumed.load_state_dict(state)
    if stop < BATCHES_PER_EPOCH:  # the rest of epoch 0; after its last batch, Lightning goes on to epoch 1
        resumed.sampler.set_epoch(0)
        seen += list(resumed)
    seen += epochs(resumed, 1, 2)
    assert len(seen) == len(reference) == 3 * BATCHES_PER_EPOCH
    for i, (x, y) in enumerate(zip(seen, reference)):
        assert torch.equal(x, y), f"batch {i} differs after resuming at batch {stop}"
    assert not torch.equal(reference[0], reference[BATCHES_PER_EPOCH])  # epochs are reshuffled


def test_a_plain_loop_gets_a_new_order_every_pass():
    loader = DigitsDataModule(batch_size=16, val_fraction=0.89, shuffle_seed=0).train_dataloader()
    first, second = torch.cat(list(loader)), torch.cat(list(loader))
    assert not torch.equal(first, second)
    again = DigitsDataModule(batch_size=16, val_fraction=0.89, shuffle_seed=0).train_dataloader()
    assert torch.equal(torch.cat(list(again)), first)  # reproducible from the seed


def test_rng_state_keeps_side_draws_out_of_the_training_stream():
    def draw():  # every generator the callback keeps
        return torch.cat([torch.rand(2), torch.tensor(np.random.rand(2)), torch.tensor([random.random()])])

    torch.manual_seed(0), np.random.seed(0), random.seed(0)
    stream = torch.stack([draw(), draw(), draw()])  # three batches, nothing drawn in between
    torch.manual_seed(0), np.random.seed(0), random.seed(0)
    cb = RNGState()
    cb.on_train_batch_start(None, None, None, 0)
    a = draw()
    cb.on_train_batch_end(None, None, None, None, 0)
    draw(), draw()  # validation, a sample grid, ... between two batches
    cb.on_train_batch_start(None, None, None, 1)
    b = draw()
    cb.on_train_batch_end(None, None, None, None, 1)
    assert torch.equal(torch.stack([a, b]), stream[:2])
    # a new process (another seed) that loads the state draws the third batch's values
    state = cb.state_dict()
    torch.manual_seed(1), np.random.seed(1), random.seed(1)
    resumed = RNGState()
    resumed.load_state_dict(state)
    resumed.on_train_batch_start(None, None, None, 2)
    assert torch.equal(draw(), stream[2])


def test_rng_state_of_another_process_count_is_not_applied():
    two_ranks = {"states": [None, None]}  # saved by a 2-process run
    cb = RNGState()
    with pytest.warns(UserWarning, match="random state of 2 process"):
        cb.load_state_dict(two_ranks)
    state = torch.get_rng_state()
    cb.on_train_batch_start(None, None, None, 0)  # nothing to restore: the generators stay as they are
    assert torch.equal(torch.get_rng_state(), state)


# ---- training runs -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    """The run directory of the 20 steps in one go."""
    run_dir = tmp_path_factory.mktemp("uninterrupted")
    fit(run_dir, run_args())
    return run_dir


def assert_same_as_uninterrupted(resumed: dict, reference: dict, resume_step: int,
                                 batches_per_epoch: int = BATCHES_PER_EPOCH) -> None:
    # what is compared: EMA weights (state_dict), live weights, optimizer and LR schedule, the EMA
    # callback's average and count, each rank's random state, loop counters and loader position
    assert {"state_dict", "current_model_state", "optimizer_states", "lr_schedulers", "loops"} <= reference.keys()
    assert {"EMA", "RNGState"} <= reference["callbacks"].keys()
    assert reference["loops"]["fit_loop"]["state_dict"]["combined_loader"]
    epoch = (20 - 1) // batches_per_epoch  # of the 20th step
    assert resumed["global_step"] == reference["global_step"] == 20
    assert resumed["epoch"] == reference["epoch"] == epoch
    skip = ()
    if resume_step % batches_per_epoch == 0:
        # Lightning's bookkeeping quirk: resumed at an epoch's last batch, it starts the next epoch
        # without counting it as ready / started (the next epoch start heals that); the epochs
        # processed and completed, and all the training state, are exact
        progress = resumed["loops"]["fit_loop"]["epoch_progress"]
        for part in ("total", "current"):
            assert [progress[part][n] for n in ("processed", "completed")] == [epoch, epoch]
        skip = ("checkpoint/loops/fit_loop/epoch_progress",)
    assert_same_state(resumed, reference, skip=skip)


@pytest.mark.parametrize("resume_step", [10, BATCHES_PER_EPOCH])  # mid-epoch; at an epoch's end
def test_resumed_trainer_matches_the_uninterrupted_run_exactly(uninterrupted, tmp_path, resume_step):
    """A new Trainer resumes from the checkpoint of `resume_step` and trains to step 20."""
    checkpoint = uninterrupted / "checkpoints" / f"best-step{resume_step}.ckpt"
    assert torch.load(checkpoint, weights_only=False)["global_step"] == resume_step
    resumed = fit(tmp_path, run_args() + [f"ckpt_path={checkpoint}"])
    assert_same_as_uninterrupted(resumed, load(uninterrupted), resume_step)


def kill_and_resume_steps(seed: int, last: int = 19) -> tuple[int, int]:
    """A step to kill at, drawn with a seeded generator (the same each time, printed), and the
    step of the last checkpoint before it (the kill comes before the checkpoint of its own step)."""
    kill_step = random.Random(seed).randint(EVERY + 1, last)
    return kill_step, (kill_step - 1) // EVERY * EVERY


def test_killed_run_resumes_bit_identical(uninterrupted, tmp_path):
    kill_step, resume_step = kill_and_resume_steps(2026)
    print(f"SIGKILL after step {kill_step}; resuming from the checkpoint of step {resume_step}")
    killed = tmp_path / "killed"
    run_train(*run_args(), f"hydra.run.dir={killed}", "+callbacks.kill._target_=test_resume.KillAtStep",
              f"+callbacks.kill.step={kill_step}", cwd=tmp_path, returncode=-signal.SIGKILL)
    assert load(killed)["global_step"] == resume_step, f"killed at {kill_step}"
    resumed = fit(tmp_path / "resumed", run_args() + [f"ckpt_path={killed / 'checkpoints' / 'last.ckpt'}"])
    assert_same_as_uninterrupted(resumed, load(uninterrupted), resume_step)


@pytest.mark.slow
@pytest.mark.parametrize("devices", [1, pytest.param(2, marks=TWO_CPUS)])
def test_killed_command_line_run_resumes_bit_identical(tmp_path, devices):
    """As a user does it: `python train.py ...`, killed, then `python train.py ... ckpt_path=last.ckpt`
    (in a new run directory, as Hydra gives it); with 2 devices, two gloo DDP processes killed together."""
    kill_step, resume_step = kill_and_resume_steps(2026 + devices)
    print(f"{devices} process(es): SIGKILL after step {kill_step}; resuming from the checkpoint of step {resume_step}")
    args = [*run_args(), f"trainer.devices={devices}"]
    reference, killed, resumed = tmp_path / "uninterrupted", tmp_path / "killed", tmp_path / "resumed"
    run_train(*args, f"hydra.run.dir={reference}", cwd=tmp_path)
    run_train(*args, f"hydra.run.dir={killed}", "+callbacks.kill._target_=test_resume.KillAtStep",
              f"+callbacks.kill.step={kill_step}", cwd=tmp_path, returncode=-signal.SIGKILL)
    checkpoint = load(killed)
    assert checkpoint["global_step"] == resume_step
    assert len(checkpoint["callbacks"]["RNGState"]["states"]) == devices  # every rank's stream
    run_train(*args, f"hydra.run.dir={resumed}", f"ckpt_path={killed / 'checkpoints' / 'last.ckpt'}", cwd=tmp_path)
    # each of the `devices` ranks has 198 / devices digits: 12 / devices batches per epoch
    assert_same_as_uninterrupted(load(resumed), load(reference), resume_step, BATCHES_PER_EPOCH // devices)


def term_step(seed: int) -> int:
    """A step to SIGTERM at, drawn with a seeded generator (printed): not a validation step (every
    7) nor a periodic save (every 5), so the state at the signal is saved because of the signal."""
    return random.Random(seed).choice([k for k in range(EVERY + 1, 20) if k % 7 and k % 5])


@pytest.mark.slow
@pytest.mark.parametrize("devices, step", [(1, BATCHES_PER_EPOCH), pytest.param(2, term_step(2026), marks=TWO_CPUS),
                                           pytest.param(2, BATCHES_PER_EPOCH, marks=TWO_CPUS)])
def test_sigtermed_command_line_run_saves_the_step_at_the_signal_and_resumes_bit_identical(tmp_path, devices, step):
    """`python train.py ...` SIGTERMed (the process group: every DDP rank at once) between periodic
    checkpoints exits with 143 after saving the step at the signal; resumed from that `last.ckpt`,
    it ends bit-identical to the uninterrupted run. Step 12 ends an epoch (for 1 and 2 ranks): a
    save after the epoch loop's end-of-step bookkeeping, as Lightning's own SIGTERM save is,
    resumed into an extra epoch there (callbacks/sigterm_notice.py)."""
    print(f"{devices} process(es): SIGTERM at step {step}")
    args = [*run_args(**{"callbacks.model_checkpoint.every_n_train_steps": "5",
                         "callbacks.model_checkpoint.save_last_every_n_steps": "5"}), f"trainer.devices={devices}"]
    reference, termed, resumed = tmp_path / "uninterrupted", tmp_path / "termed", tmp_path / "resumed"
    run_train(*args, f"hydra.run.dir={reference}", cwd=tmp_path)
    output = run_train(*args, f"hydra.run.dir={termed}", "+callbacks.term._target_=test_resume.TermAtStep",
                       f"+callbacks.term.step={step}", cwd=tmp_path, returncode=128 + signal.SIGTERM, timeout=120)
    assert f"stopped by SIGTERM at step {step}" in output, output[-3000:]
    assert load(termed)["global_step"] == step  # not the periodic save before it (a multiple of 5)
    run_train(*args, f"hydra.run.dir={resumed}", f"ckpt_path={termed / 'checkpoints' / 'last.ckpt'}", cwd=tmp_path)
    assert_same_as_uninterrupted(load(resumed), load(reference), step, BATCHES_PER_EPOCH // devices)
