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

Image-conditioned models (`conditioning=image`) are refused for now, in one line, before anything
is written: they export to safetensors only.

GroupNorm is exported by the TorchScript exporter as InstanceNormalization + Mul + Add, not as
GroupNormalization-21, which onnxruntime does not implement (#24538). Models over 2 GB would need
external data; the exporter writes it next to the file only then.

`schedule.json`: T, alphas_cumprod (float64), parameterization, data shape, value range (images
in [-1, 1]), the default sampler spec and its timesteps, the input/output names, and the
conditioning: `num_classes` (None for an unconditional model), `null_class`, `p_uncond` and the
default `guidance_scale` (plus the full spec under `conditioning`).
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
GRAPH_CONDITIONINGS = ("none", "class")  # what the graph has inputs for


def check_onnx_exportable(module: Any, format: str = "onnx") -> None:
    """Raise ValueError (one line) for a model the graph has no inputs for (image conditioning)."""
    kind = getattr(getattr(module, "conditioning", None), "type", "none")
    if kind not in GRAPH_CONDITIONINGS:
        raise ValueError(f"format={format} supports unconditional and class-conditional models, but this model has "
                         f"conditioning type {kind!r}: {kind}-conditioned models export to safetensors only for now (format=safetensors)")


def input_names(module: Any) -> list[str]:
    """x_t and t; a class-conditional model adds class_labels."""
    return ["x_t", "t", *([CLASS_INPUT] if module.conditioning.type == "class" else [])]


def output_names(variance: str) -> list[str]:
    """x0 and eps; a learned variance adds log_var (log Sigma_t) and, for learned_range, var_frac."""
    return ["x0", "eps", *{"fixed": [], "learned": ["log_var"], "learned_range": ["log_var", "var_frac"]}[variance]]


class OnnxDenoiser(nn.Module):
    """(x_t, t float32) -> (x0_hat, eps_hat[, log_var, var_frac]): the module's Denoiser with t
    cast in the graph."""

    def __init__(self, denoiser: nn.Module, num_timesteps: int) -> None:
        super().__init__()
        self.denoiser = denoiser
        self.num_timesteps = num_timesteps
        self.outputs = output_names(getattr(denoiser, "variance", "fixed"))

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, class_labels: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
        t = t.round().clamp(0, self.num_timesteps - 1).to(torch.int64)  # (B,) timesteps
        # the conditional model's cond dict, as training built it (ClassConditioning.split)
        pred = self.denoiser(x_t, t, None if class_labels is None else {"class": class_labels})
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
    inputs = {"x_t": ["batch", *shape], "t": ["batch"], **({CLASS_INPUT: ["batch"]} if classes else {})}
    dtypes = {"x_t": "float32", "t": "float32 (integer timesteps in [0, T))",
              **({CLASS_INPUT: f"int64 (classes in [0, {classes}), {classes} = the null class)"} if classes else {})}
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
        "num_classes": classes,  # None: unconditional (the page then shows no class controls)
        # class-conditional models only: the page's class selector and guidance slider
        **({"null_class": cond.null_class, "p_uncond": cond.p_uncond, "guidance_scale": cond.guidance_scale,
            "conditioning": cond.spec()} if classes else {}),
    }


def export_onnx(module: Any, out: str | Path, opset: int = OPSET) -> Path:
    """Write `denoiser.onnx` and `schedule.json` of `module` in `out`; returns the .onnx path."""
    if module.data_shape is None:
        raise ValueError("the model has no data_shape: pass data_shape= to DiffusionModule before exporting to ONNX")
    check_onnx_exportable(module)
    out = Path(out)
    info = schedule_info(module)
    module = module.to("cpu").float()
    graph = OnnxDenoiser(module.denoiser, module.num_timesteps).eval()
    was_training = module.training
    module.eval()
    x = torch.zeros(2, *module.data_shape)
    t = torch.tensor([0.0, module.num_timesteps - 1.0])
    names = input_names(module)
    # a class and the null class: both rows of the embedding table are traced alike (one Gather)
    args = (x, t, torch.tensor([0, module.conditioning.num_classes])) if CLASS_INPUT in names else (x, t)
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
