"""Story: a conditional model goes everywhere the export goes. A class-conditional and an
image-conditioned model export to safetensors, to a diffusers folder (with conditioning.json) and
to ONNX (class_labels / cond_image inputs), and load back to the same predictions and samples,
their conditioning spec intact; a format that cannot carry the model refuses in one line, exit
code 2, with nothing written."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import DDPMPipeline, UNet2DModel
from test_export import CLASS_COND, SHAPE, TINY_UNET, save_ckpt, tiny_module
from test_image_conditioning import NET

from ddpm_lightning.checkpoint_file import load_module
from ddpm_lightning.conditioning import Conditioning
from ddpm_lightning.export import export, export_onnx, module_from_pipeline
from ddpm_lightning.module import DiffusionModule
from ddpm_lightning.networks import network_config
from ddpm_lightning.train import build

ROOT = Path(__file__).resolve().parents[1]
IMAGE_COND = {"type": "image", "task": "inpainting", "factor": 4, "p_uncond": 0.2, "guidance_scale": 1.5,
              "data_shape": [1, 16, 16], "min_area": 0.2, "max_area": 0.4, "mask": "box"}


def class_model(num_classes: int = 3) -> DiffusionModule:
    module = tiny_module(conditioning={**CLASS_COND, "num_classes": num_classes}, sampler={"name": "ddim", "num_steps": 4}).eval()
    with torch.no_grad():  # random init leaves the class embedding out of the output scale: make it matter
        module.network.unet.class_embedding.weight.normal_(0, 3, generator=torch.Generator().manual_seed(5))
    return module


def image_model(task: str = "inpainting", shape=(1, 16, 16), **kw) -> DiffusionModule:
    torch.manual_seed(0)
    cond = {**IMAGE_COND, "task": task, "data_shape": list(shape), **kw}
    return DiffusionModule(dict(NET), data_shape=list(shape), conditioning=cond, sampler={"name": "ddim", "num_steps": 4}).eval()


def inputs(module: DiffusionModule, n: int = 4, seed: int = 0):
    """(x_t, t, cond) of n rows, and another cond of the same kind (to see that it matters)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, *module.data_shape, generator=g)
    t = torch.randint(0, 1000, (n,), generator=g)
    if module.conditioning.type == "class":
        k = module.conditioning.num_classes
        labels = torch.arange(n) % (k + 1)  # the null class included
        return x, t, {"class": labels}, {"class": (labels + 1) % (k + 1)}
    x0 = torch.rand(n, *module.data_shape, generator=g) * 2 - 1
    cond = module.conditioning.condition_for(x0, torch.Generator().manual_seed(seed))
    return x, t, {"image": cond}, {"image": module.conditioning.condition_for(-x0, torch.Generator().manual_seed(seed + 1))}


def sample_cond(module: DiffusionModule, n: int = 3) -> dict:
    if module.conditioning.type == "class":
        return {"class": list(range(n))}
    x0 = torch.rand(n, *module.data_shape, generator=torch.Generator().manual_seed(9)) * 2 - 1
    return {"image": module.conditioning.condition_for(x0, torch.Generator().manual_seed(9))}


def assert_same_model(original: DiffusionModule, loaded: DiffusionModule) -> None:
    """Identical predictions for the same (x_t, t, cond), the condition reaching them, and the same
    (guided, at the spec's default scale) samples for the same seed."""
    x, t, cond, other = inputs(original)
    with torch.no_grad():
        want, got = original.denoiser(x, t, cond), loaded.denoiser(x, t, cond)
        changed = loaded.denoiser(x, t, other)
    assert torch.equal(want.eps, got.eps) and torch.equal(want.x0, got.x0)
    assert (changed.eps - got.eps).abs().max() > 1e-3  # the condition is not ignored
    sampler = {"name": "ddim", "num_steps": 4}
    a = original.sample(3, cond=sample_cond(original), seed=0, sampler=sampler).samples
    b = loaded.sample(3, cond=sample_cond(original), seed=0, sampler=sampler).samples
    assert torch.equal(a, b)


def _one_line(err) -> str:
    message = str(err.value)
    assert "\n" not in message
    return message


# ---- safetensors ------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["class", "image"])
def test_safetensors_export_of_a_conditional_model_predicts_the_same_and_keeps_its_spec(tmp_path, kind):
    module = class_model() if kind == "class" else image_model()
    spec = CLASS_COND if kind == "class" else IMAGE_COND
    out = export(save_ckpt(module, tmp_path / "model.ckpt"), "safetensors", tmp_path / "st")
    assert json.loads((out / "hparams.json").read_text())["conditioning"] == spec
    for loaded in (load_module(out, device="cpu"), DiffusionModule.from_pretrained(out).eval()):
        assert loaded.conditioning.spec() == spec
        if kind == "class":
            assert loaded.conditioning.null_class == 3 and loaded.network.num_class_embeds == 4
        else:
            assert loaded.conditioning.task == "inpainting" and loaded.conditioning.cond_channels == 2 == loaded.network.cond_channels
        assert_same_model(module, loaded)


# ---- diffusers --------------------------------------------------------------------------------
def test_diffusers_export_of_a_class_conditional_model_keeps_its_class_table_and_samples_the_same(tmp_path):
    module = class_model()
    out = export(save_ckpt(module, tmp_path / "model.ckpt"), "diffusers", tmp_path / "pipe")
    record = json.loads((out / "conditioning.json").read_text())
    assert record["conditioning"] == CLASS_COND and record["num_class_embeds"] == 4 and record["null_class"] == 3
    unet = UNet2DModel.from_pretrained(out / "unet")
    assert unet.config.num_class_embeds == 4 and unet.config.in_channels == 1
    # diffusers' own UNet, called as diffusers calls it, is our network (an independent forward)
    x, t, cond, _ = inputs(module)
    with torch.no_grad():
        theirs = unet(x, t, class_labels=cond["class"]).sample
        np.testing.assert_allclose(theirs.numpy(), module.network(x, t, cond).numpy(), atol=1e-5, rtol=0)
    DDPMPipeline.from_pretrained(out)  # still a folder diffusers loads (its pipelines pass no labels)

    for loaded in (module_from_pipeline(out), load_module(out, device="cpu", pipeline=True)):
        assert loaded.conditioning.spec() == CLASS_COND and loaded.data_shape == SHAPE
        assert_same_model(module, loaded)


def test_diffusers_export_of_an_image_conditioned_model_records_its_task_and_channels(tmp_path):
    module = image_model()
    out = export(save_ckpt(module, tmp_path / "model.ckpt"), "diffusers", tmp_path / "pipe")
    record = json.loads((out / "conditioning.json").read_text())
    assert record["conditioning"] == IMAGE_COND
    assert record["cond_channels"] == 2 and record["data_channels"] == 1 and record["task"] == "inpainting"
    assert UNet2DModel.from_pretrained(out / "unet").config.in_channels == 3  # x_t's 1 + the masked image's 1 + the mask's 1
    loaded = module_from_pipeline(out)
    assert loaded.conditioning.spec() == IMAGE_COND and loaded.data_shape == (1, 16, 16)
    assert_same_model(module, loaded)


def test_an_unconditional_diffusers_export_writes_no_conditioning_file(tmp_path):
    out = export(save_ckpt(tiny_module(), tmp_path / "model.ckpt"), "diffusers", tmp_path / "pipe")
    assert sorted(p.name for p in out.iterdir()) == ["model_index.json", "scheduler", "unet"]
    assert not module_from_pipeline(out).conditioning.is_conditional


def test_pretrained_network_fine_tunes_a_conditional_export_and_says_what_it_needs(make_cfg, tmp_path):
    module = class_model(num_classes=10)  # the digits' 10 classes
    pipe = export(save_ckpt(module, tmp_path / "model.ckpt"), "diffusers", tmp_path / "pipe")
    _, model, _ = build(make_cfg("network=pretrained", f"network.path={pipe}", "conditioning=class"))
    assert model.conditioning.num_classes == 10 and model.network.num_class_embeds == 11
    for (name, want), got in zip(module.network.unet.state_dict().items(), model.network.unet.state_dict().values()):
        assert torch.equal(got, want), name
    with pytest.raises(ValueError, match=r"is class-conditional \(num_class_embeds=11\).*num_classes=10.*"
                                         r"conditioning.json records conditioning=class conditioning.num_classes=10") as err:
        build(make_cfg("network=pretrained", f"network.path={pipe}"))
    _one_line(err)
    image = export(save_ckpt(image_model(), tmp_path / "image.ckpt"), "diffusers", tmp_path / "image_pipe")
    with pytest.raises(ValueError, match=r"in_channels=1, but the pretrained UNet .* has in_channels=3.*conditioning=image conditioning.task=inpainting") as err:
        build(make_cfg("network=pretrained", f"network.path={image}"))
    _one_line(err)


def test_a_conditioning_file_that_disagrees_with_the_unet_or_is_not_ours_is_one_line(tmp_path):
    out = export(save_ckpt(class_model(), tmp_path / "model.ckpt"), "diffusers", tmp_path / "pipe")
    record = json.loads((out / "conditioning.json").read_text())
    record["conditioning"]["num_classes"] = 5
    (out / "conditioning.json").write_text(json.dumps(record))
    with pytest.raises(ValueError, match="needs num_class_embeds=6.*has num_class_embeds=4") as err:
        module_from_pipeline(out)
    _one_line(err)
    record["conditioning"] = {"_target_": "os.system", "command": "true"}
    (out / "conditioning.json").write_text(json.dumps(record))
    with pytest.raises(ValueError, match="records conditioning type 'os.system'") as err:
        module_from_pipeline(out)
    _one_line(err)
    (out / "conditioning.json").write_text("{")
    with pytest.raises(ValueError, match="is not JSON") as err:
        module_from_pipeline(out)
    _one_line(err)
    # another project's class-conditional UNet, no record: say which conditioning to give, then take it
    (out / "conditioning.json").unlink()
    with pytest.raises(ValueError, match="give conditioning=class with num_classes=3") as err:
        module_from_pipeline(out)
    _one_line(err)
    assert module_from_pipeline(out, conditioning={"type": "class", "num_classes": 3}).network.num_class_embeds == 4


# ---- ONNX -------------------------------------------------------------------------------------
@pytest.mark.parametrize("task, shape", [("super_resolution", (1, 16, 16)), ("inpainting", (1, 16, 16)), ("colorization", (3, 16, 16))])
def test_image_conditioned_onnx_denoiser_takes_cond_image_and_equals_pytorch(tmp_path, task, shape):
    import onnx
    import onnxruntime as ort

    module = image_model(task, shape, factor=2)
    c = module.conditioning.cond_channels
    path = export_onnx(module, tmp_path)
    graph = onnx.load(path)
    onnx.checker.check_model(graph)
    assert {i.name: i.type.tensor_type.elem_type for i in graph.graph.input} == {
        "x_t": onnx.TensorProto.FLOAT, "t": onnx.TensorProto.FLOAT, "cond_image": onnx.TensorProto.FLOAT}
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for n, seed in [(1, 0), (5, 1)]:
        x, t, cond, other = inputs(module, n, seed)
        with torch.no_grad():
            want = module.denoiser(x, t, cond)
        feeds = {"x_t": x.numpy(), "t": t.float().numpy(), "cond_image": cond["image"].numpy()}
        got = session.run(["x0", "eps"], feeds)
        for name, value in zip(("x0", "eps"), got):
            np.testing.assert_allclose(value, getattr(want, name).numpy(), atol=1e-4, rtol=1e-4, err_msg=f"{name} {task}")
        # the null (all-zero) condition and another image give other outputs: the input is used
        for image in (torch.zeros_like(cond["image"]), other["image"]):
            eps = session.run(["eps"], {**feeds, "cond_image": image.numpy()})[0]
            assert np.abs(eps - got[1]).max() > 1e-3
    info = json.loads((tmp_path / "schedule.json").read_text())
    assert info["inputs"]["cond_image"] == ["batch", c, 16, 16] and info["cond_channels"] == c and info["task"] == task
    assert info["num_classes"] is None and info["null_cond_image"] == 0.0 and "null_class" not in info
    assert info["conditioning"] == module.conditioning.spec() and info["guidance_scale"] == 1.5 and info["p_uncond"] == 0.2


# ---- bad input: one line, exit code 2, nothing written --------------------------------------------
class Captions(Conditioning):
    """A conditioning of one's own, which no export format but safetensors can carry."""

    type = "caption"

    def spec(self):
        return {"_target_": f"{__name__}.Captions"}


def test_a_format_that_cannot_carry_the_conditioning_refuses_in_one_line(tmp_path):
    from ddpm_lightning.export import export_diffusers
    from ddpm_lightning.web.site import check_model_dir

    image = save_ckpt(image_model(), tmp_path / "image.ckpt")
    with pytest.raises(ValueError, match="format=web: the browser page has no way to give a conditioning image.*format=onnx") as err:
        export(image, "web", tmp_path / "site")
    _one_line(err)
    from ddpm_lightning.export.to_web import export_web

    with pytest.raises(ValueError, match="format=web: the browser page") as err:  # the Python call, too
        export_web(image_model(), image, tmp_path / "site")
    _one_line(err)
    # the page refuses an ONNX folder of an image-conditioned model too
    export(image, "onnx", tmp_path / "onnx")
    with pytest.raises(ValueError, match=r"inputs \['cond_image'\] the page cannot give") as err:
        check_model_dir(tmp_path / "onnx")
    _one_line(err)
    # a network config that disagrees with the conditioning: conditioning.json would describe another model
    torch.manual_seed(0)
    odd = DiffusionModule(network_config("unet_small", SHAPE, **TINY_UNET, num_class_embeds=7), data_shape=SHAPE, conditioning=CLASS_COND)
    with pytest.raises(ValueError, match="UNet has num_class_embeds=7, but its conditioning .* needs num_class_embeds=4") as err:
        export(save_ckpt(odd, tmp_path / "odd.ckpt"), "diffusers", tmp_path / "odd")
    _one_line(err)
    own = DiffusionModule(network_config("unet_small", SHAPE, **TINY_UNET), data_shape=SHAPE, conditioning=Captions())
    for fn, match in [(export_diffusers, "format=diffusers carries conditioning types"), (export_onnx, "format=onnx carries conditioning types")]:
        with pytest.raises(ValueError, match=f"{match}.*'caption'.*format=safetensors") as err:
            fn(own, tmp_path / "own")
        _one_line(err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["image.ckpt", "odd.ckpt", "onnx"]  # nothing else written


def _export_command(args: list[str], tmp_path: Path, in_process: bool, monkeypatch, capsys) -> tuple[int, str]:
    """(exit code, stderr) of `python -m ddpm_lightning.export ARGS`, in this process or a fresh one."""
    if in_process:
        from hydra.core.global_hydra import GlobalHydra

        from ddpm_lightning.export.cli import main

        GlobalHydra.instance().clear()  # the tests' compose() left one initialized
        monkeypatch.setattr(sys, "argv", ["ddpm_lightning.export", *args])
        monkeypatch.chdir(tmp_path)
        with pytest.raises(SystemExit) as exit_:
            main()
        return exit_.value.code, capsys.readouterr().err
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", "ddpm_lightning.export", *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    return proc.returncode, proc.stderr


@pytest.mark.parametrize("in_process", [True, pytest.param(False, marks=pytest.mark.slow)])  # a fresh process: ~20 s of imports
def test_export_command_refuses_a_web_export_of_an_image_conditioned_model_with_exit_code_2(tmp_path, in_process, monkeypatch, capsys):
    ckpt = save_ckpt(image_model(), tmp_path / "image.ckpt")
    code, stderr = _export_command([f"ckpt={ckpt}", "format=web", f"out={tmp_path / 'site'}"], tmp_path, in_process, monkeypatch, capsys)
    assert code == 2, stderr[-2000:]
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in stderr and "conditioning image" in errors[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["image.ckpt"]  # no out folder, no temporary one
