"""Export the Denoiser (network + parameterization) to ONNX, with the schedule as JSON, so a
sampler written in another language (onnxruntime-web, issue 15) needs nothing else.

`denoiser.onnx` (opset 17, fp32, one file):

* inputs `x_t` float32 (batch, *data_shape) and `t` float32 (batch,): integer timesteps in
  [0, T) given as floats, because int64 inputs are poorly supported by the WebGL/WebGPU backends
  (onnxruntime #9724, #14589); the graph rounds and casts t itself;
* a class-conditional model (`conditioning=class`) has a third input `class_labels` int64
  (batch,): labels in [0, num_classes], the null class `num_classes` included, so the caller runs
  classifier-free guidance itself (one batch of 2B rows: the labels, then the null class; then
  guided = uncond + w (cond - uncond) on both outputs, Ho & Salimans 2022 eq. 6, as
  `ddpm_lightning.guidance` does). int64 here, unlike t: the labels only index the embedding
  table (a Gather), which onnxruntime-web's WASM and WebGPU backends take with int64 indices;
* outputs `x0` and `eps` (batch, *data_shape): the parameterization is inside the graph, so the
  caller steps with (x0_hat, eps_hat) whatever the model predicts; a model with a learned
  variance also outputs `log_var` (log Sigma_t) and, for `learned_range`, `var_frac` (its eq. 15
  fraction, for respaced sampling).

* an image-conditioned model (`conditioning=image`) has a third input `cond_image` float32
  (batch, cond_channels, H, W): the task's condition in [-1, 1] (`ImageConditioning.condition_for`:
  super-resolution's low-resolution image already resized to H x W, inpainting's masked image
  and mask, colorization's luma), concatenated to x_t on the channels inside the graph (SR3 /
  Palette). Its null condition is the all-zero image, for guidance as above (meaningful only
  for a model trained with p_uncond > 0). The web page has no input for it (`format=web` refuses).

Other conditioning types (a subclass of one's own) are refused in one line, before anything is
written: they export to safetensors only.

GroupNorm is exported by the TorchScript exporter as InstanceNormalization + Mul + Add, not as
GroupNormalization-21, which onnxruntime does not implement (#24538). Models over 2 GB would need
external data; the exporter writes it next to the file only then.

`schedule.json`: T, alphas_cumprod (float64), parameterization, data shape, value range (images
in [-1, 1]), the default sampler spec and its timesteps, the input/output names, and the
conditioning: `num_classes` (None for an unconditional or image-conditioned model), `null_class`,
`p_uncond` and the default `guidance_scale` (plus the full spec under `conditioning`); for an
image-conditioned model `cond_channels`, `task` and `null_cond_image` (0.0: all zeros) instead of
`null_class`.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

ONNX_FILE = "denoiser.onnx"
SCHEDULE_FILE = "schedule.json"
OPSET = 17  # >= 17: LayerNormalization; below 18, so no GroupNormalization op can appear
CLASS_INPUT = "class_labels"
IMAGE_INPUT = "cond_image"
# the graph's condition input of each conditioning type, and the key of the cond dict it fills
COND_INPUTS = {"none": None, "class": (CLASS_INPUT, "class"), "image": (IMAGE_INPUT, "image")}
WEB_CONDITIONINGS = ("none", "class")  # what the page (ddpm_lightning/web) has controls for


def check_onnx_exportable(module: Any, format: str = "onnx") -> None:
    """Raise ValueError (one line) for a model the graph (or, format=web, the page) has no inputs for."""
    cond = getattr(module, "conditioning", None)
    kind = getattr(cond, "type", "none")
    if kind not in COND_INPUTS:
        raise ValueError(f"format={format} carries conditioning types {list(COND_INPUTS)}, but this model's is {kind!r} "
                         f"({type(cond).__name__}); export format=safetensors instead")
    if format == "web" and kind not in WEB_CONDITIONINGS:
        raise ValueError(f"format=web: the browser page has no way to give a conditioning image, and this model is "
                         f"{kind}-conditioned ({getattr(cond, 'task', kind)}); export format=onnx (a cond_image input) or safetensors instead")


def input_names(module: Any) -> list[str]:
    """x_t and t; a class-conditional model adds class_labels, an image-conditioned one cond_image."""
    extra = COND_INPUTS[module.conditioning.type]
    return ["x_t", "t", *([extra[0]] if extra else [])]


def output_names(variance: str) -> list[str]:
    """x0 and eps; a learned variance adds log_var (log Sigma_t) and, for learned_range, var_frac."""
    return ["x0", "eps", *{"fixed": [], "learned": ["log_var"], "learned_range": ["log_var", "var_frac"]}[variance]]


class OnnxDenoiser(nn.Module):
    """(x_t, t float32) -> (x0_hat, eps_hat[, log_var, var_frac]): the module's Denoiser with t
    cast in the graph."""

    def __init__(self, denoiser: nn.Module, num_timesteps: int, cond_key: str | None = None) -> None:
        super().__init__()
        self.denoiser = denoiser
        self.num_timesteps = num_timesteps
        self.cond_key = cond_key  # "class" or "image": the cond dict key of the third input
        self.outputs = output_names(getattr(denoiser, "variance", "fixed"))

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
        t = t.round().clamp(0, self.num_timesteps - 1).to(torch.int64)  # (B,) timesteps
        # the conditional model's cond dict, as training built it (ClassConditioning.split:
        # (B,) labels; ImageConditioning.split: (B, c, H, W), concatenated to x_t by the UNet)
        pred = self.denoiser(x_t, t, None if cond is None else {self.cond_key: cond})
        return tuple(getattr(pred, name) for name in self.outputs)


def schedule_info(module: Any) -> dict[str, Any]:
    """What a sampler outside PyTorch needs besides the graph."""
    sampler, num_steps = module.make_sampler()
    timesteps = sampler.set_timesteps(num_steps)
    spec = dict(module.hparams.sampler)
    spec["clip_denoised"] = bool(sampler.clip_denoised)
    shape = list(module.data_shape)
    cond = module.conditioning
    classes = cond.num_classes if cond.type == "class" else None
    inputs = {"x_t": ["batch", *shape], "t": ["batch"]}
    dtypes = {"x_t": "float32", "t": "float32 (integer timesteps in [0, T))"}
    extra: dict[str, Any] = {}
    if classes:
        inputs[CLASS_INPUT] = ["batch"]
        dtypes[CLASS_INPUT] = f"int64 (classes in [0, {classes}), {classes} = the null class)"
        extra = {"null_class": cond.null_class}
    elif cond.type == "image":
        c = cond.cond_channels
        inputs[IMAGE_INPUT] = ["batch", c, *shape[1:]]
        dtypes[IMAGE_INPUT] = (f"float32 in [-1, 1] (the {cond.task} condition of the target, {c} channel(s) at the data's size, "
                               "concatenated to x_t on the channels; all zeros = the null condition)")
        extra = {"cond_channels": c, "task": cond.task, "null_cond_image": 0.0}
    return {
        "format": "ddpm_lightning.onnx",
        "version": 1,
        "model": ONNX_FILE,
        "inputs": inputs,
        "input_dtypes": dtypes,
        "outputs": output_names(getattr(module.denoiser, "variance", "fixed")),
        "variance": getattr(module.denoiser, "variance", "fixed"),
        "num_timesteps": module.num_timesteps,
        "alphas_cumprod": module.process.alphas_cumprod_f64.tolist(),
        "schedule": dict(module.process.config),
        "parameterization": module.parameterization.name,
        "data_shape": shape,
        "value_range": [-1.0, 1.0] if len(shape) == 3 else None,
        "sampler": spec,
        "sampler_timesteps": timesteps.tolist(),
        # what the browser demo reads (ddpm_lightning/web): clipping and its default sampler
        "clip_denoised": spec["clip_denoised"],
        "default_sampler": {"name": spec.get("name", "ddpm"), "num_steps": num_steps, "eta": float(spec.get("eta") or 0.0)},
        "num_classes": classes,  # None: no class input (the page then shows no class controls)
        # conditional models only: the page's class selector and guidance slider (class labels)
        **({**extra, "p_uncond": cond.p_uncond, "guidance_scale": cond.guidance_scale,
            "conditioning": cond.spec()} if cond.is_conditional else {}),
    }


def export_onnx(module: Any, out: str | Path, opset: int = OPSET) -> Path:
    """Write `denoiser.onnx` and `schedule.json` of `module` in `out`; returns the .onnx path."""
    if module.data_shape is None:
        raise ValueError("the model has no data_shape: pass data_shape= to DiffusionModule before exporting to ONNX")
    check_onnx_exportable(module)
    out = Path(out)
    info = schedule_info(module)
    module = module.to("cpu").float()
    kind = module.conditioning.type
    graph = OnnxDenoiser(module.denoiser, module.num_timesteps, COND_INPUTS[kind][1] if COND_INPUTS[kind] else None).eval()
    was_training = module.training
    module.eval()
    x = torch.zeros(2, *module.data_shape)
    t = torch.tensor([0.0, module.num_timesteps - 1.0])
    names = input_names(module)
    args: tuple[torch.Tensor, ...] = (x, t)
    if kind == "class":  # a class and the null class: both rows of the embedding table are traced alike (one Gather)
        args = (x, t, torch.tensor([0, module.conditioning.num_classes]))
    elif kind == "image":  # values do not steer the trace: the condition is only concatenated
        args = (x, t, module.conditioning.example(2, tuple(module.data_shape))["image"])
    out.mkdir(parents=True, exist_ok=True)
    path = out / ONNX_FILE
    try:
        with warnings.catch_warnings(), torch.no_grad():
            # the tracer warns about shape-dependent Python branches in diffusers (batch >= 64
            # takes a .contiguous() copy): they change no value, the batch axis stays dynamic
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            torch.onnx.export(
                graph, args, str(path), dynamo=False, opset_version=opset,
                input_names=names, output_names=graph.outputs,
                dynamic_axes={name: {0: "batch"} for name in (*names, *graph.outputs)},
            )
    finally:
        module.train(was_training)
    (out / SCHEDULE_FILE).write_text(json.dumps(info, indent=1) + "\n")
    return path
