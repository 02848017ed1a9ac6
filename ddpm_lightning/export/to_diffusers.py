"""Export to a diffusers pipeline folder: `DDPMPipeline.from_pretrained(DIR)` and
`DDIMPipeline.from_pretrained(DIR)` load it.

The folder is what `DDPMPipeline.save_pretrained` writes: `model_index.json`, `unet/` (the
UNet2DModel config and its weights as safetensors: the module's weights, i.e. the EMA weights of
a checkpoint) and `scheduler/scheduler_config.json` (a DDPMScheduler; DDIMPipeline converts it
with `DDIMScheduler.from_config`, whose default `set_alpha_to_one=True` is our DDIM's last step).
The scheduler carries our schedule (`diffusers_scheduler.beta_schedule_kwargs`), the
parameterization as `prediction_type`, and our default sampler's spacing and clipping.

Clipping: our samplers re-derive eps_hat from the clipped x0_hat; diffusers' DDIM does the same
only with `pipe(..., use_clipped_model_output=True)` (its DDPM always uses the clipped x0_hat).
Conditional models: a class-conditional UNet keeps its class-embedding table
(`num_class_embeds` = classes + the null class) and an image-conditioned one its extra input
channels (`in_channels` = the data's + the condition's), and `conditioning.json` beside
`model_index.json` records what they mean (`conditioning_file`), so `module_from_pipeline`
rebuilds the same conditional module. diffusers' DDPMPipeline / DDIMPipeline pass no class labels
or condition image, so they cannot sample such a folder themselves (their UNet2DModel can be
called directly: `unet(torch.cat([x_t, cond_image], 1), t, class_labels=labels)`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ddpm_lightning.export.conditioning_file import check_folder_conditioning, write_conditioning
from ddpm_lightning.export.diffusers_scheduler import beta_schedule_kwargs, prediction_type, sampler_kwargs


def check_exportable(module: Any) -> None:
    """Raise ValueError (one line) if `module` has no diffusers pipeline equivalent."""
    from ddpm_lightning.networks.unet import UNet

    if not isinstance(module.network, UNet):
        raise ValueError(
            f"format=diffusers needs a UNet2DModel network (ddpm_lightning.networks.UNet), but this model's network "
            f"is {type(module.network).__name__}; export format=safetensors or onnx instead"
        )
    prediction_type(module.parameterization.name)
    variance = getattr(module.denoiser, "variance", "fixed")
    if variance != "fixed":
        # DDIMPipeline feeds the whole 2C-channel output to DDIMScheduler.step, which has no variance half
        raise ValueError(f"format=diffusers supports a fixed variance only, but this model has variance={variance!r} "
                         "(its network outputs 2C channels); export format=safetensors or onnx instead")
    check_folder_conditioning(module.conditioning, "diffusers")
    check_unet_conditioning(module.network, module.conditioning)


def check_unet_conditioning(network: Any, conditioning: Any) -> None:
    """The UNet's class table and extra channels must be what the conditioning says (an explicit
    network config can disagree with it), or conditioning.json would describe another model."""
    want = {"num_class_embeds": None, "cond_channels": 0, **conditioning.network_keys()}
    have = {"num_class_embeds": network.unet.config.num_class_embeds, "cond_channels": network.cond_channels}
    for key, value in want.items():
        if have[key] != value:
            raise ValueError(f"this model's UNet has {key}={have[key]}, but its conditioning {conditioning.spec()} needs "
                             f"{key}={value}: the checkpoint's network config disagrees with its conditioning; fix one and retrain")


def scheduler_config(module: Any) -> dict[str, Any]:
    """DDPMScheduler arguments for `module`: schedule, prediction type, default sampler's options."""
    sampler, _ = module.make_sampler()
    return {
        **beta_schedule_kwargs(module.process),
        "prediction_type": prediction_type(module.parameterization.name),
        **sampler_kwargs(sampler),
    }


def export_diffusers(module: Any, out: str | Path) -> Path:
    """Write `module` as a DDPMPipeline folder in `out`; returns `out`."""
    from diffusers import DDPMPipeline, DDPMScheduler

    check_exportable(module)
    unet = module.network.unet
    was_training = unet.training
    pipe = DDPMPipeline(unet=unet.eval(), scheduler=DDPMScheduler(**scheduler_config(module)))
    try:
        pipe.save_pretrained(out, safe_serialization=True)
        write_conditioning(module.conditioning, module.network.in_channels, out)
    finally:
        unet.train(was_training)
    return Path(out)
