"""The demo page in headless Chromium (slow: a model export and a browser start).

A tiny model is exported (ddpm_lightning/export/to_web.py, what format=web writes),
built into a site, served on 127.0.0.1 and driven through the page's test hook `window.ddpmTest`:
DDIM from the test's starting noise equals the Python sampler's result, DDPM runs to the end,
bad inputs give messages. The shipped pretrained digits model is timed (DDIM-50, batch 16) and
screenshotted; with DDPM_WEB_DOCS=1 the screenshot and timing are written to docs/ for the README.
"""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from web_browser import chromium, chromium_path, digits_samples, open_page, serving, tiny_module  # noqa: E402

from ddpm_lightning.noise import fixed_noise  # noqa: E402
from ddpm_lightning.web import PRETRAINED_DIGITS, build_site, find_ort_dist  # noqa: E402
from ddpm_lightning.export.to_web import write_model_dir  # noqa: E402

pytestmark = pytest.mark.slow
DOCS = Path(__file__).resolve().parents[1] / "docs"


@pytest.fixture(scope="module")
def browser():
    chromium_path()
    try:
        find_ort_dist()
    except FileNotFoundError as err:
        pytest.skip(str(err))
    with chromium() as b:
        yield b


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(module, url) of a tiny exported model's site, served for the module's tests."""
    root = tmp_path_factory.mktemp("web")
    module = tiny_module()
    write_model_dir(module, root / "model", digits_samples(4))
    site = build_site(root / "site", root / "model")
    with serving(site) as url:
        yield module, url


def run_page(page, options: dict, noise: torch.Tensor | None = None) -> dict:
    flat = None if noise is None else noise.reshape(-1).tolist()
    return page.evaluate("([o, n]) => window.ddpmTest.generate(o, n)", [options, flat])


def test_ddim_in_the_browser_equals_the_python_sampler(browser, tiny):
    module, url = tiny
    page, ready = open_page(browser, url)
    assert ready["error"] is None, page.console_messages
    assert ready["backend"] in ("WebGPU", "WASM")
    noise = fixed_noise(range(4), module.data_shape, seed=3)
    for steps in (20, 7):
        expected = module.sample(noise=noise, sampler={"name": "ddim", "num_steps": steps, "eta": 0.0}).samples
        result = run_page(page, {"sampler": "ddim", "steps": steps, "eta": 0, "batch": 4}, noise)
        got = torch.tensor(result["samples"]).reshape(expected.shape)
        assert result["timesteps"] == module.make_sampler({"name": "ddim", "num_steps": steps})[0].choose_timesteps(steps).tolist()
        assert expected.std() > 0.1  # the model's output is far from trivial
        assert (got - expected).abs().max() < 1e-3, f"DDIM-{steps}"
        assert result["backend"] == ready["backend"]
    assert ready["backend"] in page.inner_text("#status") and ready["backend"] in page.inner_text("#progress")


def test_ddpm_runs_to_the_end_within_the_data_range(browser, tiny):
    _, url = tiny
    page, ready = open_page(browser, url)
    result = run_page(page, {"sampler": "ddpm", "steps": 25, "batch": 3, "seed": 5})
    assert len(result["stepMs"]) == 25 and result["timesteps"][0] == 999 and result["timesteps"][-1] == 0
    assert all(math.isfinite(v) and -1 <= v <= 1 for v in result["samples"])
    # the seeded noise makes the run reproducible, and another seed another batch
    assert run_page(page, {"sampler": "ddpm", "steps": 25, "batch": 3, "seed": 5})["samples"] == result["samples"]
    assert run_page(page, {"sampler": "ddpm", "steps": 25, "batch": 3, "seed": 6})["samples"] != result["samples"]


def test_generate_button_and_steps_outside_one_to_T_are_refused(browser, tiny):
    _, url = tiny
    page, _ = open_page(browser, url)
    for bad in ("0", "1001", "2.5"):
        page.fill("#steps", bad)
        page.click("#generate")
        assert page.evaluate("document.getElementById('steps').validity.valid") is False
        assert page.inner_text("#progress") == ""  # nothing ran
    page.fill("#steps", "3")
    page.fill("#batch", "2")
    page.click("#generate")
    page.wait_for_function("document.getElementById('progress').textContent.startsWith('step 3/3')", timeout=60_000)


def test_missing_model_files_disable_generate(browser, tiny):
    _, url = tiny
    page, ready = open_page(browser, url, route=lambda p: p.route("**/denoiser.onnx", lambda r: r.fulfill(status=404, body="")))
    assert "denoiser.onnx" in ready["error"]
    assert page.is_disabled("#generate") and page.is_visible("#error")
    assert "denoiser.onnx" in page.inner_text("#error")


def test_onnxruntime_failing_to_load_shows_an_error_line(browser, tiny):
    _, url = tiny
    page, ready = open_page(browser, url, route=lambda p: p.route("**/ort/*.mjs", lambda r: r.abort()))
    assert ready["error"] and "onnxruntime-web" in ready["error"]
    assert page.is_visible("#error") and page.is_disabled("#generate")
    assert "Forward process" in page.inner_text("body")  # the page, not a blank one


def test_pretrained_digits_ddim50_batch16_timing_and_screenshot(browser, tmp_path):
    site = build_site(tmp_path / "site", PRETRAINED_DIGITS)
    with serving(site) as url:
        page, ready = open_page(browser, url)
        assert ready["error"] is None
        result = run_page(page, {"sampler": "ddim", "steps": 50, "eta": 0, "batch": 16, "seed": 0})
        assert all(math.isfinite(v) and -1 <= v <= 1 for v in result["samples"])
        page.evaluate("document.getElementById('forward-t').value = 150; document.getElementById('forward-t').dispatchEvent(new Event('input'))")
        shot = tmp_path / "web_demo.png"
        page.screenshot(path=str(shot), full_page=True)
    timing = {"what": "DDIM-50, batch 16, pretrained digits, headless Chromium", "backend": result["backend"],
              "total_s": round(result["totalMs"] / 1000, 2), "ms_per_step": round(result["totalMs"] / 50, 1),
              "cpu_count": os.cpu_count(), "load_avg_1min": round(os.getloadavg()[0], 1)}
    print("\nweb demo timing:", json.dumps(timing))
    assert shot.stat().st_size > 10_000
    if os.environ.get("DDPM_WEB_DOCS") == "1":
        (DOCS / "web_demo.png").write_bytes(shot.read_bytes())
        (DOCS / "web_demo_timing.json").write_text(json.dumps(timing, indent=1) + "\n")
