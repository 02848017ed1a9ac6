"""Training from the composed configs: every parameterization and sampler, learning on toy2d,
W&B offline, resume, and the start-up errors."""

from __future__ import annotations

import glob
import json
from pathlib import Path

import lightning as L
import pytest
import torch
from conftest import TINY

from ddpm_lightning.module import DiffusionModule
from ddpm_lightning.train import build, train


@pytest.mark.parametrize("data", ["digits", "toy2d"])
@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
@pytest.mark.parametrize("param", ["epsilon", "x0", "mu", "v"])
def test_fast_dev_run_every_parameterization_and_sampler(make_cfg, data, sampler, param):
    extra = ["network=mlp", "network.hidden=16"] if data == "toy2d" else [
        "network.block_out_channels=[16,16,32]", "network.attention_head_dim=8", "network.norm_num_groups=8"]
    cfg = make_cfg(f"data={data}", f"sampler={sampler}", f"parameterization={param}",
                   "debug=fast_dev_run", "data.batch_size=8", *extra)
    datamodule, model, trainer = build(cfg)
    trainer.fit(model, datamodule=datamodule)
    assert torch.isfinite(trainer.callback_metrics["train/loss"])
    out = model.sample(3, num_steps=2)
    assert out.samples.shape == (3, *datamodule.data_shape) and torch.isfinite(out.samples).all()


def _moments(x):
    return x.mean(0), torch.cov(x.T)


@pytest.mark.slow  # ~40 s on an idle 2-core machine; .ci/run runs the slow tests too
def test_short_toy2d_run_learns_the_data_distribution(make_cfg):
    cfg = make_cfg("experiment=toy2d", "trainer.max_steps=1500", "trainer.val_check_interval=1500",
                   "callbacks=ema", "trainer.enable_progress_bar=false")
    L.seed_everything(0)
    datamodule, model, trainer = build(cfg)
    datamodule.setup("fit")
    data = datamodule.real_samples(4000, "train")
    m_data, c_data = _moments(data)

    def error(module):
        x = module.sample(4000, seed=0).samples
        m, c = _moments(x)
        return float((m - m_data).abs().max()), float((c - c_data).abs().max())

    untrained = error(model)
    trainer.fit(model, datamodule=datamodule)
    trained = error(model)
    # moons scaled to unit overall std (variances ~0.75 and ~0.25): mean within 0.05 and
    # covariance entries within 0.15 (measured over seeds: 0.009-0.019 and 0.037-0.096);
    # an untrained model is off by orders of magnitude
    assert trained[0] < 0.05 and trained[1] < 0.15, trained
    assert untrained[0] > 0.1 or untrained[1] > 0.1, untrained


def read_wandb_records(path):
    """The protobuf records of a W&B transaction log (`run-*.wandb`): a 7-byte file header
    (":W&B", magic, version), then LevelDB-log blocks of 32 KiB whose chunks have a 7-byte
    header (crc32, length, type: 1 full, 2 first, 3 middle, 4 last)."""
    import struct

    from wandb.proto import wandb_internal_pb2

    data = Path(path).read_bytes()
    assert data[:4] == b":W&B"
    pos, block, records, pending = 7, 32768, [], b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block tail too short for a header is padding
            pos += block - pos % block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        chunk = data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind == 0 and length == 0:
            break
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (1, 4):
            rec = wandb_internal_pb2.Record()
            rec.ParseFromString(pending)
            records.append(rec)
    return records


def test_wandb_offline_run_holds_the_grid_and_loss_history(make_cfg, tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("WANDB_MODE", "offline")
    import wandb

    wandb.finish()  # no run left open by an earlier test in this process
    cfg = make_cfg("logger=wandb", *TINY)
    metrics = train(cfg)
    assert "train/loss" in metrics
    run_dirs = glob.glob(str(tmp_path / "wandb" / "offline-run-*"))
    assert len(run_dirs) == 1, run_dirs
    images = glob.glob(f"{run_dirs[0]}/files/media/images/samples/*.png")
    assert images, "no sample grid in the offline run"
    # the history (train/loss at every logged step) is in the run's transaction log
    losses = [
        json.loads(item.value_json)
        for rec in read_wandb_records(glob.glob(f"{run_dirs[0]}/run-*.wandb")[0])
        if rec.WhichOneof("record_type") == "history"
        for item in rec.history.item
        if (item.key or "/".join(item.nested_key)) == "train/loss"
    ]
    assert len(losses) >= 3 and all(l > 0 for l in losses)
    # and the PNGs are always in the run directory too
    assert (tmp_path / "samples" / "samples_latest.png").is_file()
    assert (tmp_path / "samples" / "trajectory_latest.png").is_file()
    assert (tmp_path / "samples" / "forward_latest.png").is_file()


def test_resume_continues_step_optimizer_and_ema(make_cfg, tmp_path):
    first = make_cfg(*TINY, "trainer.max_steps=6", "callbacks.model_checkpoint.every_n_train_steps=6",
                     output_dir=tmp_path / "a")
    dm, model, trainer = build(first)
    trainer.fit(model, datamodule=dm)
    last = tmp_path / "a" / "checkpoints" / "last.ckpt"
    ckpt = torch.load(last, weights_only=False)
    assert ckpt["global_step"] == 6
    ema_state = next(v for k, v in ckpt["callbacks"].items() if k.startswith("EMA"))
    assert ema_state["num_updates"] == 6
    # the checkpoint's state_dict is the EMA model; the live weights sit beside it
    assert "current_model_state" in ckpt
    name = next(k for k in ckpt["state_dict"] if k.startswith("network.") and k.endswith("weight"))
    assert not torch.equal(ckpt["state_dict"][name], ckpt["current_model_state"][name])

    second = make_cfg(*TINY, "trainer.max_steps=9", f"ckpt_path={last}", output_dir=tmp_path / "b")
    dm2, model2, trainer2 = build(second)
    seen = {}

    def on_train_start():
        opt = trainer2.optimizers[0]
        seen["step"] = trainer2.global_step
        seen["opt_steps"] = int(next(iter(opt.state.values()))["step"])
        ema = next(cb for cb in trainer2.callbacks if type(cb).__name__ == "EMA")
        seen["ema_updates"] = ema._num_updates
        seen["ema_weight"] = ema._average_model.module.state_dict()[name].clone()
        seen["live_weight"] = model2.state_dict()[name].clone()

    model2.on_train_start = on_train_start
    trainer2.fit(model2, datamodule=dm2, ckpt_path=str(last))
    assert seen["step"] == 6 and seen["opt_steps"] == 6 and seen["ema_updates"] == 6
    torch.testing.assert_close(seen["ema_weight"], ckpt["state_dict"][name])
    torch.testing.assert_close(seen["live_weight"], ckpt["current_model_state"][name])
    assert trainer2.global_step == 9


def test_checkpoint_alone_restores_a_model_that_samples(make_cfg, tmp_path):
    cfg = make_cfg(*TINY, "schedule=cosine", "parameterization=v")
    dm, model, trainer = build(cfg)
    trainer.fit(model, datamodule=dm)
    loaded = DiffusionModule.load_from_checkpoint(tmp_path / "checkpoints" / "last.ckpt")
    torch.testing.assert_close(loaded.process.betas, model.process.betas)
    assert loaded.parameterization.name == "v" and loaded.data_shape == (1, 16, 16)
    a = loaded.sample(2, num_steps=3, seed=1).samples
    b = loaded.sample(2, num_steps=3, seed=1).samples
    assert torch.equal(a, b) and a.shape == (2, 1, 16, 16)


# ---- bad input: a clear error before any training, nothing written ------------------------
def _fails_before_training(cfg, match, error=ValueError):
    with pytest.raises(error, match=match):
        train(cfg)


def test_image_size_the_unet_cannot_downsample(make_cfg, tmp_path):
    _fails_before_training(make_cfg("data.image_size=18"), r"image size 18x18 cannot be downsampled.*multiples of 4")
    assert not (tmp_path / "checkpoints").exists()


def test_channels_that_do_not_match_the_network(make_cfg):
    _fails_before_training(make_cfg("network.in_channels=3"), r"1 channel\(s\) but the network takes in_channels=3")


def test_toy2d_with_a_unet(make_cfg):
    _fails_before_training(make_cfg("data=toy2d"), "use network=mlp")


def test_images_with_the_mlp(make_cfg):
    _fails_before_training(make_cfg("network=mlp"), "use a UNet")


def test_missing_and_empty_image_folder(make_cfg, tmp_path):
    _fails_before_training(make_cfg("data=folder", f"data.root={tmp_path / 'nope'}"), "nope")
    (tmp_path / "empty").mkdir()
    _fails_before_training(make_cfg("data=folder", f"data.root={tmp_path / 'empty'}", "network=unet_small"), "empty")


def test_unreadable_image_file(make_cfg, tmp_path):
    from PIL import Image

    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(3):
        Image.new("RGB", (20, 20), (i * 40, 0, 0)).save(folder / f"ok{i}.png")
    (folder / "broken.png").write_bytes(b"not a png")
    _fails_before_training(make_cfg("data=folder", f"data.root={folder}", "data.image_size=16"), "broken.png")


def test_missing_checkpoint_path(make_cfg, tmp_path):
    _fails_before_training(make_cfg(f"ckpt_path={tmp_path / 'missing.ckpt'}"), "missing.ckpt", FileNotFoundError)


def test_unknown_group_option_names_the_choices(tmp_path):
    from hydra.errors import MissingConfigException
    from conftest import compose_train

    with pytest.raises(MissingConfigException) as err:
        compose_train(["schedule=cosinus"], tmp_path)
    assert "cosine" in str(err.value) and "linear" in str(err.value)


def test_unknown_host_malloc_policy(make_cfg):
    _fails_before_training(make_cfg("host_malloc=jemalloc"), "host_malloc must be one of retain, system", ValueError)
