"""Class accuracy of a class-conditional digits model: the share of its guided samples that the
shipped digit classifier (`metrics.digits`, 99.3 % on held-out real digits) labels as the class
they were asked for.

Samples are class-balanced: sample i asks for class i mod 10 and starts from the fixed noise
(seed, i) (`noise.fixed_samples`), so the score does not depend on the batch size or on how the
samples are shared between DDP ranks. The callback (`callbacks.ClassAccuracy`, `val/class_accuracy`)
and `benchmarks/class_conditional.py` both score with `class_accuracy_counts` here.

The classifier knows scikit-learn's 8x8 digits (upsampled to 16x16, `data=digits`) and nothing
else: `check_class_model` and `check_digits_data` refuse, in one line, other data and models that are not
class-conditional with the digits' 10 classes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from .digits import load_digit_cnn, resize_digits

DIGITS_DATA = "digits"  # the data set the shipped classifier was trained on
DIGITS_CLASSES = 10


def check_class_model(model: Any, what: str = "val/class_accuracy") -> None:
    """One line, before any work, unless the model is class-conditional."""
    conditioning = getattr(model, "conditioning", None)
    num_classes = getattr(conditioning, "num_classes", None)
    if num_classes is None:
        kind = "unconditional (conditioning=none)" if not getattr(conditioning, "is_conditional", False) \
            else f"{conditioning.type}-conditional (conditioning={conditioning.type})"
        raise ValueError(f"{what} needs a class-conditional model (conditioning=class), but this model is {kind}; "
                         "train with conditioning=class or drop it (~callbacks.class_accuracy)")


def check_digits_classes(model: Any, what: str = "val/class_accuracy") -> None:
    """One line unless the class-conditional model has the digits' 10 classes."""
    num_classes = model.conditioning.num_classes
    if num_classes != DIGITS_CLASSES:
        raise ValueError(f"{what} needs a model of the digits' {DIGITS_CLASSES} classes, but this one has {num_classes}")


def check_digits_data(data_name: str | None, data_shape: Sequence[int] | None, what: str = "val/class_accuracy") -> None:
    """One line, before any work, unless the data is the digits the classifier was trained on."""
    shape = tuple(data_shape) if data_shape is not None else None
    if data_name != DIGITS_DATA or (shape is not None and shape[0] != 1):
        raise ValueError(f"{what} scores samples with the shipped digits classifier, so it needs data=digits, "
                         f"but the data is {data_name!r} of shape {shape}; drop it (~callbacks.class_accuracy)")


def load_digit_classifier(weights_path: Any = None) -> nn.Module:
    """The shipped digit classifier (eval mode, frozen): (B, 1, H, W) in [-1, 1] -> 10 logits."""
    return load_digit_cnn(weights_path).requires_grad_(False)


@torch.no_grad()
def classify(classifier: nn.Module, samples: torch.Tensor) -> torch.Tensor:
    """Predicted digits (B,) of samples (B, 1, H, W) in [-1, 1] (resized to the classifier's 16x16)."""
    device = next(classifier.parameters()).device
    return classifier(resize_digits(samples.float().to(device))).argmax(-1)


def class_accuracy_counts(module: Any, indices: Sequence[int] | range, classifier: nn.Module, seed: int = 0,
                          batch_size: int = 250, **sample_kwargs: Any) -> tuple[int, int, torch.Tensor]:
    """(correct, total, samples) of the class-balanced samples `indices` (sample i asks for class
    i mod K); `sample_kwargs` go to `module.sample` (sampler=, guidance_scale=)."""
    from ddpm_lightning.noise import fixed_samples

    indices = list(indices)
    correct, samples = 0, []
    for start in range(0, len(indices), batch_size):
        idx = indices[start : start + batch_size]
        asked = module.conditioning.balanced(idx)["class"]  # (B,), class i mod K
        x = fixed_samples(module, idx, seed, **sample_kwargs).samples  # (B, 1, H, W)
        correct += int((classify(classifier, x).cpu() == asked).sum())
        samples.append(x.cpu())
    empty = torch.zeros(0, *(module.data_shape or ()))
    return correct, len(indices), torch.cat(samples) if samples else empty


def class_accuracy(module: Any, n: int, guidance_scale: float | None = None, seed: int = 0, batch_size: int = 250,
                   classifier: nn.Module | None = None, **sample_kwargs: Any) -> tuple[float, torch.Tensor]:
    """(accuracy, samples) of n class-balanced samples at guidance w (None: the model's default)."""
    classifier = classifier if classifier is not None else load_digit_classifier()
    correct, total, samples = class_accuracy_counts(module, range(n), classifier, seed, batch_size,
                                                    guidance_scale=guidance_scale, **sample_kwargs)
    return correct / total, samples
