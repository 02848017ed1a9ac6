"""Callbacks: everything that is not the research code (EMA, pictures, metrics, checkpoints, random state)."""

from ddpm_lightning.callbacks.checkpoint import Checkpoint
from ddpm_lightning.callbacks.class_accuracy import ClassAccuracy
from ddpm_lightning.callbacks.ema import EMA
from ddpm_lightning.callbacks.fid import FID
from ddpm_lightning.callbacks.nonfinite_loss import NonFiniteLoss, NonFiniteLossError
from ddpm_lightning.callbacks.rng_state import RNGState
from ddpm_lightning.callbacks.sample_grid import SampleGrid

__all__ = ["EMA", "FID", "Checkpoint", "ClassAccuracy", "NonFiniteLoss", "NonFiniteLossError", "RNGState", "SampleGrid"]
