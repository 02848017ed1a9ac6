"""Take a model anywhere: export to a diffusers pipeline folder, safetensors or ONNX, and import
a diffusers pipeline folder.

* `export(ckpt, format, out)`: the command-line export (`python -m ddpm_lightning.export`);
* `export_diffusers(module, out)`, `export_safetensors(checkpoint, out)`, `export_onnx(module, out)`:
  one format each (`to_diffusers.py`, `to_safetensors.py`, `to_onnx.py`);
* `module_from_pipeline(dir)`: a diffusers DDPM/DDIM pipeline folder as a `DiffusionModule`.

Conditional models export to every format (`conditioning_file.py`: the record a diffusers folder
carries); `format=web` refuses an image-conditioned one (the page cannot give the image).
"""

from ddpm_lightning.export.cli import FORMATS, export
from ddpm_lightning.export.pipeline import module_from_pipeline
from ddpm_lightning.export.to_diffusers import export_diffusers
from ddpm_lightning.export.to_onnx import export_onnx
from ddpm_lightning.export.to_safetensors import export_safetensors, read_pretrained

__all__ = ["FORMATS", "export", "export_diffusers", "export_onnx", "export_safetensors", "module_from_pipeline", "read_pretrained"]
