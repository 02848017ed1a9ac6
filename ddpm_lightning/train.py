"""`python train.py` (or `python -m ddpm_lightning.train`): compose, seed, build, check, fit.

Everything a user can get wrong (image size, channels, network vs data, missing folders or
weights) is checked while building, before the Trainer starts, so a bad run fails in seconds
and writes nothing but Hydra's own record of the config.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

import hydra
import lightning as L
from hydra.utils import instantiate
from lightning.pytorch.callbacks import LearningRateMonitor
from lightning.pytorch.utilities import rank_zero_info
from omegaconf import DictConfig, OmegaConf

from ddpm_lightning.networks import check_network, fill_shape_keys

log = logging.getLogger(__name__)


def instantiate_dict(cfg: DictConfig | None) -> list[Any]:
    """A list of objects from a dict of named `_target_` nodes (callbacks or loggers); nodes set
    to null (or dropped with `~callbacks.name`) are skipped."""
    if not cfg:
        return []
    return [instantiate(node) for node in cfg.values() if isinstance(node, DictConfig) and "_target_" in node]


def build(cfg: DictConfig) -> tuple[L.LightningDataModule, L.LightningModule, L.Trainer]:
    """Datamodule, model and trainer from a composed config, with the start-up checks."""
    datamodule = instantiate(cfg.data)
    data_shape = tuple(datamodule.data_shape)
    network_cfg = fill_shape_keys(OmegaConf.to_container(cfg.network, resolve=True), data_shape)
    model = instantiate(cfg.model, network=network_cfg, data_shape=list(data_shape), _recursive_=False)
    check_network(model.network, data_shape)
    callbacks = instantiate_dict(cfg.get("callbacks"))
    for cb in callbacks:  # callbacks with something to verify (e.g. FID weights) do it now
        if hasattr(cb, "check"):
            cb.check(datamodule=datamodule, model=model)
    loggers = instantiate_dict(cfg.get("logger"))
    if not loggers:  # Lightning's LearningRateMonitor refuses to run without a logger
        callbacks = [cb for cb in callbacks if not isinstance(cb, LearningRateMonitor)]
    trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    return datamodule, model, trainer


def effective_batch_size(trainer: L.Trainer, datamodule: L.LightningDataModule) -> int:
    """Per-device batch x devices x nodes x gradient accumulation."""
    return datamodule.batch_size * trainer.world_size * trainer.accumulate_grad_batches


def train(cfg: DictConfig) -> dict[str, float]:
    """Fit (and optionally test) a model; return the final metrics as floats."""
    ckpt_path = cfg.get("ckpt_path")
    if ckpt_path and not Path(ckpt_path).is_file():
        raise FileNotFoundError(f"ckpt_path {ckpt_path!r} does not exist")
    if cfg.get("seed") is not None:
        L.seed_everything(cfg.seed, workers=True)
    datamodule, model, trainer = build(cfg)
    rank_zero_info(
        f"effective batch size {effective_batch_size(trainer, datamodule)} = {datamodule.batch_size} per device"
        f" x {trainer.num_devices} device(s) x {trainer.num_nodes} node(s)"
        f" x {trainer.accumulate_grad_batches} accumulation"
    )
    if cfg.get("train", True):
        trainer.fit(model, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
    if cfg.get("test", False):
        trainer.validate(model, datamodule=datamodule)
    return {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    """Hydra entry point; returns `optimized_metric` for sweepers."""
    try:
        metrics = train(cfg)
    except (ValueError, FileNotFoundError) as err:
        # a user error found before training: one clear line, no traceback
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    metric = cfg.get("optimized_metric")
    if metric and metric not in metrics:
        log.warning("optimized_metric %r was not logged; have %s", metric, sorted(metrics))
    return metrics.get(metric) if metric else None


if __name__ == "__main__":
    main()
