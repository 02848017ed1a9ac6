"""STAND-IN for issue 14's exporter (`ddpm_lightning.export`), used only by the web tests and to
make the shipped pretrained folder: writes a model folder in the layout of
/work/notes/ONNX_CONTRACT.md (model.onnx with inputs x_t, t float32 and outputs x0, eps;
schedule.json; data_samples.json). The real exporter replaces this file when the branches merge;
keep it tiny."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch
from torch import nn


class _X0Eps(nn.Module):
    """The Denoiser as the contract's graph: float32 t in, cast to int64 inside the graph (WebGPU
    handles int64 inputs poorly, onnxruntime #9724), (x0_hat unclipped, eps_hat) out."""

    def __init__(self, denoiser: nn.Module) -> None:
        super().__init__()
        self.denoiser = denoiser

    def forward(self, x_t: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pred = self.denoiser(x_t, t.round().to(torch.long))
        return pred.x0, pred.eps


def write_model_dir(module, out_dir: str | Path, data_samples: torch.Tensor) -> Path:
    """Export `module` (a DiffusionModule on the CPU) and `data_samples` ((N, C, H, W) in [-1, 1])
    to `out_dir` in the contract's layout."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    shape = tuple(module.data_shape)
    sampler, num_steps = module.make_sampler()
    spec = dict(module.hparams.sampler)
    x, t = torch.zeros(2, *shape), torch.tensor([999.0, 0.0])
    axes = {name: {0: "batch"} for name in ("x_t", "t", "x0", "eps")}
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tracer's notes on diffusers' shape asserts
        torch.onnx.export(_X0Eps(module.denoiser).eval(), (x, t), str(out / "model.onnx"), input_names=["x_t", "t"],
                          output_names=["x0", "eps"], dynamic_axes=axes, opset_version=17, dynamo=False)
    schedule = {
        "num_timesteps": module.process.num_timesteps,
        "alphas_cumprod": module.process.alphas_cumprod_f64.tolist(),
        "parameterization": module.parameterization.name,
        "data_shape": list(shape),
        "value_range": [-1.0, 1.0],
        "clip_denoised": bool(sampler.clip_denoised),
        "default_sampler": {"name": spec.get("name", "ddpm"), "num_steps": num_steps, "eta": float(spec.get("eta", 0.0))},
        "num_classes": None,
    }
    (out / "schedule.json").write_text(json.dumps(schedule) + "\n")
    samples = data_samples.float().clamp(-1, 1)
    (out / "data_samples.json").write_text(json.dumps({"shape": list(samples.shape), "data": [round(v, 4) for v in samples.reshape(-1).tolist()]}) + "\n")
    return out


def main(argv: list[str] | None = None) -> None:
    """`python -m ddpm_lightning.web.fixture CKPT OUT`: a digits checkpoint's EMA weights (what
    `load_from_checkpoint` gives) and 16 real training digits, exported to OUT."""
    import sys

    from ddpm_lightning.data import DigitsDataModule
    from ddpm_lightning.errors import one_line_errors
    from ddpm_lightning.sample import load_module

    with one_line_errors():
        args = sys.argv[1:] if argv is None else argv
        if len(args) != 2:
            raise ValueError(f"usage: python -m ddpm_lightning.web.fixture CKPT OUT; got {args}")
        module = load_module(args[0], device="cpu")
        data = DigitsDataModule(image_size=module.data_shape[-1])
        data.setup("fit")
        print(write_model_dir(module, args[1], data.real_samples(16, "train")))


if __name__ == "__main__":
    main()
