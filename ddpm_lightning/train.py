"""`python train.py` (or `python -m ddpm_lightning.train`): compose, seed, build, check, fit.

Everything a user can get wrong (image size, channels, network vs data, missing folders or
weights, devices, strategy) is checked while building, before the Trainer starts, so a bad run
fails in seconds and writes nothing but Hydra's own record of the config.

Multi-device runs (`trainer.devices=N`, `-m` sweeps with DDP jobs, torchrun, SLURM) are
explained in `ddpm_lightning/distributed.py` and the README.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import hydra
import lightning as L
from hydra.utils import instantiate
from lightning.pytorch.callbacks import LearningRateMonitor
from lightning.pytorch.utilities import rank_zero_info
from omegaconf import DictConfig, OmegaConf

from ddpm_lightning import distributed
from ddpm_lightning.errors import one_line_errors, user_errors
from ddpm_lightning.host_malloc import set_host_malloc
from ddpm_lightning.loggers import finish_runs, name_sweep_runs

log = logging.getLogger(__name__)


def instantiate_dict(cfg: DictConfig | None) -> list[Any]:
    """A list of objects from a dict of named `_target_` nodes (callbacks or loggers); nodes set
    to null (or dropped with `~callbacks.name`) are skipped."""
    if not cfg:
        return []
    return [instantiate(node) for node in cfg.values() if isinstance(node, DictConfig) and "_target_" in node]


def build(cfg: DictConfig) -> tuple[L.LightningDataModule, L.LightningModule, L.Trainer]:
    """Datamodule, model and trainer from a composed config, with the start-up checks."""
    with user_errors():
        return _build(cfg)


def _build(cfg: DictConfig) -> tuple[L.LightningDataModule, L.LightningModule, L.Trainer]:
    distributed.check_scale_out(cfg)
    datamodule = instantiate(cfg.data)
    data_shape = tuple(datamodule.data_shape)
    network_cfg = OmegaConf.to_container(cfg.network, resolve=True)  # the module fills its shape keys
    extra = {"optimizer": scaled_optimizer(cfg)} if OmegaConf.select(cfg, "lr_scaling.rule") else {}
    model = instantiate(cfg.model, network=network_cfg, data_shape=list(data_shape), _recursive_=False, **extra)
    callbacks = instantiate_dict(cfg.get("callbacks"))
    for cb in callbacks:  # callbacks with something to verify (e.g. FID weights) do it now
        if hasattr(cb, "check"):
            cb.check(datamodule=datamodule, model=model)
    loggers = instantiate_dict(name_sweep_runs(cfg.get("logger")))  # under -m: W&B group and name per job
    if not loggers:  # Lightning's LearningRateMonitor refuses to run without a logger
        callbacks = [cb for cb in callbacks if not isinstance(cb, LearningRateMonitor)]
    trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    return datamodule, model, trainer


def effective_batch_size(trainer: L.Trainer, datamodule: L.LightningDataModule) -> int:
    """Per-device batch x devices x nodes x gradient accumulation."""
    return datamodule.batch_size * trainer.world_size * trainer.accumulate_grad_batches


def scaled_optimizer(cfg: DictConfig) -> dict[str, Any]:
    """The optimizer config with `lr` scaled by effective batch / `lr_scaling.reference_batch_size`:
    linearly (Goyal et al. 2017) or by its square root (Krizhevsky 2014)."""
    rule, reference = cfg.lr_scaling.rule, cfg.lr_scaling.reference_batch_size
    if rule not in ("linear", "sqrt"):
        raise ValueError(f"lr_scaling.rule must be null, linear or sqrt; got {rule!r}")
    t = cfg.trainer
    batch = cfg.data.batch_size * distributed.processes_per_node(t) * t.num_nodes * t.accumulate_grad_batches
    factor = batch / reference if rule == "linear" else (batch / reference) ** 0.5
    optimizer = OmegaConf.to_container(cfg.model.optimizer, resolve=True)
    rank_zero_info(f"lr_scaling={rule}: lr {optimizer['lr']:g} x {factor:g} (effective batch {batch} / {reference})")
    optimizer["lr"] = optimizer["lr"] * factor
    return optimizer


def train(cfg: DictConfig) -> dict[str, float]:
    """Fit (and optionally test) a model; return the final metrics as floats."""
    # before the data and the model exist, so that their memory follows the policy too
    set_host_malloc(cfg.get("host_malloc", "system"))
    ckpt_path = cfg.get("ckpt_path")
    if ckpt_path and not Path(ckpt_path).is_file():
        raise FileNotFoundError(f"ckpt_path {ckpt_path!r} does not exist")
    if cfg.get("seed") is not None:
        # the same seed on every rank: identical initial weights (DiffusionModule.on_train_start
        # then reseeds each rank apart for its noise and timesteps)
        L.seed_everything(cfg.seed, workers=True)
    with distributed.job_scope():
        datamodule, model, trainer = build(cfg)
        rank_zero_info(
            f"effective batch size {effective_batch_size(trainer, datamodule)} = {datamodule.batch_size} per device"
            f" x {trainer.num_devices} device(s) x {trainer.num_nodes} node(s)"
            f" x {trainer.accumulate_grad_batches} accumulation"
        )
        try:
            if cfg.get("train", True):
                trainer.fit(model, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
            if cfg.get("test", False):
                trainer.validate(model, datamodule=datamodule)
        finally:
            finish_runs(trainer.loggers)  # the next job of a sweep gets its own W&B run
            distributed.wait_for_children(trainer)
    return {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    """Hydra entry point; returns `optimized_metric` for sweepers."""
    with one_line_errors():  # a user error found before training: one clear line, no traceback
        metrics = train(cfg)
    metric = cfg.get("optimized_metric")
    if metric and metric not in metrics:
        log.warning("optimized_metric %r was not logged; have %s", metric, sorted(metrics))
    return metrics.get(metric) if metric else None


if __name__ == "__main__":
    main()
