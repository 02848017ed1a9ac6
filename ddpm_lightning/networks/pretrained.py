"""A diffusers UNet2DModel folder as our network, to fine-tune it: `network=pretrained
network.path=DIR`.

DIR is a folder `UNet2DModel.save_pretrained` wrote (config.json + weights), e.g. the `unet/`
subfolder of a DDPM pipeline such as google/ddpm-cifar10-32 downloaded elsewhere; a pipeline
folder itself (with `unet/` inside) is accepted too. The network is our `UNet` wrapper around
the loaded model, so shape checks, the diffusers export and everything else treat it alike.

A class-conditional UNet (`num_class_embeds`) or one taking a conditioning image (in_channels =
the data's + the condition's) loads with the matching conditioning, whose keys fill
`num_class_embeds` / `cond_channels` (`fill_shape_keys`); the folders our diffusers export
writes record it in `conditioning.json` (`ddpm_lightning.export.conditioning_file`).
"""

from __future__ import annotations

import json
from pathlib import Path

from torch import nn

from ddpm_lightning.networks.unet import UNet


def unet_folder(path: str | Path) -> Path:
    """The folder holding the UNet2DModel config: `path` itself or its `unet/` subfolder."""
    if path is None or str(path) in ("", "???"):
        raise ValueError("network=pretrained needs network.path=DIR, a diffusers UNet2DModel folder")
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"network.path={str(path)!r} does not exist (a diffusers UNet2DModel folder)")
    for folder in (path, path / "unet"):
        config = folder / "config.json"
        if config.is_file() and json.loads(config.read_text()).get("_class_name") == "UNet2DModel":
            return folder
    raise ValueError(f"network.path={str(path)!r} holds no UNet2DModel config (config.json with _class_name UNet2DModel, "
                     "or a pipeline folder with unet/)")


class PretrainedUNet(UNet):
    """Our `UNet` whose UNet2DModel (config and weights) comes from a diffusers folder.

    Args:
        path: the folder (see `unet_folder`).
        in_channels, out_channels, sample_size: if given (the configs fill them from the data),
            they must match the pretrained model's; null accepts the model's.
        num_class_embeds: rows of the UNet's class-embedding table (`conditioning=class` fills it
            with num_classes + 1); it must match the model's. Null: the model must have none.
        cond_channels: channels of the conditioning image concatenated to x_t
            (`conditioning=image` fills it); the model's in_channels are then the data's plus
            these. Null or 0: none.
    """

    def __init__(self, path: str | Path, in_channels: int | None = None, out_channels: int | None = None,
                 sample_size: int | None = None, num_class_embeds: int | None = None, cond_channels: int | None = None) -> None:
        from diffusers import UNet2DModel

        from ddpm_lightning.export.conditioning_file import recorded_hint  # an exported folder says what it needs

        folder = unet_folder(path)
        nn.Module.__init__(self)  # not UNet.__init__: the model is loaded, not built from arguments
        # low_cpu_mem_usage=False: the plain load (the fast path needs `accelerate`, and says so)
        self.unet = UNet2DModel.from_pretrained(folder, low_cpu_mem_usage=False)
        config = self.unet.config
        if config.class_embed_type is not None:
            # UNet.forward feeds labels to a num_class_embeds table only
            raise ValueError(f"the UNet in {folder} has class_embed_type={config.class_embed_type!r}; only the plain "
                             "class-embedding table (num_class_embeds, class_embed_type null) is supported")
        if config.num_class_embeds != num_class_embeds:
            if num_class_embeds is None:
                raise ValueError(
                    f"the UNet in {folder} is class-conditional (num_class_embeds={config.num_class_embeds}) but the model "
                    f"is not: give conditioning=class with num_classes={config.num_class_embeds - 1} (the last row is the "
                    f"null class){recorded_hint(folder)}")
            raise ValueError(f"the conditioning needs num_class_embeds={num_class_embeds} (classes + the null class), but the "
                             f"pretrained UNet in {folder} has num_class_embeds={config.num_class_embeds}{recorded_hint(folder)}")
        cond_channels = int(cond_channels or 0)
        data_channels = config.in_channels - cond_channels  # SR3 / Palette: [x_t, condition] on the channels
        size = config.sample_size if isinstance(config.sample_size, int) else config.sample_size[0]
        if data_channels < 1:
            raise ValueError(f"the conditioning image has {cond_channels} channels, but the pretrained UNet in {folder} "
                             f"takes only in_channels={config.in_channels} in all{recorded_hint(folder)}")
        for key, given, theirs in (("in_channels", in_channels, data_channels),
                                   ("out_channels", out_channels, config.out_channels),
                                   ("sample_size", sample_size, size)):
            if given is not None and given != theirs:
                also = f" (its {config.in_channels} input channels less the {cond_channels} of the condition)" if key == "in_channels" and cond_channels else ""
                raise ValueError(f"the data needs {key}={given}, but the pretrained UNet in {folder} has {key}={theirs}{also}{recorded_hint(folder)}")
        self.in_channels = data_channels
        self.out_channels = config.out_channels
        self.sample_size = size
        self.num_class_embeds, self.cond_channels = config.num_class_embeds, cond_channels
