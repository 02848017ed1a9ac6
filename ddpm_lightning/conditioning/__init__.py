"""Conditional generation: what a model is conditioned on (`Conditioning` and its subclasses),
built from the `conditioning` config group. See `ddpm_lightning.conditioning.base`."""

from ddpm_lightning.conditioning.base import Conditioning
from ddpm_lightning.conditioning.build import CONDITIONINGS, build_conditioning, conditioning_for_data, register
from ddpm_lightning.conditioning.class_label import ClassConditioning
from ddpm_lightning.conditioning.image import ImageConditioning  # registers type "image"

__all__ = ["CONDITIONINGS", "ClassConditioning", "Conditioning", "ImageConditioning", "build_conditioning", "conditioning_for_data", "register"]
