"""The model in a web page: DDPM and DDIM sampling in the browser (onnxruntime-web, WebGPU with a
WASM fallback). `build_site(out_dir, model_dir)` writes the static site; `python -m
ddpm_lightning.demo DIR` serves it; `pretrained/digits/` is a small shipped model folder."""

from pathlib import Path

from ddpm_lightning.web.site import build_site, find_ort_dist, is_site

PRETRAINED_DIGITS = Path(__file__).resolve().parent / "pretrained" / "digits"

__all__ = ["PRETRAINED_DIGITS", "build_site", "find_ort_dist", "is_site"]
