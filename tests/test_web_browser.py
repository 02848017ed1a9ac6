"""The demo page in headless Chromium (slow: a model export and a browser start).

A tiny model is exported (ddpm_lightning/export/to_web.py, what format=web writes),
built into a site, served on 127.0.0.1 and driven through the page's test hook `window.ddpmTest`:
DDIM from the test's starting noise equals the Python sampler's result, DDPM runs to the end,
bad inputs give messages. A tiny class-conditional model: the page's guided DDIM (a class, or
"all", at several w) equals Python's `module.sample(cond=..., guidance_scale=w)`. The shipped
pretrained digits model is timed (DDIM-50, batch 16) and screenshotted; with DDPM_WEB_DOCS=1 the
screenshot and timing are written to docs/ for the README.
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


CLASS_COND = {"type": "class", "num_classes": 4, "p_uncond": 0.1, "guidance_scale": 2.0}


@pytest.fixture(scope="module")
def tiny_class(tmp_path_factory):
    """(module, url) of a tiny class-conditional model's site (4 classes, null class 4)."""
    root = tmp_path_factory.mktemp("web_class")
    module = tiny_module(seed=1, conditioning=CLASS_COND)
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
    assert page.is_hidden("#class-controls")  # an unconditional model: no class, no guidance
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


def test_guided_ddim_in_the_browser_equals_python_classifier_free_guidance(browser, tiny_class):
    module, url = tiny_class
    page, ready = open_page(browser, url)
    assert ready["error"] is None, page.console_messages
    # the controls: classes 0..3 and "all" (not the null class 4), w from the model's default
    assert page.is_visible("#class-controls")
    assert page.eval_on_selector_all("#class option", "os => os.map(o => o.value)") == ["0", "1", "2", "3", "all"]
    assert page.input_value("#guidance") == "2" and page.get_attribute("#guidance", "max") == "8"
    noise = fixed_noise(range(4), module.data_shape, seed=3)
    sampler = {"name": "ddim", "num_steps": 10, "eta": 0.0}
    results = {}
    for label, w in [(3, 2.0), ("all", 2.0), (1, 0.0), (1, 1.0), (0, 5.5)]:
        cond = {"class": label}
        expected = module.sample(noise=noise, sampler=sampler, cond=cond, guidance_scale=w).samples
        result = run_page(page, {"sampler": "ddim", "steps": 10, "eta": 0, "batch": 4, "label": label, "guidance": w}, noise)
        got = torch.tensor(result["samples"]).reshape(expected.shape)
        assert result["labels"] == module.conditioning.prepare(cond, 4)["class"].tolist() and result["guidance"] == w
        err = (got - expected).abs().max().item()
        print(f"\nclass={label} w={w}: max |page - python| = {err:.2e}")
        assert err < 1e-3, f"class={label} w={w}: {err}"
        results[(label, w)] = got
    # the label and the guidance scale reach the samples
    assert (results[(3, 2.0)] - results[("all", 2.0)]).abs().max() > 1e-2
    assert (results[(1, 0.0)] - results[(1, 1.0)]).abs().max() > 1e-2
    # a class outside [0, K) (the null class too) is refused, with a message and nothing run
    with pytest.raises(Exception, match=r"class must be an integer in \[0, 4\)"):
        run_page(page, {"sampler": "ddim", "steps": 3, "batch": 2, "label": 4})
    with pytest.raises(Exception, match="guidance scale must be a number >= 0"):
        run_page(page, {"sampler": "ddim", "steps": 3, "batch": 2, "label": 0, "guidance": -1})


def test_class_all_button_draws_one_row_per_class(browser, tiny_class):
    _, url = tiny_class
    page, _ = open_page(browser, url)
    page.select_option("#class", "all")
    page.fill("#steps", "2")
    page.fill("#batch", "8")
    page.click("#generate")
    page.wait_for_function("document.getElementById('progress').textContent.startsWith('step 2/2')", timeout=60_000)
    page.wait_for_function("!window.ddpmTest.state().running", timeout=60_000)
    # 8 samples of 4 classes: 4 rows (one per class) of 2 images of 16 px with 1 px gaps
    size = page.evaluate("(() => { const c = document.getElementById('xt-canvas'); return [c.width, c.height]; })()")
    assert size == [2 * 17 - 1, 4 * 17 - 1]


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
