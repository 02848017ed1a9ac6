"""Story: `python -m ddpm_lightning.sample` and `... evaluate` are Hydra commands that configure the
sampler as train.py does (`sampler=NAME sampler.KEY=VALUE`), keep the old spellings, list their
options with --help, sweep with -m, and draw sample i from (seed, i) only: the same samples at
any batch size, and the same as the grid callback's."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import TINY, compose_train
from PIL import Image

from ddpm_lightning.callbacks import SampleGrid
from ddpm_lightning.cli import compose, sampler_spec
from ddpm_lightning.evaluate import generated_batches
from ddpm_lightning.evaluate import main as evaluate_main
from ddpm_lightning.metrics import load_digits_images, save_reference_images
from ddpm_lightning.module import sampler_preset
from ddpm_lightning.noise import fixed_samples
from ddpm_lightning.sample import load_module
from ddpm_lightning.sample import main as sample_main
from ddpm_lightning.train import build
from ddpm_lightning.visualize import to_uint8

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(REPO), "WANDB_MODE": "offline"}


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    cfg = compose_train(["trainer.accelerator=cpu", "logger=none", *TINY, "~callbacks.progress_bar",
                         "trainer.enable_progress_bar=false"], out)
    torch.manual_seed(0)
    dm, model, trainer = build(cfg)
    trainer.fit(model, datamodule=dm)
    return out / "checkpoints" / "last.ckpt"


def _samples(ckpt, out, *args) -> np.ndarray:
    return np.load(sample_main([f"ckpt={ckpt}", f"out={out}", "progress=false", *args])["npz"])["arr_0"]


def _cli(module: str, *args, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", f"ddpm_lightning.{module}", *args], capture_output=True, text=True,
                          timeout=300, env=ENV, cwd=cwd)


@pytest.mark.parametrize("sampler", [["sampler=ddpm", "sampler.num_steps=3"], ["sampler=ddim", "sampler.num_steps=3"]])
def test_samples_do_not_depend_on_the_batch_size(ckpt, tmp_path, sampler):
    # ddpm draws fresh noise at every step: each sample's own generator keeps it the same
    small = _samples(ckpt, tmp_path / "a", "n=16", "batch_size=7", *sampler)  # batches of 7, 7, 2
    large = _samples(ckpt, tmp_path / "b", "n=16", "batch_size=64", *sampler)
    assert small.shape == (16, 16, 16, 1)
    assert np.array_equal(small, large)
    other_seed = _samples(ckpt, tmp_path / "c", "n=16", "batch_size=64", "seed=1", *sampler)
    assert not np.array_equal(large, other_seed)


def test_grid_callback_sample_command_and_evaluate_draw_the_same_samples(ckpt, tmp_path):
    spec = {**sampler_preset("ddpm"), "num_steps": 3}  # stochastic steps
    module = load_module(ckpt, "cpu")
    grid = SampleGrid(num_samples=6, seed=2, sampler=spec, trajectory_samples=0, forward_samples=0, out_dir=str(tmp_path / "grid"))
    trainer = SimpleNamespace(world_size=1, global_rank=0, global_step=0, loggers=[], datamodule=None)
    grid.draw(trainer, module, tag="t")
    arr = _samples(ckpt, tmp_path / "cli", "n=6", "seed=2", "batch_size=4", "sampler=ddpm", "sampler.num_steps=3")
    cli_grid = np.asarray(Image.open(tmp_path / "cli" / "grid.png"))
    assert np.array_equal(np.asarray(Image.open(tmp_path / "grid" / "samples_t.png")), cli_grid)
    evaluated = torch.cat(list(generated_batches(module, 6, 5, spec, seed=2)))  # batches of 5 and 1
    assert np.array_equal(to_uint8(evaluated).permute(0, 2, 3, 1).numpy(), arr)


def test_sampler_option_without_a_preset_overrides_the_checkpoints_sampler(ckpt, tmp_path, capsys):
    module = load_module(ckpt, "cpu")
    own = dict(module.hparams.sampler)  # ddpm, 3 steps (TINY), the train config's other options
    assert own["name"] == "ddpm" and own["num_steps"] == 3
    assert sampler_spec(compose("sample", ["sampler.num_steps=2"]), own) == {**own, "num_steps": 2}
    assert sampler_spec(compose("sample", ["sampler=ddim", "sampler.num_steps=2"]), own) == {**sampler_preset("ddim"), "num_steps": 2}
    two = _samples(ckpt, tmp_path / "a", "n=4", "sampler.num_steps=2")
    expected = fixed_samples(module, range(4), 0, sampler={**own, "num_steps": 2}).samples
    assert np.array_equal(two, to_uint8(expected).permute(0, 2, 3, 1).numpy())
    assert not np.array_equal(two, _samples(ckpt, tmp_path / "b", "n=4"))  # the checkpoint's 3 steps
    capsys.readouterr()
    legacy = _samples(ckpt, tmp_path / "c", "n=4", "steps=2")  # the old spelling still works
    assert np.array_equal(legacy, two) and "sampler.num_steps=" in capsys.readouterr().err


@pytest.mark.parametrize(
    "module, texts",
    [
        ("sample", ["sampler.KEY", "batch_size", "ddim, ddpm", "num_steps: null", "steps= eta="]),
        ("evaluate", ["metric=[fid,kid]", "kid_subset_size", "cifar10, digits", "cache_dir", "result.json", "guidance=3"]),
    ],
)
def test_help_lists_the_options(module, texts):
    res = _cli(module, "--help")
    assert res.returncode == 0, res.stderr[-2000:]
    for text in texts:
        assert text in res.stdout, text


def test_evaluate_multirun_writes_one_result_per_job(ckpt, tmp_path):
    res = _cli("evaluate", "-m", f"ckpt={ckpt}", "sampler=ddim,ddpm", "sampler.num_steps=2", "n=8", "data=digits",
               "small_sample=warn", "cache_dir=null", "progress=false", cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    results = sorted(tmp_path.glob("multirun/evaluate/*/*/result.json"))
    assert [p.parent.name for p in results] == ["0", "1"]
    samplers = [json.loads(p.read_text())["samples"]["sampler"] for p in results]
    assert samplers == [{"name": "ddim", "num_steps": 2}, {"name": "ddpm", "num_steps": 2}]
    assert all(np.isfinite(json.loads(p.read_text())["fid"]) for p in results)
    assert not (tmp_path / "outputs").exists()  # nothing else in the working directory


@pytest.mark.parametrize(
    "module, args, message",
    [
        ("sample", ["sampler=nope"], "unknown sampler='nope'; choose one of ['ddim', 'ddpm'"),
        ("sample", ["sampler.colour=red"], "unknown option(s) ['sampler.colour']"),
        ("evaluate", ["metric=fid,kid", "samples=x.npz"], "metric=fid,kid"),
        ("evaluate", ["data=nope", "samples=x.npz"], "unknown data='nope'"),
        ("evaluate", ["-m", "samples=x.npz,y.npz", "out=r.json"], "names one file, but -m runs several jobs"),
    ],
)
def test_hydra_override_errors_are_one_line_with_exit_code_2(ckpt, tmp_path, module, args, message):
    res = _cli(module, *args, f"ckpt={ckpt}" if module == "sample" else "metric=fid", cwd=tmp_path)
    assert res.returncode == 2, res.stderr[-2000:]
    assert message in res.stderr and res.stderr.strip().count("\n") == 0, res.stderr


def test_kid_real_features_come_from_the_cache_the_second_time(tmp_path):
    images, _ = load_digits_images()
    save_reference_images(tmp_path / "s.npz", images[:100])
    args = ["metric=[fid,kid]", f"samples={tmp_path / 's.npz'}", "data=digits", "n_ref=100", f"cache_dir={tmp_path / 'c'}",
            "kid_subset_size=50", "kid_subsets=5", "progress=false"]
    first = evaluate_main(args)
    assert first["reference"]["cache"] == "miss"
    (stored,) = (tmp_path / "c").glob("*.npz")
    with np.load(stored) as data:
        assert data["features"].shape == (100, 64)  # KID's real features, beside mu and sigma
    second = evaluate_main(args)
    assert second["reference"]["cache"] == "hit"
    assert second["kid"] == first["kid"] and second["fid"] == pytest.approx(first["fid"], rel=1e-9)


# ---- files that are not what the commands expect: one line each (issue 17) ---------------------
class Payload:
    """A pickle that runs code when loaded without weights_only."""

    def __reduce__(self):
        return (print, ("PAYLOAD RAN",))


def _bad_checkpoints(ckpt: Path, d: Path) -> dict[str, tuple[Path, str]]:
    raw = ckpt.read_bytes()
    stored = torch.load(ckpt, map_location="cpu", weights_only=True)
    (d / "truncated.ckpt").write_bytes(raw[: len(raw) // 2])
    (d / "garbage.ckpt").write_bytes(bytes(range(256)) * 20)
    (d / "empty.ckpt").write_bytes(b"")
    torch.save(stored["state_dict"], d / "state_dict.pt")
    torch.save({"model": stored["state_dict"], "epoch": 3}, d / "foreign.pt")
    renamed = {**stored, "state_dict": {f"other.{k}": v for k, v in stored["state_dict"].items()}}
    torch.save(renamed, d / "other_network.ckpt")
    torch.save({"x": Payload()}, d / "payload.pt")
    return {
        "truncated": (d / "truncated.ckpt", r"a zip archive cut short at \d+ bytes \(a truncated save\?\)"),
        "garbage": (d / "garbage.ckpt", "5120 bytes that are not a torch.save zip archive"),
        "empty": (d / "empty.ckpt", r"is an empty file \(0 bytes\)"),
        "state_dict": (d / "state_dict.pt", r"a plain state_dict of \d+ tensors \(torch.save\(model.state_dict\(\)\)\)"),
        "foreign": (d / "foreign.pt", r"a .pt without Lightning's .*its keys: \['epoch', 'model'\]"),
        "other_network": (d / "other_network.ckpt", r"does not fit the network .* \d+ of its tensors missing .* unexpected \(first: other\."),
        "payload": (d / "payload.pt", "unpickling them could run code"),
    }


def test_unreadable_foreign_or_mismatched_checkpoints_are_one_line(ckpt, tmp_path):
    for name, (path, message) in _bad_checkpoints(ckpt, tmp_path).items():
        with pytest.raises(ValueError, match=message) as err:
            sample_main([f"ckpt={path}", f"out={tmp_path / name}", "n=2"])
        assert "expected a checkpoint written by train.py" in str(err.value) or name == "other_network", name
        assert "\n" not in str(err.value) and not (tmp_path / name).exists(), name


def test_a_pickle_payload_never_runs_even_if_the_environment_allows_it(ckpt, tmp_path):
    path, message = _bad_checkpoints(ckpt, tmp_path)["payload"]
    env = {**ENV, "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1", "PYTHONPATH": f"{REPO}{os.pathsep}{REPO / 'tests'}"}
    res = subprocess.run([sys.executable, "-m", "ddpm_lightning.evaluate", f"ckpt={path}", "data=digits"],
                         capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert res.returncode == 2 and "PAYLOAD RAN" not in res.stdout + res.stderr
    assert "could run code" in res.stderr and res.stderr.strip().count("\n") == 0, res.stderr


def test_evaluate_refuses_a_nan_result_and_a_truncated_npz(tmp_path):
    points = np.random.default_rng(0).standard_normal((50, 2)).astype(np.float32)
    np.savez(tmp_path / "ref.npz", arr_0=points)
    points[3] = np.nan
    np.savez(tmp_path / "nan.npz", arr_0=points)
    out = tmp_path / "r.json"
    with pytest.raises(ValueError, match=r"the result is not finite \(fid=nan\).*nothing was written"):
        evaluate_main([f"samples={tmp_path / 'nan.npz'}", f"ref={tmp_path / 'ref.npz'}", f"out={out}", "progress=false"])
    assert not out.exists()
    raw = (tmp_path / "ref.npz").read_bytes()
    (tmp_path / "cut.npz").write_bytes(raw[: len(raw) - 40])
    with pytest.raises(ValueError, match=r"cannot read samples file .*cut.npz.* as .npz"):
        evaluate_main([f"samples={tmp_path / 'cut.npz'}", f"ref={tmp_path / 'ref.npz'}", "progress=false"])


def test_a_diffusers_scheduler_from_the_command_line(ckpt, tmp_path):
    args = ["n=3", "sampler=diffusers", "sampler.num_steps=2"]
    unipc = _samples(ckpt, tmp_path / "a", *args, "sampler.scheduler=UniPCMultistepScheduler")
    ddim = _samples(ckpt, tmp_path / "b", *args, "sampler.scheduler=DDIMScheduler")
    assert unipc.shape == ddim.shape == (3, 16, 16, 1)
    spec = {**sampler_preset("diffusers"), "num_steps": 2, "scheduler": "DDIMScheduler"}
    expected = fixed_samples(load_module(ckpt, "cpu"), range(3), 0, sampler=spec).samples
    assert np.array_equal(ddim, to_uint8(expected).permute(0, 2, 3, 1).numpy())


def test_the_number_of_network_evaluations_is_reported(ckpt, tmp_path, capsys):
    # Heun (Karras et al. 2022, Algorithm 1): n steps cost 2n - 1 evaluations, the last step is Euler
    sample_main([f"ckpt={ckpt}", f"out={tmp_path / 's'}", "n=2", "sampler=heun", "sampler.num_steps=3", "progress=false"])
    assert "(heun, 5 network evaluations per sample)" in capsys.readouterr().out
    from ddpm_lightning.evaluate import main as evaluate_main

    result = evaluate_main([f"ckpt={ckpt}", "metric=fid", "n=8", "data=digits", "small_sample=warn", "cache_dir=null",
                            "progress=false", "sampler=heun", "sampler.num_steps=3"])
    assert result["samples"]["nfe"] == 5 and result["samples"]["sampler"]["name"] == "heun"
