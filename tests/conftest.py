"""Shared fixtures: compose the real Hydra configs, shrunk for the CPU."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

CONF_DIR = str(Path(__file__).resolve().parents[1] / "ddpm_lightning" / "conf")

# W&B must never reach for the network or a terminal in tests.
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")


def compose_train(overrides: list[str], output_dir: Path) -> DictConfig:
    """The `train` config with overrides, its Hydra node set (so ${hydra:...} resolves) and
    every output path inside `output_dir`."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("train", overrides=overrides, return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(output_dir)
        cfg.hydra.job.num = 0
        cfg.paths.output_dir = str(output_dir)
        cfg.paths.cache_dir = str(output_dir / "cache")
    HydraConfig().set_config(cfg)
    return cfg


@pytest.fixture
def make_cfg(tmp_path):
    """make_cfg(*overrides) -> a composed train config writing under tmp_path."""

    def factory(*overrides: str, output_dir: Path | None = None) -> DictConfig:
        base = ["trainer.accelerator=cpu", "logger=none"]
        return compose_train(base + list(overrides), output_dir or tmp_path)

    return factory


# The smallest settings that still run every part of a training run.
TINY = [
    "data.batch_size=16",
    "trainer.max_steps=4",
    "trainer.val_check_interval=2",
    "trainer.limit_val_batches=1",
    "trainer.log_every_n_steps=1",
    "trainer.enable_model_summary=false",
    "sampler.num_steps=3",
    "callbacks.sample_grid.every_n_steps=2",
    "callbacks.sample_grid.num_samples=4",
    "callbacks.sample_grid.trajectory_samples=2",
    "callbacks.sample_grid.trajectory_frames=3",
    "callbacks.sample_grid.forward_samples=2",
    "network.block_out_channels=[16,16,32]",
    "network.attention_head_dim=8",
    "network.norm_num_groups=8",
]
