"""Every option of every config group composes and instantiates."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from ddpm_lightning import DiffusionProcess
from ddpm_lightning.module import DiffusionModule
from ddpm_lightning.train import build, instantiate_dict

CONF = Path(__file__).resolve().parents[1] / "ddpm_lightning" / "conf"


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def test_groups_have_the_options_the_readme_promises():
    assert {"linear", "scaled_linear", "cosine", "quadratic", "sigmoid"} <= set(options("schedule"))
    assert set(options("parameterization")) == {"epsilon", "x0", "mu", "v"}
    assert {"unet_small", "unet_ddpm_cifar10", "mlp"} <= set(options("network"))
    assert {"ddpm", "ddim"} <= set(options("sampler"))
    assert {"digits", "toy2d", "mnist", "cifar10", "folder"} <= set(options("data"))
    assert {"wandb", "csv", "tensorboard", "none"} <= set(options("logger"))
    assert {"auto", "ddp", "ddp_spawn", "fsdp", "deepspeed"} <= set(options("strategy"))
    for group in ("callbacks", "optimizer", "lr_scheduler", "experiment", "debug", "trainer"):
        assert options(group), group


@pytest.mark.parametrize("option", options("schedule"))
def test_schedule_options(make_cfg, option):
    cfg = make_cfg(f"schedule={option}")
    process = DiffusionProcess(**OmegaConf.to_container(cfg.schedule))
    assert process.num_timesteps == 1000 and torch.isfinite(process.snr).all()


@pytest.mark.parametrize("option", options("parameterization"))
def test_parameterization_options(make_cfg, option):
    _, model, _ = build(make_cfg(f"parameterization={option}"))
    assert model.parameterization.name == option


@pytest.mark.parametrize("overrides, weighting", [
    ([], "min_snr"),                                          # the default run's loss (default-run study)
    (["parameterization=epsilon"], "min_snr"),
    (["parameterization=mu"], "none"),                        # mu selects plain MSE: x_0 weightings diverge on it
    (["parameterization=mu", "loss=huber"], "none"),          # the command line's loss wins
    (["experiment=digits_ddpm"], "none"),                     # Ho et al.'s L_simple
    (["experiment=cifar10_ddpm"], "none"),
    (["experiment=digits_cond"], "none"),                     # the recipe its accuracy was measured with
])
def test_the_loss_each_config_trains_with(make_cfg, overrides, weighting):
    _, model, _ = build(make_cfg(*overrides, "trainer.accelerator=cpu", "trainer.precision=32-true", "data=digits"))
    assert model.loss_fn.weighting == weighting
    assert model.loss_fn.type == ("huber" if "loss=huber" in overrides else "mse")


@pytest.mark.parametrize("option", options("sampler"))
def test_sampler_options(make_cfg, option):
    _, model, _ = build(make_cfg(f"sampler={option}"))
    sampler, steps = model.make_sampler()
    assert sampler.name == OmegaConf.select(make_cfg(f"sampler={option}"), "sampler.name")
    out = model.sample(2, num_steps=2)
    assert out.samples.shape == (2, 1, 16, 16)


# network=pretrained needs a diffusers UNet folder: tests/test_export.py composes it with one
@pytest.mark.parametrize("option", [o for o in options("network") if o != "pretrained"])
def test_network_options(make_cfg, option):
    data = "toy2d" if option == "mlp" else "digits"
    _, model, _ = build(make_cfg(f"network={option}", f"data={data}"))
    shape = model.data_shape
    x = torch.zeros(2, *shape)
    assert model(x, torch.zeros(2, dtype=torch.long)).shape == x.shape


@pytest.mark.parametrize("option", [o for o in options("data") if o != "folder"])
def test_data_options(make_cfg, option):
    dm = instantiate(make_cfg(f"data={option}").data)
    assert dm.data_shape


def test_folder_data_option(make_cfg, tmp_path):
    dm = instantiate(make_cfg("data=folder", f"data.root={tmp_path}").data)
    assert dm.data_shape == (3, 64, 64)


@pytest.mark.parametrize("optimizer", options("optimizer"))
@pytest.mark.parametrize("lr_scheduler", options("lr_scheduler"))
def test_optimizer_and_lr_scheduler_options(make_cfg, optimizer, lr_scheduler):
    _, model, _ = build(make_cfg(f"optimizer={optimizer}", f"lr_scheduler={lr_scheduler}"))
    conf = model.configure_optimizers()
    opt = conf["optimizer"] if isinstance(conf, dict) else conf
    assert isinstance(opt, torch.optim.Optimizer)
    assert (lr_scheduler == "none") != isinstance(conf, dict)


@pytest.mark.parametrize("option", options("callbacks"))
def test_callback_options(make_cfg, option):
    cbs = instantiate_dict(make_cfg(f"callbacks={option}").get("callbacks"))
    assert (len(cbs) == 0) == (option == "none")


@pytest.mark.parametrize("option", options("logger"))
def test_logger_options(make_cfg, option):
    loggers = instantiate_dict(make_cfg(f"logger={option}").get("logger"))
    assert (len(loggers) == 0) == (option == "none")


@pytest.mark.parametrize("option", [o for o in options("strategy") if o not in ("fsdp", "deepspeed")])
def test_strategy_options_build_a_cpu_trainer(make_cfg, option):
    _, _, trainer = build(make_cfg(f"strategy={option}"))
    assert trainer is not None


@pytest.mark.parametrize("option", ["fsdp", "deepspeed"])
def test_gpu_only_strategies_compose(make_cfg, option):
    assert make_cfg(f"strategy={option}").trainer.strategy


@pytest.mark.parametrize("option", options("experiment"))
def test_experiment_options_compose_and_build(make_cfg, option):
    cfg = make_cfg(f"experiment={option}", "trainer.accelerator=cpu", "trainer.precision=32-true")
    if OmegaConf.select(cfg, "data.download") is not None:
        assert OmegaConf.select(cfg, "data._target_")  # torchvision data: no download offline
        return
    _, model, _ = build(cfg)
    assert isinstance(model, DiffusionModule)


@pytest.mark.parametrize("option", options("debug"))
def test_debug_options_compose(make_cfg, option):
    assert make_cfg(f"debug={option}").trainer


@pytest.mark.parametrize("override", ["compile=true", "model.compile=true"])
def test_compile_switch_reaches_the_module(make_cfg, override):
    assert make_cfg().model.compile is False
    _, model, _ = build(make_cfg(override))
    assert model.hparams.compile is True


def test_fast_path_switches_compose_and_build(make_cfg):
    cfg = make_cfg("trainer=gpu", "trainer.accelerator=cpu", "trainer.precision=bf16-mixed", "model.channels_last=true",
                   "optimizer.fused=true", "data.pin_memory=true", "host_malloc=system")
    assert cfg.trainer.benchmark is True
    _, model, _ = build(cfg)
    assert model.hparams.channels_last is True
    optimizers = model.configure_optimizers()
    optimizer = optimizers["optimizer"] if isinstance(optimizers, dict) else optimizers
    assert optimizer.defaults["fused"] is True
