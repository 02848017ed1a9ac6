"""Build FID/KID metrics and feature extractors by name, and check at start-up that they will work.

    metric = make_metric("fid", "inception")                 # torchmetrics FID, TF-FID Inception
    metric = make_metric("kid", "digits", subset_size=100)    # torchmetrics KID, digit-CNN features

Feature spaces: "inception" (InceptionV3 pool3, 2048-d, the published-FID network; needs the
weights, see `inception_weights.py`), "digits" (64-d digit classifier, for the embedded 8x8
digits data) and "toy2d" (2-D points as they are). Only "inception" numbers are comparable
to published FIDs.
"""

from __future__ import annotations

from pathlib import Path

from torch import nn
from torchmetrics import Metric
from torchmetrics.image.kid import KernelInceptionDistance

from .digits import DigitFeatures, load_digit_cnn
from .fid_metric import FrechetDistance
from .inception import InceptionFeatures
from .inception_weights import check_inception_weights, inception_weights_available
from .toy2d import Toy2dFeatures

FEATURE_NAMES = ("inception", "digits", "toy2d")
METRIC_NAMES = ("fid", "kid")


def _check_feature_name(name: str) -> None:
    if name not in FEATURE_NAMES:
        raise ValueError(f"feature must be one of {FEATURE_NAMES} or an nn.Module, got {name!r}")


def make_feature_extractor(name: str, weights_path: str | Path | None = None) -> nn.Module:
    """A frozen feature module: (B, ...) inputs -> (B, num_features) features.

    `weights_path` overrides the Inception weights ("inception") or the classifier ("digits");
    "toy2d" has none.
    """
    _check_feature_name(name)
    if name == "inception":
        return InceptionFeatures(weights_path)
    if name == "digits":
        return DigitFeatures(weights_path)
    if weights_path is not None:
        raise ValueError(f"feature 'toy2d' has no weights, got weights_path={str(weights_path)!r}")
    return Toy2dFeatures()


def check_feature_available(name: str, weights_path: str | Path | None = None) -> None:
    """Raise the error `make_feature_extractor` would raise, cheaply (no network is built).

    For "inception" this resolves the weights and verifies the checksum of known files.
    """
    _check_feature_name(name)
    if name == "inception":
        check_inception_weights(weights_path)
    elif name == "digits":
        load_digit_cnn(weights_path)
    elif weights_path is not None:
        raise ValueError(f"feature 'toy2d' has no weights, got weights_path={str(weights_path)!r}")


def is_feature_available(name: str, weights_path: str | Path | None = None) -> bool:
    """True if `make_feature_extractor(name, weights_path)` can find its weights."""
    _check_feature_name(name)
    if name == "inception":
        return inception_weights_available(weights_path)
    try:
        check_feature_available(name, weights_path)
    except (FileNotFoundError, ValueError):
        return False
    return True


def make_metric(
    name: str, feature: str | nn.Module = "inception", *, weights_path: str | Path | None = None, **metric_kwargs
) -> Metric:
    """A torchmetrics metric scoring generated against real images in a feature space.

    Args:
        name: "fid" (`FrechetDistance`, a torchmetrics FrechetInceptionDistance) or "kid"
            (torchmetrics KernelInceptionDistance; `compute()` returns (mean, std)).
        feature: one of FEATURE_NAMES, or an nn.Module with an int `num_features`.
        weights_path: see `make_feature_extractor`; only with a feature name.
        **metric_kwargs: passed on, e.g. `reset_real_features=False`, `small_sample="error"`
            (fid), `subsets=`, `subset_size=` (kid; torchmetrics' default subset_size is 1000,
            and it must not exceed either set's size).

    Update with `metric.update(images, real=True/False)`; images as the feature expects
    ((B, C, H, W) uint8 or [-1, 1] float for "inception"/"digits", (B, 2) for "toy2d").
    """
    if name not in METRIC_NAMES:
        raise ValueError(f"metric name must be one of {METRIC_NAMES}, got {name!r}")
    if isinstance(feature, str):
        module = make_feature_extractor(feature, weights_path)
    elif isinstance(feature, nn.Module):
        if weights_path is not None:
            raise ValueError("weights_path only applies to a feature given by name, not to an nn.Module")
        module = feature
    else:
        raise TypeError(f"feature must be one of {FEATURE_NAMES} or an nn.Module, got {type(feature).__name__}")
    if name == "fid":
        return FrechetDistance(module, **metric_kwargs)
    return KernelInceptionDistance(feature=module, **metric_kwargs)
