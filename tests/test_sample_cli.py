"""Story: sample from a checkpoint with `python -m ddpm_lightning.sample`, including img2img,
inpainting and 2-D data, and `Trainer.predict`."""

from __future__ import annotations

import os
import subprocess
import sys

import lightning as L
import numpy as np
import pytest
import torch
from conftest import TINY, compose_train
from PIL import Image

from ddpm_lightning.module import DiffusionModule, noise_loader
from ddpm_lightning.sample import main as sample_main
from ddpm_lightning.train import build


def _train(tmp_path_factory, name, *overrides):
    out = tmp_path_factory.mktemp(name)
    tiny = [o for o in TINY if not o.startswith("network.")] if "network=mlp" in overrides else TINY
    cfg = compose_train(["trainer.accelerator=cpu", "logger=none", *tiny, *overrides], out)
    dm, model, trainer = build(cfg)
    trainer.fit(model, datamodule=dm)
    return out / "checkpoints" / "last.ckpt"


@pytest.fixture(scope="module")
def digits_ckpt(tmp_path_factory):
    return _train(tmp_path_factory, "digits")


@pytest.fixture(scope="module")
def toy_ckpt(tmp_path_factory):
    return _train(tmp_path_factory, "toy", "data=toy2d", "network=mlp", "network.hidden=16",
                  "callbacks.sample_grid.num_samples=16")


def test_sample_writes_uint8_npz_and_grid(digits_ckpt, tmp_path):
    paths = sample_main([f"ckpt={digits_ckpt}", "n=5", "sampler=ddim", "steps=3", "seed=0", f"out={tmp_path / 'a'}",
                         "progress=false"])
    arr = np.load(paths["npz"])["arr_0"]
    assert arr.dtype == np.uint8 and arr.shape == (5, 16, 16, 1)
    assert Image.open(paths["grid"]).size[0] > 0
    again = np.load(sample_main([f"ckpt={digits_ckpt}", "n=5", "sampler=ddim", "steps=3", "seed=0",
                                 f"out={tmp_path / 'b'}", "progress=false"])["npz"])["arr_0"]
    other = np.load(sample_main([f"ckpt={digits_ckpt}", "n=5", "sampler=ddim", "steps=3", "seed=1",
                                 f"out={tmp_path / 'c'}", "progress=false"])["npz"])["arr_0"]
    assert np.array_equal(arr, again) and not np.array_equal(arr, other)


def test_sample_img2img_and_inpainting(digits_ckpt, tmp_path):
    img = np.zeros((16, 16), np.uint8)
    img[4:12, 6:10] = 255
    Image.fromarray(img).save(tmp_path / "digit.png")
    mask = np.zeros((16, 16), np.uint8)
    mask[:, 8:] = 255  # regenerate the right half
    Image.fromarray(mask).save(tmp_path / "mask.png")
    low = np.load(sample_main([f"ckpt={digits_ckpt}", f"image={tmp_path / 'digit.png'}", "strength=0.05", "n=2",
                               "sampler=ddim", "steps=20", f"out={tmp_path / 'i2i'}", "progress=false"])["npz"])["arr_0"]
    assert np.abs(low[..., 0].astype(int) - img).mean() < 40  # a small strength stays close
    inp = np.load(sample_main([f"ckpt={digits_ckpt}", f"image={tmp_path / 'digit.png'}", f"mask={tmp_path / 'mask.png'}",
                               "n=2", "sampler=ddpm", "steps=5", f"out={tmp_path / 'inp'}", "progress=false"])["npz"])["arr_0"]
    assert np.array_equal(inp[:, :, :8, 0], np.broadcast_to(img[:, :8], (2, 16, 8)))  # kept region exact


def test_sample_2d_data_writes_float_points_and_a_scatter_plot(toy_ckpt, tmp_path):
    paths = sample_main([f"ckpt={toy_ckpt}", "n=7", "steps=5", f"out={tmp_path}", "progress=false"])
    arr = np.load(paths["npz"])["arr_0"]
    assert arr.dtype == np.float32 and arr.shape == (7, 2)
    assert paths["grid"].is_file()


def test_trainer_predict_samples_from_noise(digits_ckpt):
    model = DiffusionModule.load_from_checkpoint(digits_ckpt)
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False)
    batches = trainer.predict(model, noise_loader(6, model.data_shape, batch_size=4, seed=3))
    samples = torch.cat(batches)
    assert samples.shape == (6, 1, 16, 16) and torch.isfinite(samples).all()


@pytest.mark.parametrize(
    "args, message",
    [
        (["n=0"], "n must be a positive integer"),
        (["n=-3"], "n must be a positive integer"),
        (["ckpt=/nonexistent/last.ckpt"], "does not exist"),
        (["bogus=1"], "unknown option"),
        (["host_malloc=tcmalloc"], "host_malloc must be one of retain, system"),
    ],
)
def test_bad_sample_arguments_exit_with_one_clear_line(digits_ckpt, tmp_path, args, message):
    argv = [f"ckpt={digits_ckpt}", f"out={tmp_path}", *args]
    res = subprocess.run([sys.executable, "-m", "ddpm_lightning.sample", *argv], capture_output=True, text=True,
                         timeout=120, env={**os.environ, "WANDB_MODE": "offline"})
    assert res.returncode == 2, res.stderr[-2000:]
    assert message in res.stderr and res.stderr.strip().count("\n") == 0
    assert not (tmp_path / "samples.npz").exists()


def test_package_sample_is_the_sampling_function_after_the_command_module_is_imported():
    # importing ddpm_lightning.sample (as this file does) binds the module as the package's
    # `sample`, over the exported function: calling it must still sample, with the same result
    import inspect

    import ddpm_lightning
    from ddpm_lightning import DDIMSampler, DiffusionProcess, sampling
    from ddpm_lightning import sample as exported

    assert isinstance(ddpm_lightning.sample, type(sys)) and exported is ddpm_lightning.sample
    assert inspect.signature(exported) == inspect.signature(sampling.sample)
    process = DiffusionProcess("linear", 100)
    net = lambda x, t: 0.1 * x  # noqa: E731
    a, b = (f(net, process, "epsilon", DDIMSampler(process), (2, 1, 4, 4), num_steps=5,
              generator=torch.Generator().manual_seed(3)).samples for f in (exported, sampling.sample))
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert a.abs().sum() > 0
