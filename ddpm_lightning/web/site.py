"""`build_site(out_dir, model_dir)`: the browser demo as a self-contained static folder.

It holds the page (index.html, app.js, samplers.js, guidance.js, style.css from this package), the model
folder of the export (denoiser.onnx, schedule.json, data_samples.json; see the export's contract)
and onnxruntime-web's files in `ort/`: only the two builds the page loads (the WebGPU build,
`onnxruntime-web/webgpu`, and the WASM build, `onnxruntime-web/wasm`) with the .mjs/.wasm files
each of them fetches. No CDN: the folder works with no network, from any static server.

Where onnxruntime-web comes from: the npm package, pinned in the repository's package.json and
package-lock.json and installed with `npm ci` into the repository's node_modules/. An installed
(pip) copy of ddpm_lightning has no node_modules beside it, so the dist folder is looked up in
order: $DDPM_LIGHTNING_ORT_DIR (a dist folder), the repository's node_modules (source checkout or
editable install), then ./node_modules of the current directory (`npm install
onnxruntime-web@<pin>` there). We don't vendor the ~45 MB of wasm into the Python package.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
REPO_ROOT = PACKAGE_DIR.parents[1]
ORT_VERSION = "1.31.1"  # the pin of package.json (tests/test_web_site.py checks they agree)
PAGE_FILES = ("index.html", "app.js", "samplers.js", "guidance.js", "style.css")
MODEL_FILES = ("denoiser.onnx", "schedule.json")  # the export (export/to_onnx.py)
OPTIONAL_FILES = ("data_samples.json",)  # real images for the forward view (the page says when absent)
# the two builds app.js imports, and what each fetches (grep their code for "ort-wasm")
ORT_FILES = (
    "ort.wasm.min.mjs", "ort-wasm-simd-threaded.mjs", "ort-wasm-simd-threaded.wasm",
    "ort.webgpu.min.mjs", "ort-wasm-simd-threaded.asyncify.mjs", "ort-wasm-simd-threaded.asyncify.wasm",
)
PAGE_INPUTS = ("x_t", "t", "class_labels")  # what app.js feeds the graph
SCHEDULE_KEYS = ("num_timesteps", "alphas_cumprod", "data_shape", "value_range", "clip_denoised")


def install_hint() -> str:
    if (REPO_ROOT / "package-lock.json").is_file():
        return f"run `npm ci` in {REPO_ROOT}"
    return f"run `npm install onnxruntime-web@{ORT_VERSION}` in the current directory"


def find_ort_dist() -> Path:
    """The dist/ folder of onnxruntime-web (see the module docstring for the search order)."""
    env = os.environ.get("DDPM_LIGHTNING_ORT_DIR")
    candidates = [Path(env)] if env else []
    candidates += [root / "node_modules" / "onnxruntime-web" / "dist" for root in (REPO_ROOT, Path.cwd())]
    for dist in candidates:
        if all((dist / f).is_file() for f in ORT_FILES):
            manifest = dist.parent / "package.json"
            version = json.loads(manifest.read_text()).get("version") if manifest.is_file() else ORT_VERSION
            if version != ORT_VERSION:
                raise ValueError(f"onnxruntime-web {version} found in {dist.parent}, but the page is pinned to {ORT_VERSION}: {install_hint()}")
            return dist
    raise FileNotFoundError(f"onnxruntime-web {ORT_VERSION} is not installed (node_modules is missing): {install_hint()}")


def check_model_dir(model_dir: Path) -> dict:
    """The export folder's schedule.json, after checking the folder holds the contract's files."""
    missing = [f for f in MODEL_FILES if not (model_dir / f).is_file()]
    if missing:
        raise FileNotFoundError(f"model folder {str(model_dir)!r} lacks {missing}; it needs {list(MODEL_FILES)} (python -m ddpm_lightning.export ... format=onnx)")
    try:
        schedule = json.loads((model_dir / "schedule.json").read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{model_dir / 'schedule.json'} is not JSON: {err}") from None
    absent = [k for k in SCHEDULE_KEYS if k not in schedule]
    if absent:
        raise ValueError(f"{model_dir / 'schedule.json'} lacks keys {absent}; it needs {list(SCHEDULE_KEYS)}")
    unknown = sorted(set(schedule.get("inputs", {})) - set(PAGE_INPUTS))
    if unknown:  # e.g. an image-conditioned model's cond_image: the page has no control to give it
        raise ValueError(f"{model_dir / 'schedule.json'}: the model takes inputs {unknown} the page cannot give (it gives {list(PAGE_INPUTS)}); "
                         "sample this model in Python (format=onnx or safetensors)")
    if len(schedule["alphas_cumprod"]) != schedule["num_timesteps"]:
        raise ValueError(f"schedule.json has {len(schedule['alphas_cumprod'])} alphas_cumprod for num_timesteps={schedule['num_timesteps']}")
    return schedule


def build_site(out_dir: str | Path, model_dir: str | Path, overwrite: bool = False) -> Path:
    """Write the static site into `out_dir` (model_dir may be out_dir itself: the export then
    adds the page around its model files). Everything is checked before anything is written;
    files of an earlier site are replaced only with overwrite=True."""
    out, model_dir = Path(out_dir), Path(model_dir)
    check_model_dir(model_dir)
    dist = find_ort_dist()
    in_place = out.resolve() == model_dir.resolve()
    targets = [out / f for f in PAGE_FILES] + [out / "ort" / f for f in ORT_FILES]
    targets += [] if in_place else [out / f for f in MODEL_FILES]
    existing = [str(p) for p in targets if p.exists()]
    if existing and not overwrite:
        raise ValueError(f"{str(out)!r} already holds {existing[0]} (and {len(existing) - 1} more of the site's files); choose an empty out folder or pass overwrite=True")
    (out / "ort").mkdir(parents=True, exist_ok=True)
    for f in PAGE_FILES:
        shutil.copyfile(PACKAGE_DIR / f, out / f)
    for f in ORT_FILES:
        shutil.copyfile(dist / f, out / "ort" / f)
    license_file = dist.parent / "LICENSE"
    if license_file.is_file():
        shutil.copyfile(license_file, out / "ort" / "LICENSE")
    if not in_place:
        for f in MODEL_FILES + tuple(f for f in OPTIONAL_FILES if (model_dir / f).is_file()):
            shutil.copyfile(model_dir / f, out / f)
    return out


def is_site(path: Path) -> bool:
    """Whether `path` looks like a folder build_site wrote."""
    return all((path / f).is_file() for f in ("index.html", "app.js", "samplers.js"))
