"""A cheap feature space for scikit-learn's 8x8 digits: a small CNN classifier's 64-d penultimate layer.

InceptionV3 scores a 16x16 grey digit after blowing it up to 299x299 RGB, slowly (about 10
images/s on 2 CPU cores) and in features trained on ImageNet photos. For the embedded digits
data set we score samples in the features of a classifier trained on the digits themselves, the
way "FID" is computed on MNIST in many papers. Use it to compare runs of this project with each
other; these numbers are NOT comparable to published (Inception) FIDs, nor to digit-FIDs of other
code bases, whose classifiers differ.

Data convention (shared with the digits data module): `load_digits().images` (N, 8, 8) in
[0, 16] -> / 16 -> (N, 1, 8, 8) -> bilinear, antialiased upsampling to 16x16 -> * 2 - 1, so
images are (N, 1, 16, 16) float32 in [-1, 1]. `DigitFeatures` accepts any size (it resizes to
16x16 the same way), 1 or 3 channels (3 are averaged) and uint8 or [-1, 1] float input.

The weights `digit_classifier.pt` (153 KB) are made by `scripts/train_digit_classifier.py`
(seed 0, bit-reproducible here, about 10 s on 2 CPU cores) on the training part of
`digits_split()` (75 %, stratified, `random_state=0`). Accuracy on the held-out 25 %
(450 images): 99.33 % (447 / 450).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .image_input import check_image_batch, to_minus1_1

DIGITS_SIZE = 16
DIGITS_FEATURES = 64
DIGITS_WEIGHTS = Path(__file__).with_name("digit_classifier.pt")
DIGITS_HELDOUT_FRACTION = 0.25
DIGITS_SPLIT_SEED = 0
# Held-out accuracy of the shipped weights, written by scripts/train_digit_classifier.py;
# tests/test_metrics_features.py re-measures it.
DIGITS_HELDOUT_ACCURACY = 0.9933  # 447 / 450


def resize_digits(x: torch.Tensor, size: int = DIGITS_SIZE) -> torch.Tensor:
    """(B, C, H, W) float -> (B, C, size, size), bilinear and antialiased (the data convention)."""
    if x.shape[-2:] == (size, size):
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)


def load_digits_images() -> tuple[torch.Tensor, torch.Tensor]:
    """All 1797 digits as (N, 1, 16, 16) float32 in [-1, 1], and their labels (N,) int64."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32) / 16.0  # (N, 8, 8) in [0, 1]
    x = resize_digits(x.unsqueeze(1))  # (N, 1, 16, 16)
    return x * 2 - 1, torch.tensor(digits.target, dtype=torch.int64)


def digits_split(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Fixed stratified split of the digits: (train indices, held-out indices), both sorted."""
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(labels))
    train, heldout = train_test_split(
        idx, test_size=DIGITS_HELDOUT_FRACTION, random_state=DIGITS_SPLIT_SEED, stratify=labels.numpy()
    )
    return torch.from_numpy(np.sort(train)), torch.from_numpy(np.sort(heldout))


class DigitCNN(nn.Module):
    """(B, 1, 16, 16) in [-1, 1] -> 10 logits; `features` is the 64-d penultimate layer.

    The features are taken before that layer's ReLU: after it, a third of the units are zero
    on all digits, which makes the feature covariance singular and FID ill-conditioned.
    """

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # (B, 16, 8, 8)
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # (B, 32, 4, 4)
            nn.Flatten(), nn.Linear(32 * 4 * 4, DIGITS_FEATURES),  # (B, 64)
        )  # fmt: skip
        self.classifier = nn.Sequential(nn.ReLU(), nn.Linear(DIGITS_FEATURES, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def load_digit_cnn(weights_path: str | Path | None = None) -> DigitCNN:
    """The trained classifier (eval mode) from `weights_path` or the shipped file."""
    path = Path(weights_path) if weights_path is not None else DIGITS_WEIGHTS
    if not path.is_file():
        raise FileNotFoundError(
            f"digit classifier weights {str(path)!r} not found; run "
            "`python scripts/train_digit_classifier.py` to create them"
        )
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    model = DigitCNN()
    model.load_state_dict(checkpoint["state_dict"])
    return model.eval()


class DigitFeatures(nn.Module):
    """Digit-classifier features: (B, 1|3, H, W) uint8 or [-1, 1] float -> (B, 64) float32."""

    num_features = DIGITS_FEATURES  # read by torchmetrics

    def __init__(self, weights_path: str | Path | None = None):
        super().__init__()
        self.net = load_digit_cnn(weights_path).features
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> DigitFeatures:
        return super().train(False)  # a frozen feature space, even inside a training module

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        check_image_batch(images)
        x = to_minus1_1(images)  # (B, C, H, W) in [-1, 1]
        if x.shape[1] == 3:
            x = x.mean(dim=1, keepdim=True)  # (B, 1, H, W)
        x = resize_digits(x)  # (B, 1, 16, 16)
        return self.net(x)  # (B, 64)
