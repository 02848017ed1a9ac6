"""Story: take a model anywhere. Export a checkpoint to a diffusers pipeline folder, safetensors
or ONNX (`python -m ddpm_lightning.export`), import a diffusers pipeline or UNet folder, and get
the same samples everywhere. Diffusers folders are written by the tests (save_pretrained)."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from conftest import TINY, compose_train
from diffusers import DDIMPipeline, DDIMScheduler, DDPMPipeline, DDPMScheduler, UNet2DModel

from ddpm_lightning.export import export, export_onnx, module_from_pipeline
from ddpm_lightning.module import DiffusionModule
from ddpm_lightning.networks import network_config
from ddpm_lightning.train import build

SHAPE = (1, 16, 16)
TINY_UNET = {"block_out_channels": [16, 16, 32], "attention_head_dim": 8, "norm_num_groups": 8}


@pytest.fixture(scope="module")
def ddim_ckpt(tmp_path_factory):
    """A checkpoint written by train.py (with EMA) whose default sampler is DDIM, trailing spacing."""
    out = tmp_path_factory.mktemp("train")
    cfg = compose_train(["trainer.accelerator=cpu", "logger=none", *TINY, "sampler=ddim", "trainer.max_steps=2",
                         "trainer.val_check_interval=2", "callbacks.sample_grid.every_n_steps=2"], out)
    dm, model, trainer = build(cfg)
    trainer.fit(model, datamodule=dm)
    return out / "checkpoints" / "last.ckpt"


def tiny_module(parameterization="epsilon", network="unet", variance="fixed", **kwargs) -> DiffusionModule:
    torch.manual_seed(0)
    factor = 1 if variance == "fixed" else 2  # a learned variance doubles the network's outputs
    if variance != "fixed":
        kwargs.setdefault("loss", {"type": "hybrid"})  # the loss that trains a learned variance
    if network == "mlp":
        return DiffusionModule(network_config("mlp", (2,), hidden=16, out_dim=2 * factor), parameterization=parameterization,
                               variance=variance, data_shape=(2,), **kwargs)
    return DiffusionModule(network_config("unet_small", SHAPE, **TINY_UNET, out_channels=SHAPE[0] * factor),
                           parameterization=parameterization, variance=variance, data_shape=SHAPE, **kwargs)


def save_ckpt(module: DiffusionModule, path: Path) -> Path:
    """A checkpoint of `module` in the layout Lightning writes (state_dict + hyper_parameters)."""
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams),
                "pytorch-lightning_version": L.__version__}, path)
    return path


def to_pipeline_image(x: torch.Tensor) -> np.ndarray:
    """Our samples (B, C, H, W) in [-1, 1] -> a diffusers pipeline's output_type="np" (B, H, W, C)."""
    return (x / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy()


# ---- diffusers --------------------------------------------------------------------------------
def test_diffusers_export_gives_our_ddim_samples_in_ddim_pipeline(ddim_ckpt, tmp_path):
    export(ddim_ckpt, "diffusers", tmp_path / "pipe")  # what `python -m ddpm_lightning.export` runs

    ours = DiffusionModule.load_from_checkpoint(ddim_ckpt)
    pipe = DDIMPipeline.from_pretrained(tmp_path / "pipe")
    assert pipe.scheduler.config.timestep_spacing == "trailing" and pipe.scheduler.config.clip_sample
    assert pipe.scheduler.config.set_alpha_to_one
    # the UNet holds the EMA weights (the checkpoint's state_dict), not the live ones
    ckpt = torch.load(ddim_ckpt, weights_only=True)
    name, weight = next((k, v) for k, v in ckpt["state_dict"].items() if k.startswith("network.unet."))
    exported = dict(pipe.unet.named_parameters())[name.removeprefix("network.unet.")]
    assert torch.equal(exported, weight) and not torch.equal(exported, ckpt["current_model_state"][name])

    # the pipeline draws its starting noise with torch.randn(shape, generator=g): give ours the same
    noise = torch.randn(3, *SHAPE, generator=torch.Generator().manual_seed(0))
    want = ours.sample(noise=noise, num_steps=4).samples
    got = pipe(batch_size=3, generator=torch.Generator().manual_seed(0), num_inference_steps=4, eta=0.0,
               use_clipped_model_output=True, output_type="np").images
    np.testing.assert_allclose(got, to_pipeline_image(want), atol=1e-4, rtol=0)

    ddpm = DDPMPipeline.from_pretrained(tmp_path / "pipe")
    images = ddpm(batch_size=2, generator=torch.Generator().manual_seed(0), num_inference_steps=3, output_type="np").images
    assert images.shape == (2, 16, 16, 1) and np.isfinite(images).all()


@pytest.mark.parametrize(
    "scheduler, parameterization, schedule",
    [
        (DDIMScheduler(beta_schedule="squaredcos_cap_v2", prediction_type="v_prediction", timestep_spacing="leading",
                       clip_sample=False), "v", "cosine"),
        (DDPMScheduler(beta_schedule="linear", prediction_type="epsilon", timestep_spacing="trailing"), "epsilon", "linear"),
        (DDIMScheduler(trained_betas=np.linspace(2e-4, 0.03, 1000), prediction_type="sample", timestep_spacing="trailing",
                       clip_sample=False), "x0", "explicit"),
    ],
)
def test_a_diffusers_pipeline_folder_samples_with_our_sampler_like_ddim_pipeline(tmp_path, scheduler, parameterization, schedule):
    torch.manual_seed(1)
    unet = UNet2DModel(sample_size=8, in_channels=3, out_channels=3, block_out_channels=(16, 32), norm_num_groups=8,
                       down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"))
    pipeline_cls = DDIMPipeline if isinstance(scheduler, DDIMScheduler) else DDPMPipeline
    pipeline_cls(unet=unet, scheduler=scheduler).save_pretrained(tmp_path / "pipe")

    module = module_from_pipeline(tmp_path / "pipe")
    assert module.parameterization.name == parameterization and module.process.schedule_name == schedule
    assert module.data_shape == (3, 8, 8)
    theirs = DDIMPipeline.from_pretrained(tmp_path / "pipe")
    clip = bool(theirs.scheduler.config.clip_sample)
    noise = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    sampler = {"name": "ddim", "eta": 0.0, "spacing": theirs.scheduler.config.timestep_spacing, "clip_denoised": clip}
    ours = module.sample(noise=noise, sampler=sampler, num_steps=4).samples
    want = theirs(batch_size=2, generator=torch.Generator().manual_seed(0), num_inference_steps=4, eta=0.0,
                  use_clipped_model_output=True, output_type="np").images
    np.testing.assert_allclose(to_pipeline_image(ours), want, atol=1e-4, rtol=0)


@pytest.mark.parametrize("schedule, theirs", [
    ({"name": "linear"}, "linear"), ({"name": "scaled_linear"}, "scaled_linear"), ({"name": "quadratic"}, "scaled_linear"),
    ({"name": "cosine"}, "squaredcos_cap_v2"), ({"name": "sigmoid_geodiff"}, "sigmoid"), ({"name": "sigmoid"}, None),
    ({"name": "cosine", "s": 0.02}, None), ({"name": "linear", "zero_terminal_snr": True}, "linear"),
    ({"name": [0.01, 0.02, 0.05, 0.1]}, None),
])
def test_every_schedule_maps_to_a_diffusers_config_and_back(schedule, theirs):
    from ddpm_lightning.export.diffusers_scheduler import beta_schedule_kwargs, schedule_from_config
    from ddpm_lightning.process import DiffusionProcess

    process = DiffusionProcess(**{"num_timesteps": 1000, **schedule})
    kwargs = beta_schedule_kwargs(process)
    assert kwargs.get("beta_schedule") == theirs and (theirs is not None or kwargs["trained_betas"])
    reference = DDPMScheduler(**kwargs)
    torch.testing.assert_close(reference.alphas_cumprod.double(), process.alphas_cumprod.double(), rtol=1e-5, atol=1e-7)
    back = DiffusionProcess(**schedule_from_config(reference.config))
    torch.testing.assert_close(back.alphas_cumprod, process.alphas_cumprod, rtol=1e-5, atol=1e-7)


def test_pretrained_network_config_loads_a_diffusers_unet_folder(make_cfg, tmp_path):
    torch.manual_seed(2)
    unet = UNet2DModel(sample_size=16, in_channels=1, out_channels=1, block_out_channels=(16, 32), norm_num_groups=8,
                       down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"))
    unet.save_pretrained(tmp_path / "unet")
    for path in (tmp_path / "unet", tmp_path):  # the UNet folder, or a pipeline folder holding unet/
        _, model, _ = build(make_cfg("network=pretrained", f"network.path={path}"))
        for (name, want), got in zip(unet.state_dict().items(), model.network.unet.state_dict().values()):
            assert torch.equal(got, want), name
    with pytest.raises(FileNotFoundError, match="does not exist"):
        build(make_cfg("network=pretrained", f"network.path={tmp_path / 'missing'}"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no UNet2DModel config") as err:
        build(make_cfg("network=pretrained", f"network.path={tmp_path / 'empty'}"))
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match="in_channels=3"):  # RGB data, a 1-channel UNet
        build(make_cfg("network=pretrained", f"network.path={tmp_path}", "data=cifar10"))


# ---- safetensors ------------------------------------------------------------------------------
def test_safetensors_export_samples_exactly_like_the_checkpoint(ddim_ckpt, tmp_path):
    out = export(ddim_ckpt, "safetensors", tmp_path / "st")
    assert sorted(p.name for p in out.iterdir()) == ["hparams.json", "live.safetensors", "model.safetensors"]
    ckpt = torch.load(ddim_ckpt, weights_only=True)
    assert json.loads((out / "hparams.json").read_text()) == ckpt["hyper_parameters"]
    from_ckpt = DiffusionModule.load_from_checkpoint(ddim_ckpt)
    loaded = DiffusionModule.from_pretrained(out)
    assert torch.equal(from_ckpt.sample(3, seed=0, num_steps=4).samples, loaded.sample(3, seed=0, num_steps=4).samples)
    live = DiffusionModule.from_pretrained(out, weights="live")
    for name, value in live.state_dict().items():
        assert torch.equal(value, ckpt["current_model_state"][name]), name


# ---- ONNX -------------------------------------------------------------------------------------
@pytest.mark.parametrize("network, parameterization, variance",
                         [("unet", "epsilon", "fixed"), ("unet", "v", "fixed"), ("mlp", "mu", "fixed"),
                          ("unet", "epsilon", "learned_range"), ("unet", "x0", "learned")])
def test_onnx_denoiser_equals_pytorch(tmp_path, network, parameterization, variance):
    import onnx
    import onnxruntime as ort

    module = tiny_module(parameterization, network, variance, sampler={"name": "ddim", "num_steps": 5}).eval()
    names = {"fixed": ["x0", "eps"], "learned": ["x0", "eps", "log_var"],
             "learned_range": ["x0", "eps", "log_var", "var_frac"]}[variance]
    path = export_onnx(module, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["denoiser.onnx", "schedule.json"]  # no external data
    graph = onnx.load(path)
    onnx.checker.check_model(graph)
    ops = {node.op_type for node in graph.graph.node}
    assert "GroupNormalization" not in ops  # not implemented in onnxruntime (#24538)
    assert max(o.version for o in graph.opset_import if o.domain in ("", "ai.onnx")) >= 17
    assert {i.name: i.type.tensor_type.elem_type for i in graph.graph.input} == {
        "x_t": onnx.TensorProto.FLOAT, "t": onnx.TensorProto.FLOAT}

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    g = torch.Generator().manual_seed(0)
    for batch, ts in [(1, [0]), (3, [1, 500, 999]), (5, [999, 998, 250, 10, 0])]:
        x = torch.randn(batch, *module.data_shape, generator=g)
        t = torch.tensor(ts)
        with torch.no_grad():
            want = module.denoiser(x, t)
        got = session.run(names, {"x_t": x.numpy(), "t": t.float().numpy()})
        assert [o.name for o in session.get_outputs()] == names
        for name, value in zip(names, got):
            np.testing.assert_allclose(value, getattr(want, name).numpy(), atol=1e-4, rtol=1e-4, err_msg=name)

    info = json.loads((tmp_path / "schedule.json").read_text())
    assert info["num_timesteps"] == 1000 and info["parameterization"] == parameterization
    assert info["variance"] == variance and info["outputs"] == names
    np.testing.assert_array_equal(info["alphas_cumprod"], module.process.alphas_cumprod_f64.numpy())
    assert info["data_shape"] == list(module.data_shape)
    assert info["value_range"] == ([-1.0, 1.0] if network == "unet" else None)
    sampler, steps = module.make_sampler()
    assert info["sampler"]["name"] == "ddim" and info["sampler_timesteps"] == sampler.set_timesteps(steps).tolist()


CLASS_COND = {"type": "class", "num_classes": 3, "p_uncond": 0.1, "guidance_scale": 2.5}


@pytest.mark.parametrize("network, parameterization", [("unet", "epsilon"), ("unet", "v"), ("mlp", "x0")])
def test_class_conditional_onnx_denoiser_equals_pytorch_for_every_label_and_the_null_class(tmp_path, network, parameterization):
    import onnx
    import onnxruntime as ort

    module = tiny_module(parameterization, network, conditioning=CLASS_COND).eval()
    with torch.no_grad():  # random init leaves the class embedding out of the output scale: make it matter
        table = module.network.unet.class_embedding if network == "unet" else module.network.class_embed
        table.weight.normal_(0, 3, generator=torch.Generator().manual_seed(5))
    path = export_onnx(module, tmp_path)
    graph = onnx.load(path)
    onnx.checker.check_model(graph)
    assert {i.name: i.type.tensor_type.elem_type for i in graph.graph.input} == {
        "x_t": onnx.TensorProto.FLOAT, "t": onnx.TensorProto.FLOAT, "class_labels": onnx.TensorProto.INT64}
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    g = torch.Generator().manual_seed(0)
    outputs = {}
    for labels, ts in [([3], [500]), ([0, 1, 2, 3], [999, 500, 10, 0]), ([2, 2, 3, 3, 1, 0], [250] * 6)]:
        x = torch.randn(len(labels), *module.data_shape, generator=g)
        y, t = torch.tensor(labels), torch.tensor(ts)
        with torch.no_grad():
            want = module.denoiser(x, t, {"class": y})
        got = session.run(["x0", "eps"], {"x_t": x.numpy(), "t": t.float().numpy(), "class_labels": y.numpy()})
        for name, value in zip(("x0", "eps"), got):
            np.testing.assert_allclose(value, getattr(want, name).numpy(), atol=1e-4, rtol=1e-4, err_msg=f"{name} {labels}")
        outputs[tuple(labels)] = (x, t, got[1])
    # the label reaches the output: the same x_t and t with another class gives another eps
    x, t, _ = outputs[(2, 2, 3, 3, 1, 0)]
    eps = session.run(["eps"], {"x_t": x.numpy(), "t": t.float().numpy(), "class_labels": np.array([0, 1, 2, 0, 3, 3])})[0]
    assert np.abs(eps - outputs[(2, 2, 3, 3, 1, 0)][2]).max() > 1e-2

    info = json.loads((tmp_path / "schedule.json").read_text())
    assert info["num_classes"] == 3 and info["null_class"] == 3 and info["p_uncond"] == 0.1 and info["guidance_scale"] == 2.5
    assert info["inputs"]["class_labels"] == ["batch"] and info["conditioning"] == CLASS_COND


def test_unconditional_onnx_export_has_no_class_input(tmp_path):
    import onnx

    export_onnx(tiny_module(), tmp_path)
    assert [i.name for i in onnx.load(tmp_path / "denoiser.onnx").graph.input] == ["x_t", "t"]
    info = json.loads((tmp_path / "schedule.json").read_text())
    assert info["num_classes"] is None and "class_labels" not in info["inputs"] and "guidance_scale" not in info


# ---- bad input: one line each, nothing written --------------------------------------------------
def _one_line(err) -> str:
    message = str(err.value)
    assert "\n" not in message
    return message


def test_exporting_an_mlp_mu_or_learned_variance_to_diffusers_is_refused(tmp_path):
    for module, match in [(tiny_module("epsilon", "mlp"), "needs a UNet2DModel network.*MLPDenoiser"),
                          (tiny_module("mu"), "parameterization 'mu' has no diffusers prediction_type"),
                          (tiny_module("epsilon", variance="learned_range"), "fixed variance only.*'learned_range'")]:
        ckpt = save_ckpt(module, tmp_path / "model.ckpt")
        with pytest.raises(ValueError, match=match) as err:
            export(ckpt, "diffusers", tmp_path / "out")
        _one_line(err)
        assert not (tmp_path / "out").exists()
        assert [p.name for p in tmp_path.iterdir()] == ["model.ckpt"]  # no temporary folder left


def test_unknown_format_and_a_non_empty_out_dir_are_refused(tmp_path):
    ckpt = save_ckpt(tiny_module(), tmp_path / "model.ckpt")
    with pytest.raises(ValueError, match=r"unknown format='tflite'; choose one of \['diffusers', 'safetensors', 'onnx', 'web'\]") as err:
        export(ckpt, "tflite", tmp_path / "out")
    _one_line(err)
    out = tmp_path / "out"
    out.mkdir()
    (out / "hparams.json").write_text("mine")
    with pytest.raises(ValueError, match="exists and is not empty.*overwrite=true") as err:
        export(ckpt, "safetensors", out)
    _one_line(err)
    assert [p.name for p in out.iterdir()] == ["hparams.json"] and (out / "hparams.json").read_text() == "mine"
    (out / "notes.txt").write_text("kept")
    export(ckpt, "safetensors", out, overwrite=True)
    assert json.loads((out / "hparams.json").read_text())["parameterization"] == "epsilon"
    assert (out / "notes.txt").read_text() == "kept"


def test_a_pipeline_folder_without_unet_or_scheduler_is_refused(tmp_path):
    with pytest.raises(ValueError, match="no unet/ and no scheduler/scheduler_config.json") as err:
        module_from_pipeline(tmp_path)
    _one_line(err)
    DDPMScheduler().save_pretrained(tmp_path / "scheduler")
    with pytest.raises(ValueError, match="it has no unet/$"):
        module_from_pipeline(tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        module_from_pipeline(tmp_path / "missing")


def test_a_safetensors_folder_without_its_json_is_refused(tmp_path):
    ckpt = save_ckpt(tiny_module(), tmp_path / "model.ckpt")
    out = export(ckpt, "safetensors", tmp_path / "st")
    (out / "hparams.json").unlink()
    with pytest.raises(FileNotFoundError, match="has no hparams.json: not a safetensors export") as err:
        DiffusionModule.from_pretrained(out)
    _one_line(err)


def test_sample_command_gives_the_same_samples_from_the_safetensors_export_and_samples_a_pipeline(ddim_ckpt, tmp_path):
    from ddpm_lightning.sample import main as sample_main

    st = export(ddim_ckpt, "safetensors", tmp_path / "st")
    args = ["n=3", "sampler=ddpm", "sampler.num_steps=4", "seed=1", "progress=false"]
    a = sample_main([f"ckpt={ddim_ckpt}", f"out={tmp_path / 'a'}", *args])
    b = sample_main([f"ckpt={st}", f"out={tmp_path / 'b'}", *args])
    assert np.array_equal(np.load(a["npz"])["arr_0"], np.load(b["npz"])["arr_0"])
    pipe = export(ddim_ckpt, "diffusers", tmp_path / "pipe")
    c = sample_main([f"pipeline={pipe}", f"out={tmp_path / 'c'}", "n=2", "sampler=dpmpp_2m", "sampler.num_steps=3", "progress=false"])
    assert np.load(c["npz"])["arr_0"].shape[0] == 2
    with pytest.raises(ValueError, match="not both"):
        sample_main([f"ckpt={ddim_ckpt}", f"pipeline={pipe}", f"out={tmp_path / 'd'}"])


def test_web_export_is_a_site_around_the_onnx_model(ddim_ckpt, tmp_path):
    from ddpm_lightning.web.site import find_ort_dist, is_site

    try:
        find_ort_dist()
    except FileNotFoundError as err:
        pytest.skip(f"onnxruntime-web not installed: {err}")
    out = export(ddim_ckpt, "web", tmp_path / "site")
    assert is_site(out) and (out / "denoiser.onnx").is_file() and (out / "ort").is_dir()
    schedule = json.loads((out / "schedule.json").read_text())
    assert schedule["default_sampler"]["name"] == "ddim" and schedule["num_classes"] is None
    assert {"clip_denoised", "alphas_cumprod", "data_shape", "value_range"} <= set(schedule)
