"""Sample-quality metrics that work offline: feature spaces, FID/KID, real-statistics cache.

One file per concept:

- `inception_weights.py`  where the TF-FID InceptionV3 weights come from (no downloads)
- `tf_resize.py`          the TF1 bilinear resize that FID uses
- `image_input.py`        the input conventions: uint8 [0, 255] or float [-1, 1], (B, C, H, W)
- `inception.py`          `InceptionFeatures`: 2048-d pool3 features (published-FID space)
- `digits.py`             `DigitFeatures`: 64-d digit-classifier features (8x8 digits data)
- `toy2d.py`              `Toy2dFeatures`: 2-D points as features (toy data)
- `frechet.py`            `frechet_distance` in float64 and the small-sample check
- `feature_stats.py`      `FeatureStats` (mu, sigma, n, kept features), computed in batches, saved as .npz
- `stats_cache.py`        `RealStatsCache`, `real_stats_key`: real statistics (and KID's real
                          features) computed once per key, for the FID callback and evaluate
- `reference_batch.py`    guided-diffusion's `arr_0` .npz image batches
- `fid_metric.py`         `FrechetDistance`: torchmetrics FID + sample-size guard + cached stats
- `factory.py`            feature spaces by name (`auto_feature`, `check_feature_for_data`,
                          `FEATURE_DIMS`), `make_metric`, `make_feature_extractor`,
                          `PrecomputedFeatures`, availability checks

Only the "inception" feature space gives numbers comparable to published FIDs.
"""

from .digits import DigitFeatures, load_digits_images
from .factory import (
    FEATURE_DIMS,
    FEATURE_NAMES,
    FEATURES,
    METRIC_NAMES,
    PrecomputedFeatures,
    auto_feature,
    check_feature_available,
    check_feature_for_data,
    is_feature_available,
    make_feature_extractor,
    make_metric,
)
from .feature_stats import FeatureStats, compute_feature_stats
from .fid_metric import FrechetDistance
from .frechet import SmallSampleWarning, check_sample_size, frechet_distance
from .inception import InceptionFeatures
from .inception_weights import (
    InceptionWeightsNotFoundError,
    check_inception_weights,
    inception_weights_available,
    resolve_inception_weights,
)
from .reference_batch import load_reference_images, reference_stats, save_reference_images
from .stats_cache import RealStatsCache, real_stats_key
from .tf_resize import resize_bilinear_tf1
from .toy2d import Toy2dFeatures

__all__ = [
    "FEATURES",
    "FEATURE_DIMS",
    "FEATURE_NAMES",
    "METRIC_NAMES",
    "DigitFeatures",
    "FeatureStats",
    "FrechetDistance",
    "InceptionFeatures",
    "InceptionWeightsNotFoundError",
    "PrecomputedFeatures",
    "RealStatsCache",
    "SmallSampleWarning",
    "Toy2dFeatures",
    "auto_feature",
    "check_feature_available",
    "check_feature_for_data",
    "check_inception_weights",
    "check_sample_size",
    "compute_feature_stats",
    "frechet_distance",
    "inception_weights_available",
    "is_feature_available",
    "load_digits_images",
    "load_reference_images",
    "make_feature_extractor",
    "make_metric",
    "real_stats_key",
    "reference_stats",
    "resize_bilinear_tf1",
    "save_reference_images",
]
