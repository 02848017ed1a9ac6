"""Feature spaces and FID/KID metrics by name: which space scores which data ("auto"), the checks
that run at start-up, and the builders.

    metric = make_metric("fid", "inception")                 # torchmetrics FID, TF-FID Inception
    metric = make_metric("kid", "digits", subset_size=100)    # torchmetrics KID, digit-CNN features
    metric = make_metric("fid", PrecomputedFeatures(64))     # fed features computed elsewhere

Feature spaces: "inception" (InceptionV3 pool3, 2048-d, the published-FID network; needs the
weights, see `inception_weights.py`), "digits" (64-d digit classifier, for the embedded 8x8
digits data) and "toy2d" (2-D points as they are); "auto" picks one for the data. Only
"inception" numbers are comparable to published FIDs. The FID callback and
`python -m ddpm_lightning.evaluate` choose and check the space with the functions here.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn
from torchmetrics import Metric
from torchmetrics.image.kid import KernelInceptionDistance

from .digits import DigitFeatures, load_digit_cnn
from .fid_metric import FrechetDistance
from .inception import InceptionFeatures
from .inception_weights import check_inception_weights, inception_weights_available
from .toy2d import Toy2dFeatures

FEATURE_NAMES = ("inception", "digits", "toy2d")
FEATURES = ("auto", *FEATURE_NAMES)  # what a user may ask for
FEATURE_DIMS = {
    "inception": InceptionFeatures.num_features,
    "digits": DigitFeatures.num_features,
    "toy2d": Toy2dFeatures.num_features,
}
DIGIT_DATASETS = ("digits", "mnist")  # data a digit classifier's features describe
METRIC_NAMES = ("fid", "kid")


def _check_feature_name(name: str) -> None:
    if name not in FEATURE_NAMES:
        raise ValueError(f"feature must be one of {FEATURE_NAMES} or an nn.Module, got {name!r}")


def auto_feature(data_shape: Sequence[int], data_name: str | None = None) -> str:
    """The feature space "auto" means: toy2d for 2-D points, digits for the digits data,
    inception for other images."""
    if len(data_shape) == 1:
        return "toy2d"
    if data_name == "digits":
        return "digits"
    return "inception"


def check_feature_for_data(feature: str, data_shape: Sequence[int], data_name: str | None = None) -> None:
    """Raise a ValueError if `feature` cannot score data of `data_shape`; warn if it can but the
    numbers would mean little (digit features of non-digit images)."""
    shape = tuple(data_shape)
    if feature not in FEATURE_DIMS:
        raise ValueError(f"feature must be one of {FEATURES}, got {feature!r}")
    if feature == "toy2d":
        if shape != (2,):
            raise ValueError(
                f"feature 'toy2d' scores 2-D points, but the data has shape {shape}; "
                "use feature=inception (or digits for digit images)"
            )
        return
    if len(shape) != 3 or shape[0] not in (1, 3):
        raise ValueError(
            f"feature {feature!r} scores images (C, H, W) with 1 or 3 channels, but the data has shape "
            f"{shape}; use feature=toy2d for 2-D points"
        )
    if feature == "digits":
        if shape[0] != 1:
            raise ValueError(
                f"feature 'digits' is a classifier of grey (1, H, W) digit images, but the data has "
                f"shape {shape}; use feature=inception"
            )
        if data_name is not None and data_name not in DIGIT_DATASETS:
            warnings.warn(
                f"feature 'digits' (a digit classifier) on {data_name!r} images: the FID compares "
                "features that do not describe this data; use feature=inception",
                stacklevel=2,
            )


class PrecomputedFeatures(nn.Module):
    """The identity on (B, D) features: lets torchmetrics' FID/KID take features computed once per
    batch elsewhere (one pass of the network serves both metrics)."""

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.num_features = num_features  # read by torchmetrics

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return features


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
    with warnings.catch_warnings():
        # "will save all extracted features in buffer": KID needs them; known and documented
        warnings.filterwarnings("ignore", message=".*save all extracted features.*")
        return KernelInceptionDistance(feature=module, **metric_kwargs)
