"""Every bad input gets one line, before any work: a table of cases across train.py, the sample
command and the evaluate command (configs, values, files, checkpoints), each run as a user runs
it, in a fresh process. Each case must exit with code 2, print exactly one `error: ...` line on
stderr that names the bad value, show no traceback, train no step, and leave the output
folder as it was (beyond Hydra's own record of the attempt, `.hydra/` and the job log)."""

from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
HYDRA_RECORD = {".hydra", "train.log", "sample.log", "evaluate.log"}
pytestmark = pytest.mark.slow  # ~60 fresh processes; .ci/run runs them


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A real checkpoint (a 2-step digits run), and broken files of every kind."""
    from conftest import TINY, compose_train

    from ddpm_lightning.train import train

    root = tmp_path_factory.mktemp("bad_inputs")
    run = root / "run"
    cfg = compose_train(["trainer.accelerator=cpu", "logger=none", *TINY, "trainer.max_steps=2",
                         "trainer.val_check_interval=2"], run)
    train(cfg)
    good = run / "checkpoints" / "last.ckpt"
    truncated = root / "truncated.ckpt"
    truncated.write_bytes(good.read_bytes()[:4000])
    garbage = root / "garbage.ckpt"
    garbage.write_bytes(os.urandom(5000))
    empty = root / "empty.ckpt"
    empty.write_bytes(b"")
    state_dict = root / "state_dict.pt"
    torch.save({"w": torch.ones(3)}, state_dict)
    other = root / "other.pt"
    torch.save({"epoch": 3, "model": {"w": torch.ones(2)}}, other)
    npz_cut = root / "cut.npz"
    import numpy as np

    np.savez(root / "full.npz", arr_0=np.zeros((20, 16, 16, 1), dtype=np.uint8))
    npz_cut.write_bytes((root / "full.npz").read_bytes()[:300])
    png = root / "digit.png"
    from PIL import Image

    Image.fromarray(np.zeros((16, 16), dtype=np.uint8)).save(png)
    return {"good": good, "truncated": truncated, "garbage": garbage, "empty": empty, "state_dict": state_dict,
            "other": other, "npz_cut": npz_cut, "png": png, "root": root}


TRAIN = ["logger=none", "trainer.accelerator=cpu", "trainer.max_steps=2"]
CASES = [
    # --- train.py: config groups and keys (Hydra's errors) ---
    ("train", ["schedule=cosinus"], "cosinus"),
    ("train", ["sampler=ddim2"], "ddim2"),
    ("train", ["variance=learnt"], "learnt"),
    ("train", ["foo=1"], "foo"),
    ("train", ["sampler.etta=0.5"], "etta"),
    ("train", ["schedule=[linear"], "[linear"),
    # --- train.py: values, found by building everything once ---
    ("train", ["sampler=ddim", "sampler.eta=-1"], "-1"),
    ("train", ["sampler=ddim", "sampler.spacing=middle"], "middle"),
    ("train", ["sampler=ddpm", "sampler.variance=huge"], "huge"),
    ("train", ["sampler=dpmpp_2m", "sampler.solver_order=5"], "5"),
    ("train", ["sampler=diffusers", "sampler.scheduler=NoSuchScheduler"], "NoSuchScheduler"),
    ("train", ["sampler=diffusers", "+sampler.bogus_option=1"], "bogus_option"),
    ("train", ["sampler.num_steps=0"], "0"),
    ("train", ["loss.type=foo"], "foo"),
    ("train", ["loss.weighting=bar"], "bar"),
    ("train", ["loss.min_snr_gamma=0"], "min_snr_gamma"),
    ("train", ["parameterization=mu", "loss=min_snr"], "loss.weighting=min_snr"),
    ("train", ["loss=hybrid"], "hybrid"),
    ("train", ["variance=learned_range", "loss=mse"], "learned_range"),
    ("train", ["schedule.num_timesteps=0"], "num_timesteps"),
    ("train", ["schedule.beta_end=2.0"], "beta"),
    ("train", ["data.image_size=15"], "15"),
    ("train", ["network=mlp"], "MLP"),
    ("train", ["data=toy2d"], "UNet"),
    ("train", ["data=folder"], "data.root"),
    ("train", ["data=folder", "data.root=/nonexistent/images"], "/nonexistent/images"),
    ("train", ["trainer.devices=64"], "64"),
    ("train", ["strategy=deepspeed"], "deepspeed"),
    ("train", ["nan_policy=ignore"], "ignore"),
    ("train", ["host_malloc=big"], "big"),
    ("train", ["lr_scaling.rule=cubic"], "cubic"),
    ("train", ["ckpt_path=/nonexistent/last.ckpt"], "/nonexistent/last.ckpt"),
    ("train", ["ckpt_path={truncated}"], "truncated.ckpt"),
    ("train", ["ckpt_path={garbage}"], "garbage.ckpt"),
    ("train", ["ckpt_path={empty}"], "empty.ckpt"),
    ("train", ["ckpt_path={state_dict}"], "state_dict.pt"),
    ("train", ["callbacks=[default,class_accuracy]"], "unconditional (conditioning=none)"),
    ("train", ["experiment=toy2d", "data.dataset=8gaussians", "conditioning=class", "callbacks=[default,class_accuracy]"],
     "needs data=digits"),
    # --- the sample command ---
    ("sample", [], "ckpt"),
    ("sample", ["ckpt=/nonexistent/last.ckpt"], "/nonexistent/last.ckpt"),
    ("sample", ["ckpt={truncated}"], "truncated.ckpt"),
    ("sample", ["ckpt={garbage}"], "garbage.ckpt"),
    ("sample", ["ckpt={empty}"], "empty.ckpt"),
    ("sample", ["ckpt={state_dict}"], "state_dict.pt"),
    ("sample", ["ckpt={other}"], "other.pt"),
    ("sample", ["ckpt={good}", "n=0"], "n"),
    ("sample", ["ckpt={good}", "batch_size=-3"], "batch_size"),
    ("sample", ["ckpt={good}", "sampler=nope"], "nope"),
    ("sample", ["ckpt={good}", "sampler=ddim", "sampler.eta=-2"], "-2"),
    ("sample", ["ckpt={good}", "bogus=1"], "bogus"),
    ("sample", ["ckpt={good}", "image=/nonexistent.png"], "/nonexistent.png"),
    ("sample", ["ckpt={good}", "image={png}", "strength=2"], "strength"),
    ("sample", ["ckpt={good}", "mask={png}"], "mask"),
    ("sample", ["pipeline={root}"], "unet"),
    # --- the evaluate command ---
    ("evaluate", ["metric=foo", "ckpt={good}"], "foo"),
    ("evaluate", [], "samples"),
    ("evaluate", ["samples=/nonexistent.npz", "data=digits"], "/nonexistent.npz"),
    ("evaluate", ["samples={npz_cut}", "data=digits"], "cut.npz"),
    ("evaluate", ["ckpt={garbage}", "data=digits"], "garbage.ckpt"),
    ("evaluate", ["ckpt={good}", "feature=clip"], "clip"),
    ("evaluate", ["ckpt={good}", "bogus=1"], "bogus"),
    ("evaluate", ["ckpt={good}", "split=test"], "test"),
    ("evaluate", ["metric=bpd"], "ckpt"),
    ("evaluate", ["ckpt={good}", "guidance=3"], "guidance=3"),
    ("evaluate", ["ckpt={good}", "guidance=-1"], "-1"),
]


def command(kind: str, args: list[str], files: dict, out: Path) -> list[str]:
    args = [a.format(**{k: str(v) for k, v in files.items()}) for a in args]
    if kind == "train":
        return [sys.executable, str(ROOT / "train.py"), *TRAIN, f"hydra.run.dir={out}", *args]
    extra = [f"out={out}"] if kind == "sample" else [f"out={out / 'result.json'}", f"hydra.run.dir={out}"]
    return [sys.executable, "-m", f"ddpm_lightning.{kind}", *extra, "device=cpu", *args]


def run_case(case, files) -> tuple[tuple, subprocess.CompletedProcess, set[str], set[str], str]:
    kind, args, _ = case
    out = files["root"] / "outs" / f"{kind}-{abs(hash(tuple(args)))}"
    out.mkdir(parents=True)
    (out / "earlier.txt").write_text("a file that must survive")
    before = {p.name for p in out.iterdir()}
    env = {**os.environ, "WANDB_MODE": "offline", "PYTHONWARNINGS": "ignore", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(command(kind, args, files, out), cwd=files["root"], env=env, capture_output=True,
                          text=True, timeout=300)
    after = {p.name for p in out.iterdir()}
    return case, proc, before, after, (out / "earlier.txt").read_text()


def test_every_bad_input_is_one_line_before_any_work(files):
    assert len(CASES) >= 40
    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(lambda c: run_case(c, files), CASES))
    problems = []
    for (kind, args, needle), proc, before, after, earlier in results:
        errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
        what = f"{kind} {' '.join(args)}"
        if proc.returncode != 2:
            problems.append(f"{what}: exit {proc.returncode}: {proc.stderr.strip().splitlines()[-3:]}")
        elif "Traceback" in proc.stderr or len(errors) != 1:
            problems.append(f"{what}: {len(errors)} error lines / a traceback: {proc.stderr[-600:]}")
        elif needle not in errors[0]:
            problems.append(f"{what}: the line does not name {needle!r}: {errors[0]}")
        new = after - before - HYDRA_RECORD
        if new or earlier != "a file that must survive":
            problems.append(f"{what}: the output folder changed: {sorted(new)}")
    assert not problems, "\n".join(problems)
