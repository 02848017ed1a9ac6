"""A diffusers UNet2DModel folder as our network, to fine-tune it: `network=pretrained
network.path=DIR`.

DIR is a folder `UNet2DModel.save_pretrained` wrote (config.json + weights), e.g. the `unet/`
subfolder of a DDPM pipeline such as google/ddpm-cifar10-32 downloaded elsewhere; a pipeline
folder itself (with `unet/` inside) is accepted too. The network is our `UNet` wrapper around
the loaded model, so shape checks, the diffusers export and everything else treat it alike.
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
    """

    def __init__(self, path: str | Path, in_channels: int | None = None, out_channels: int | None = None,
                 sample_size: int | None = None) -> None:
        from diffusers import UNet2DModel

        folder = unet_folder(path)
        nn.Module.__init__(self)  # not UNet.__init__: the model is loaded, not built from arguments
        # low_cpu_mem_usage=False: the plain load (the fast path needs `accelerate`, and says so)
        self.unet = UNet2DModel.from_pretrained(folder, low_cpu_mem_usage=False)
        config = self.unet.config
        if config.num_class_embeds is not None or config.class_embed_type is not None:
            # the network contract passes no class labels yet (conditioning is a later issue)
            raise ValueError(f"the UNet in {folder} is class-conditional (num_class_embeds={config.num_class_embeds}, "
                             f"class_embed_type={config.class_embed_type!r}); only unconditional UNets can be fine-tuned so far")
        size = config.sample_size if isinstance(config.sample_size, int) else config.sample_size[0]
        for key, given, theirs in (("in_channels", in_channels, config.in_channels),
                                   ("out_channels", out_channels, config.out_channels),
                                   ("sample_size", sample_size, size)):
            if given is not None and given != theirs:
                raise ValueError(f"the data needs {key}={given}, but the pretrained UNet in {folder} has {key}={theirs}")
        self.in_channels = config.in_channels
        self.sample_size = size
        self.num_class_embeds, self.cond_channels = None, 0  # unconditional (refused above otherwise)
