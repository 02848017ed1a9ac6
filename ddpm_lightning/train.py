"""`python train.py` (or `python -m ddpm_lightning.train`): compose, seed, build, check, fit.

Everything a user can get wrong (image size, channels, network vs data, missing folders or
weights, devices, strategy) is checked while building, before the Trainer starts, so a bad run
fails in seconds and writes nothing but Hydra's own record of the config.

Multi-device runs (`trainer.devices=N`, `-m` sweeps with DDP jobs, torchrun, SLURM) are
explained in `ddpm_lightning/distributed.py` and the README.
"""

from __future__ import annotations

import logging
import os
import signal
from typing import Any

import hydra
import lightning as L
from hydra.utils import instantiate
from lightning.pytorch.callbacks import LearningRateMonitor
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf

from ddpm_lightning import distributed
from ddpm_lightning.callbacks.nonfinite_loss import NonFiniteLoss
from ddpm_lightning.cli import hydra_user_errors
from ddpm_lightning.conditioning import conditioning_for_data
from ddpm_lightning.errors import one_line_errors, user_errors
from ddpm_lightning.host_malloc import set_host_malloc
from ddpm_lightning.loggers import finish_runs, name_sweep_runs
from ddpm_lightning.run_dir import check_run_dir, clear_run_dir
from ddpm_lightning.safe_load import load_checkpoint

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
    cond_cfg = OmegaConf.to_container(cfg.conditioning, resolve=True) if cfg.get("conditioning") else None
    extra["conditioning"] = conditioning_for_data(cond_cfg, datamodule)  # num_classes from the data
    model = instantiate(cfg.model, network=network_cfg, data_shape=list(data_shape), _recursive_=False, **extra)
    # not a callbacks node: `callbacks=none` must not switch off the guard against NaN runs
    callbacks = instantiate_dict(cfg.get("callbacks")) + [NonFiniteLoss(cfg.get("nan_policy", "stop"))]
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
    if ckpt_path:
        load_checkpoint(ckpt_path, bool(cfg.get("trust_checkpoint", False)))  # one line for a bad file, before any work
    NonFiniteLoss(cfg.get("nan_policy", "stop"))  # a bad nan_policy fails here, before any work
    run_dir = OmegaConf.select(cfg, "paths.output_dir")
    earlier = check_run_dir(run_dir, bool(cfg.get("overwrite", False)), ckpt_path) if run_dir else []
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
        if earlier and cfg.get("overwrite", False):  # once every input has been checked
            clear_run_dir(run_dir, earlier)
        try:
            if cfg.get("train", True):
                fit(trainer, model, datamodule, ckpt_path)
            if cfg.get("test", False):
                trainer.validate(model, datamodule=datamodule)
        finally:
            finish_runs(trainer.loggers)  # the next job of a sweep gets its own W&B run
            distributed.wait_for_children(trainer)
    return {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}


def fit(trainer: L.Trainer, model: L.LightningModule, datamodule: L.LightningDataModule, ckpt_path: str | None) -> None:
    """`trainer.fit`; on SIGTERM (a preempted or cancelled job) the checkpoint callback has saved
    the state at the signal, and the process exits with 143 = 128 + SIGTERM, as a process killed by
    it would, so a scheduler sees a job that did not finish (and SLURM can requeue it)."""
    try:
        trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path)
    except SIGTERMException:
        last = getattr(trainer.checkpoint_callback, "last_model_path", "") or "nothing (no checkpoint callback)"
        rank_zero_info(f"stopped by SIGTERM at step {trainer.global_step}; saved {last}; resume with ckpt_path={last}")
        raise SystemExit(128 + signal.SIGTERM) from None


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def hydra_main(cfg: DictConfig) -> float | None:
    """Hydra entry point; returns `optimized_metric` for sweepers."""
    with one_line_errors():  # a user error found before training: one clear line, no traceback
        metrics = train(cfg)
    metric = cfg.get("optimized_metric")
    if metric and metric not in metrics:
        log.warning("optimized_metric %r was not logged; have %s", metric, sorted(metrics))
    return metrics.get(metric) if metric else None


def main() -> None:
    """`python train.py`: Hydra's own errors (an unknown group option or key, a malformed
    override) are one line with exit code 2 too, as the sample and evaluate commands' are."""
    os.environ.setdefault("HYDRA_FULL_ERROR", "1")  # Hydra re-raises them instead of printing pages
    with one_line_errors(), hydra_user_errors("train"):
        hydra_main()


if __name__ == "__main__":
    main()
