"""`build_conditioning`: a `Conditioning` from its spec (the `conditioning` config group, or the
hyperparameters of a checkpoint), and `conditioning_for_data`, which fills what the data knows."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from hydra.utils import get_class

from ddpm_lightning.conditioning.base import Conditioning
from ddpm_lightning.conditioning.class_label import ClassConditioning

CONDITIONINGS: dict[str, type[Conditioning]] = {"none": Conditioning, "class": ClassConditioning}


def register(cls: type[Conditioning]) -> type[Conditioning]:
    """Add a Conditioning subclass under its `type` (a decorator)."""
    CONDITIONINGS[cls.type] = cls
    return cls


def build_conditioning(spec: Conditioning | Mapping[str, Any] | None) -> Conditioning:
    """None / {"type": "none"} -> unconditional; {"type": "class", "num_classes": 10, ...};
    {"_target_": "my.Conditioning", ...} for a subclass of one's own; an object as it is."""
    if spec is None or isinstance(spec, Conditioning):
        return spec if spec is not None else Conditioning()
    if not isinstance(spec, Mapping):
        raise ValueError(f"conditioning must be a Conditioning or its config, got {spec!r}")
    spec = dict(spec)
    if "_target_" in spec:
        cls = get_class(spec.pop("_target_"))
        spec.pop("type", None)
        return cls(**spec)
    kind = spec.pop("type", "none")
    if kind not in CONDITIONINGS:
        raise ValueError(f"conditioning.type={kind!r} is not supported; choose one of {sorted(CONDITIONINGS)}")
    return CONDITIONINGS[kind](**spec)


def conditioning_for_data(spec: Mapping[str, Any] | None, datamodule: Any) -> dict[str, Any] | None:
    """The conditioning spec with `num_classes: null` taken from the data; one line if the data
    has no labels. An image conditioning gets `data_shape: null` from the data (its channels and
    size: `conditioning.image`)."""
    if not spec:
        return None
    spec = dict(spec)
    if spec.get("type") == "class" and spec.get("num_classes") is None:
        num_classes = getattr(datamodule, "num_classes", None)
        name = getattr(datamodule, "name", type(datamodule).__name__)
        if num_classes is None:
            raise ValueError(
                f"conditioning=class needs labelled data, but data {name!r} has no class labels: use digits, mnist, "
                "fashion_mnist, cifar10, a folder with one subfolder per class, or toy2d with dataset=8gaussians or moons"
            )
        if not getattr(datamodule, "with_labels", True):
            raise ValueError(f"conditioning=class needs (image, label) batches: set data.labels=true for data {name!r}")
        spec["num_classes"] = int(num_classes)
    if spec.get("type") == "image" and spec.get("data_shape") is None:
        spec["data_shape"] = [int(d) for d in datamodule.data_shape]
    return spec
