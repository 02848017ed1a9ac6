"""Story: image conditioning (`conditioning=image`): super-resolution, inpainting and colorization
pairs built from any image data set, a UNet taking the condition concatenated to x_t, training,
sampling from Python and from the sample command (`cond_image=`), the restoration grid, and PSNR /
SSIM against the ground truth."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import TINY, compose_train
from PIL import Image

from ddpm_lightning.conditioning import ImageConditioning, build_conditioning, conditioning_for_data
from ddpm_lightning.conditioning import image_tasks
from ddpm_lightning.metrics.restoration import psnr_ssim
from ddpm_lightning.module import DiffusionModule
from ddpm_lightning.networks import UNet
from ddpm_lightning.noise import fixed_samples
from ddpm_lightning.sample import main as sample_main
from ddpm_lightning.train import build

NET = {
    "_target_": "ddpm_lightning.networks.UNet", "in_channels": None, "out_channels": None, "sample_size": None,
    "num_class_embeds": None, "cond_channels": None, "block_out_channels": [8, 16], "layers_per_block": 1,
    "down_block_types": ["DownBlock2D", "DownBlock2D"], "up_block_types": ["UpBlock2D", "UpBlock2D"], "norm_num_groups": 8,
}


def _module(task: str, shape=(1, 16, 16), **kw) -> DiffusionModule:
    cond = {"type": "image", "task": task, "data_shape": list(shape), **kw}
    return DiffusionModule(dict(NET), data_shape=list(shape), conditioning=cond, sampler={"name": "ddim", "num_steps": 3})


def _images(n=4, shape=(1, 16, 16), seed=0) -> torch.Tensor:
    return torch.rand(n, *shape, generator=torch.Generator().manual_seed(seed)) * 2 - 1


# ---- the tasks ------------------------------------------------------------------------------
def test_super_resolution_keeps_a_constant_and_is_the_block_mean_resized_back():
    x = torch.full((2, 3, 16, 16), 0.37)
    torch.testing.assert_close(image_tasks.super_resolution(x, 4), x)
    y = _images(2, (3, 16, 16))
    # the low-resolution image is each 4 x 4 block's mean (an independent reshape)
    blocks = y.reshape(2, 3, 4, 4, 4, 4).mean(dim=(3, 5))
    torch.testing.assert_close(image_tasks.downsample(y, 4), blocks)
    assert image_tasks.super_resolution(y, 4).shape == y.shape


def test_super_resolution_of_a_band_limited_image_stays_close():
    # a smooth image loses little: 4x4 block means and bilinear resizing are both second-order
    # accurate, so the error of a cosine of period P falls as (factor / P)^2
    i = torch.arange(64, dtype=torch.float32)

    def error(period):
        wave = torch.cos(2 * math.pi * i / period)
        x = (wave[:, None] * wave[None, :])[None, None]
        return float((image_tasks.super_resolution(x, 4) - x).abs().max())

    assert error(64) < 0.08 and error(128) < 0.02
    assert 3 < error(64) / error(128) < 5
    # while a checkerboard (above the low-resolution Nyquist frequency) is wiped out
    checker = ((i[:, None] + i[None, :]) % 2 * 2 - 1)[None, None].float()
    assert image_tasks.super_resolution(checker, 4).abs().max() < 1e-6


@pytest.mark.parametrize("kind", ["box", "stroke", "mixed"])
def test_inpainting_keeps_unmasked_pixels_and_masks_have_the_area_asked_for(kind):
    x0 = _images(64, (3, 16, 16))
    g = torch.Generator().manual_seed(1)
    cond = image_tasks.inpainting(x0, g, min_area=0.2, max_area=0.4, kind=kind)
    assert cond.shape == (64, 4, 16, 16)
    image, mask = cond[:, :3], cond[:, 3:]
    assert set(mask.unique().tolist()) <= {0.0, 1.0}
    keep = mask.expand_as(image) == 0
    assert torch.equal(image[keep], x0[keep]) and torch.all(image[~keep] == 0)
    pixels = mask.sum(dim=(1, 2, 3))
    assert pixels.min() >= math.ceil(0.2 * 256) and pixels.max() <= math.floor(0.4 * 256)
    assert pixels.std() > 0  # the area is drawn, not fixed
    again = image_tasks.inpainting(x0, torch.Generator().manual_seed(1), min_area=0.2, max_area=0.4, kind=kind)
    assert torch.equal(cond, again)


def test_box_masks_are_rectangles_but_for_their_last_row():
    masks = image_tasks.random_masks(32, (16, 16), torch.Generator().manual_seed(0), kind="box")[:, 0]
    for m in masks:
        rows = m.sum(1)
        full = rows[rows > 0]
        # every row but the last is the same width; the rows are contiguous
        assert (full[:-1] == full[0]).all() and full[-1] <= full[0]
        idx = torch.nonzero(rows).flatten()
        assert idx[-1] - idx[0] + 1 == len(idx)


def test_colorization_is_the_bt601_luma_and_refuses_grey_data():
    x0 = _images(3, (3, 8, 8))
    r, g, b = x0[:, 0], x0[:, 1], x0[:, 2]
    torch.testing.assert_close(image_tasks.colorization(x0)[:, 0], 0.299 * r + 0.587 * g + 0.114 * b)
    with pytest.raises(ValueError, match="RGB data"):
        image_tasks.colorization(_images(3, (1, 8, 8)))
    with pytest.raises(ValueError, match="RGB data"):
        ImageConditioning("colorization", data_shape=[1, 16, 16])


@pytest.mark.parametrize("task, channels", [("super_resolution", 3), ("inpainting", 4), ("colorization", 1)])
def test_each_task_has_its_condition_channels(task, channels):
    c = ImageConditioning(task, data_shape=[3, 16, 16])
    assert c.network_keys() == {"cond_channels": channels}
    assert c.condition_for(_images(2, (3, 16, 16))).shape == (2, channels, 16, 16)


def test_bad_options_are_one_line():
    with pytest.raises(ValueError, match="not an image task"):
        ImageConditioning("deblur")
    with pytest.raises(ValueError, match="must divide"):
        ImageConditioning("super_resolution", factor=3, data_shape=[1, 16, 16])
    with pytest.raises(ValueError, match="min_area"):
        ImageConditioning("inpainting", min_area=0.6, max_area=0.5)
    with pytest.raises(ValueError, match="image data"):
        ImageConditioning("inpainting", data_shape=[2])


# ---- the network and the module ------------------------------------------------------------
def test_unet_takes_the_condition_concatenated_to_x_t():
    net = UNet(in_channels=1, cond_channels=2, block_out_channels=(8, 16), layers_per_block=1,
               down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=8)
    assert net.unet.conv_in.in_channels == 3 and net.out_channels == 1
    x, t = torch.randn(2, 1, 16, 16), torch.tensor([3, 500])
    cond = torch.randn(2, 2, 16, 16)
    out = net(x, t, {"image": cond})
    assert out.shape == (2, 1, 16, 16)
    # the condition is an input: changing it changes the output
    assert not torch.allclose(out, net(x, t, {"image": cond + 1}))
    # it is the same as the plain UNet2DModel on the concatenation
    torch.testing.assert_close(out, net.unet(torch.cat([x, cond], 1), t).sample)
    with pytest.raises(ValueError, match="conditioning image"):
        net(x, t)


@pytest.mark.parametrize("task", ["super_resolution", "inpainting", "colorization"])
def test_module_trains_and_samples_with_each_task(task):
    shape = (3, 16, 16) if task == "colorization" else (1, 16, 16)
    m = _module(task, shape)
    x0 = _images(4, shape)
    loss = m.training_step(x0, 0)
    assert torch.isfinite(loss)
    loss.backward()
    assert m.network.unet.conv_in.weight.grad is not None
    cond = m.conditioning.condition_for(x0, torch.Generator().manual_seed(0))
    out = m.sample(4, cond={"image": cond}, seed=0).samples
    assert out.shape == (4, *shape)
    # one condition for all samples
    assert m.sample(2, cond={"image": cond[0]}, seed=0).samples.shape == (2, *shape)


def test_sample_takes_n_from_the_batch_of_conditions():
    m = _module("inpainting")
    cond = m.conditioning.condition_for(_images(3), torch.Generator().manual_seed(0))  # (3, 2, 16, 16)
    g = lambda: torch.Generator().manual_seed(5)  # noqa: E731
    without_n = m.sample(cond={"image": cond}, generator=g()).samples
    assert without_n.shape == (3, 1, 16, 16)
    torch.testing.assert_close(without_n, m.sample(3, cond={"image": cond}, generator=g()).samples)
    assert m.sample(cond={"image": cond[0]}, generator=g()).samples.shape == (1, 1, 16, 16)  # one (c, H, W): one sample
    with pytest.raises(ValueError, match="3 conditioning images for 2 samples.*leave n out") as err:
        m.sample(2, cond={"image": cond})
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match="give n, a starting noise, an image, or a batch of conditions"):
        m.sample()


def test_super_resolution_takes_the_low_resolution_image_too():
    m = _module("super_resolution")
    low = _images(2, (1, 4, 4))
    a = m.sample(2, cond={"image": low}, seed=3).samples
    b = m.sample(2, cond={"image": image_tasks.upsample(low, (16, 16))}, seed=3).samples
    torch.testing.assert_close(a, b)


@pytest.mark.parametrize("cond, message", [
    (None, "image-conditioned"),
    ({"class": 3}, "image-conditioned"),
    ({"image": torch.zeros(2, 3, 16, 16)}, r"shape \(3, 16, 16\) but this model takes \(2, 16, 16\)"),
    ({"image": torch.zeros(2, 2, 8, 8)}, r"shape \(2, 8, 8\) but this model takes \(2, 16, 16\)"),
    ({"image": torch.zeros(3, 2, 16, 16)}, "3 conditioning images for 2 samples"),
])
def test_prepare_refuses_bad_conditions_in_one_line(cond, message):
    m = _module("inpainting")
    with pytest.raises(ValueError, match=message) as err:
        m.sample(2, cond=cond)
    assert "\n" not in str(err.value)


def test_validation_conditions_are_fixed_per_batch_and_training_draws_new_ones():
    c = ImageConditioning("inpainting", data_shape=[1, 16, 16])
    x0 = _images(8)
    a = c.split(x0, generator=torch.Generator().manual_seed(5))[1]["image"]
    b = c.split(x0, generator=torch.Generator().manual_seed(5))[1]["image"]
    assert torch.equal(a, b)
    torch.manual_seed(0)
    d = c.split(x0)[1]["image"]
    e = c.split(x0)[1]["image"]
    assert not torch.equal(d, e)
    m = _module("inpainting")
    losses = []
    for _ in range(2):
        m.val_loss.reset()
        m.validation_step(x0, 0)
        losses.append(float(m.val_loss.compute()))
    assert losses[0] == losses[1]


def test_condition_dropout_uses_the_null_image():
    c = ImageConditioning("super_resolution", p_uncond=0.5, data_shape=[1, 16, 16])
    cond = {"image": torch.ones(400, 1, 16, 16)}
    dropped = c.drop(cond, torch.Generator().manual_seed(0))["image"]
    zero = (dropped == 0).all(dim=(1, 2, 3))
    assert 0.4 < zero.float().mean() < 0.6 and (dropped[~zero] == 1).all()
    assert torch.equal(c.null(cond)["image"], torch.zeros_like(cond["image"]))


def test_spec_round_trip_and_data_shape_from_the_data():
    class Data:
        data_shape = (3, 32, 32)

    spec = conditioning_for_data({"type": "image", "task": "colorization", "data_shape": None}, Data())
    assert spec["data_shape"] == [3, 32, 32]
    c = build_conditioning(spec)
    assert isinstance(c, ImageConditioning) and build_conditioning(c.spec()).spec() == c.spec()


# ---- PSNR / SSIM -----------------------------------------------------------------------------
def test_psnr_and_ssim_match_their_closed_forms():
    x = _images(3, (1, 16, 16)) * 0.5
    c = 0.1
    # PSNR of x against x + c: MSE = c^2, so 10 log10(range^2 / c^2) with range 2
    assert psnr_ssim(x + c, x)["psnr"] == pytest.approx(10 * math.log10(4 / c**2), rel=1e-5)
    # SSIM of two constant images a, b: the luminance term alone, (2ab + C1) / (a^2 + b^2 + C1),
    # C1 = (0.01 * range)^2 (contrast and structure are C2 / C2 = 1)
    a, b = 0.3, -0.2
    c1 = (0.01 * 2) ** 2
    ssim = psnr_ssim(torch.full((2, 1, 16, 16), a), torch.full((2, 1, 16, 16), b))["ssim"]
    assert ssim == pytest.approx((2 * a * b + c1) / (a * a + b * b + c1), rel=1e-4)
    assert psnr_ssim(x, x)["ssim"] == pytest.approx(1.0, abs=1e-6)


# ---- from the configs: train.py, the grid, the checkpoint, the commands ----------------------
@pytest.fixture(scope="module")
def sr_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("sr")
    cfg = compose_train(["trainer.accelerator=cpu", "logger=csv", *TINY, "conditioning=image",
                         "callbacks.sample_grid.num_samples=6"], out)
    dm, model, trainer = build(cfg)
    trainer.fit(model, datamodule=dm)
    return out, model, trainer


def test_train_py_trains_an_image_conditioned_model_and_draws_the_restoration_grid(sr_run):
    out, model, trainer = sr_run
    assert model.conditioning.spec()["data_shape"] == [1, 16, 16]
    assert model.network.unet.conv_in.in_channels == 2
    grid = np.asarray(Image.open(out / "samples" / "samples_latest.png"))
    # 6 rows (validation images) of condition | 1 sample | ground truth, each 48 px + 2 px padding
    assert grid.shape[:2] == (6 * 50 + 2, 3 * 50 + 2)
    assert {"val/psnr", "val/ssim"} <= set(trainer.callback_metrics)


def test_checkpoint_round_trip_keeps_the_conditioning(sr_run):
    out, model, _ = sr_run
    loaded = DiffusionModule.load_from_checkpoint(out / "checkpoints" / "last.ckpt")
    assert loaded.conditioning.spec() == model.conditioning.spec()
    cond = {"image": torch.zeros(1, 4, 4)}
    a = loaded.sample(2, cond=cond, num_steps=3, seed=1).samples
    b = loaded.sample(2, cond=cond, num_steps=3, seed=1).samples
    assert torch.equal(a, b) and a.shape == (2, 1, 16, 16)


def test_sample_command_with_cond_image(sr_run, tmp_path):
    out, _, _ = sr_run
    ckpt = out / "checkpoints" / "last.ckpt"
    loaded = DiffusionModule.load_from_checkpoint(ckpt)
    low = (np.random.default_rng(0).random((4, 4)) * 255).astype(np.uint8)
    Image.fromarray(low).save(tmp_path / "low.png")
    args = ["n=3", "sampler=ddim", "sampler.num_steps=3", "seed=2", "progress=false"]
    paths = sample_main([f"ckpt={ckpt}", f"cond_image={tmp_path / 'low.png'}", f"out={tmp_path / 'a'}", *args])
    got = np.load(paths["npz"])["arr_0"]
    assert got.shape == (3, 16, 16, 1) and got.dtype == np.uint8
    # the same as sampling from Python with the upsampled low-resolution image
    cond = image_tasks.upsample(torch.from_numpy(low / 255.0).float()[None, None] * 2 - 1, (16, 16))
    want = fixed_samples(loaded, range(3), 2, sampler={"name": "ddim", "num_steps": 3}, cond={"image": cond.expand(3, -1, -1, -1)})
    expected = ((want.samples.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    assert np.abs(got.astype(int) - expected.astype(int)).max() <= 1
    # a full-size image is degraded by the task first
    Image.fromarray(np.kron(low, np.ones((4, 4), np.uint8))).save(tmp_path / "full.png")
    full = sample_main([f"ckpt={ckpt}", f"cond_image={tmp_path / 'full.png'}", f"out={tmp_path / 'b'}", *args])
    assert np.array_equal(np.load(full["npz"])["arr_0"], got)  # blocks of 4: the same 4x4 image
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "bad.png")
    with pytest.raises(ValueError, match="is 8x8 but this model takes 16x16 or the low-resolution 4x4"):
        sample_main([f"ckpt={ckpt}", f"cond_image={tmp_path / 'bad.png'}", f"out={tmp_path / 'c'}", *args])
    with pytest.raises(ValueError, match="give cond_image="):
        sample_main([f"ckpt={ckpt}", f"out={tmp_path / 'd'}", *args])


def test_evaluate_psnr_ssim_and_the_inputs_baseline(sr_run):
    from ddpm_lightning.evaluate import main as evaluate_main

    out, _, _ = sr_run
    result = evaluate_main(["metric=[psnr,ssim]", f"ckpt={out / 'checkpoints' / 'last.ckpt'}", "data=digits",
                            "n=6", "sampler=ddim", "sampler.num_steps=3", "progress=false"])
    assert {"psnr", "ssim", "input_psnr", "input_ssim"} <= set(result) and result["task"] == "super_resolution"
    from ddpm_lightning.train import instantiate  # the digits validation images, independently
    from omegaconf import OmegaConf

    dm = instantiate(OmegaConf.load("ddpm_lightning/conf/data/digits.yaml"))
    x = dm.real_samples(6, "val")
    assert result["input_psnr"] == pytest.approx(psnr_ssim(image_tasks.super_resolution(x, 4), x)["psnr"], rel=1e-5)


def test_colorization_on_grey_data_is_refused_before_training(make_cfg):
    cfg = make_cfg(*TINY, "conditioning=image", "conditioning.task=colorization")
    with pytest.raises(ValueError, match="RGB data"):
        build(cfg)



def test_fid_callback_restores_the_validation_images(make_cfg):
    """FID of an image-conditioned model: sample i is conditioned on validation image i mod V's
    condition: the same samples as restoring those images (metrics.restoration), not those of
    other conditions. (Before, the callback drew without a condition and failed.)"""
    from ddpm_lightning.callbacks import FID
    from ddpm_lightning.metrics.restoration import restore

    tiny = [o for o in TINY if not o.startswith("callbacks.sample_grid")]
    cfg = make_cfg(*tiny, "conditioning=image", "callbacks=[fid]", "callbacks.fid.num_samples=70",
                   "callbacks.fid.num_real=70", "callbacks.fid.batch_size=40", "callbacks.fid.small_sample=warn",
                   "callbacks.fid.sampler={name:ddim,num_steps:1}", "callbacks.fid.progress=false",
                   "data.val_fraction=0.03", "trainer.enable_progress_bar=false")
    torch.manual_seed(0)
    dm, model, trainer = build(cfg)
    trainer.validate(model, datamodule=dm)
    assert math.isfinite(float(trainer.callback_metrics["val/fid"]))
    fid = next(cb for cb in trainer.callbacks if isinstance(cb, FID))
    val = dm.real_samples(len(dm.split_indices("val")), "val")
    assert len(val) == 54  # fewer validation images than samples: their conditions repeat
    spec = {"name": "ddim", "num_steps": 1}
    got = fid.generate(trainer, model, list(range(70)))
    _, restored = restore(model, val, seed=0, sampler=spec)  # sample j restores validation image j
    torch.testing.assert_close(got[:54], restored, atol=1e-4, rtol=0)  # other batch sizes: float rounding
    # samples 54..69: validation images 0..15's condition (4x4 block means, upsampled) with their own noise
    repeat = fixed_samples(model, range(54, 70), 0, sampler=spec, cond={"image": image_tasks.super_resolution(val[:16], 4)})
    torch.testing.assert_close(got[54:], repeat.samples, atol=1e-4, rtol=0)
    other = fixed_samples(model, range(54, 70), 0, sampler=spec, cond={"image": image_tasks.super_resolution(val[16:32], 4)})
    assert (got[54:] - other.samples).abs().amax(dim=(1, 2, 3)).min() > 0.05
