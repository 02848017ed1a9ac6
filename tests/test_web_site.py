"""build_site and the demo server without a browser: what a site holds, bad model folders, a
missing onnxruntime-web install, and `python -m ddpm_lightning.demo` on a folder that is not a site."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from ddpm_lightning.demo import make_server
from ddpm_lightning.web import PRETRAINED_DIGITS, build_site, is_site
from ddpm_lightning.web.site import MODEL_FILES, ORT_FILES, ORT_VERSION, PAGE_FILES, find_ort_dist

ROOT = Path(__file__).resolve().parents[1]


def has_ort() -> bool:
    try:
        find_ort_dist()
        return True
    except (FileNotFoundError, ValueError):
        return False


needs_ort = pytest.mark.skipif(not has_ort(), reason="onnxruntime-web is not installed: run `npm ci` in the repository")


def test_pin_agrees_with_package_json():
    pins = json.loads((ROOT / "package.json").read_text())["dependencies"]
    lock = json.loads((ROOT / "package-lock.json").read_text())["packages"]["node_modules/onnxruntime-web"]
    assert pins["onnxruntime-web"] == ORT_VERSION == lock["version"]


def test_pretrained_folder_follows_the_contract():
    schedule = json.loads((PRETRAINED_DIGITS / "schedule.json").read_text())
    assert len(schedule["alphas_cumprod"]) == schedule["num_timesteps"] == 1000
    assert schedule["data_shape"] == [1, 16, 16] and schedule["num_classes"] is None
    data = json.loads((PRETRAINED_DIGITS / "data_samples.json").read_text())
    assert len(data["data"]) == data["shape"][0] * 256 and max(map(abs, data["data"])) <= 1.0
    assert (PRETRAINED_DIGITS / "denoiser.onnx").stat().st_size < 8 * 2**20  # a few MB


@needs_ort
def test_build_site_holds_page_runtime_and_model(tmp_path):
    site = build_site(tmp_path / "site", PRETRAINED_DIGITS)
    assert is_site(site)
    for f in (*PAGE_FILES, *MODEL_FILES, *(f"ort/{f}" for f in ORT_FILES)):
        assert (site / f).is_file(), f
    # only what the page loads: no webgl/jsep/jspi builds, no source maps
    assert sorted(p.name for p in (site / "ort").iterdir() if p.name != "LICENSE") == sorted(ORT_FILES)
    # no CDN at run time: every URL the page's code names is relative
    for f in ("index.html", "app.js", "samplers.js", "guidance.js"):
        assert "http://" not in (site / f).read_text() and "https://" not in (site / f).read_text()
    # a second build into the same folder overwrites nothing without overwrite=True
    with pytest.raises(ValueError, match="already holds"):
        build_site(site, PRETRAINED_DIGITS)
    build_site(site, PRETRAINED_DIGITS, overwrite=True)


@needs_ort
def test_build_site_in_place_around_the_model_files(tmp_path):
    model = tmp_path / "export"
    model.mkdir()
    for f in MODEL_FILES:
        (model / f).write_bytes((PRETRAINED_DIGITS / f).read_bytes())
    build_site(model, model)
    assert is_site(model) and (model / "denoiser.onnx").stat().st_size == (PRETRAINED_DIGITS / "denoiser.onnx").stat().st_size


def test_bad_model_folder_is_refused_before_writing(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    (model / "schedule.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="lacks .*denoiser.onnx"):
        build_site(tmp_path / "site", model)
    for f in MODEL_FILES:
        (model / f).write_text("{}")
    with pytest.raises(ValueError, match="lacks keys"):
        build_site(tmp_path / "site", model)
    assert not (tmp_path / "site").exists()


def test_missing_onnxruntime_web_names_the_command(tmp_path, monkeypatch):
    monkeypatch.setattr("ddpm_lightning.web.site.REPO_ROOT", tmp_path)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DDPM_LIGHTNING_ORT_DIR", raising=False)
    with pytest.raises(FileNotFoundError, match=r"npm install onnxruntime-web@1\.31\.1"):
        build_site(tmp_path / "site", PRETRAINED_DIGITS)
    (tmp_path / "package-lock.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match=f"run `npm ci` in {tmp_path}"):
        build_site(tmp_path / "site", PRETRAINED_DIGITS)
    assert not (tmp_path / "site").exists()


@needs_ort
def test_demo_server_serves_the_site_with_wasm_types(tmp_path):
    import threading

    site = build_site(tmp_path / "site", PRETRAINED_DIGITS)
    server = make_server(site)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/"
        with urllib.request.urlopen(url) as r:
            assert b"Generate" in r.read() and r.headers["Cross-Origin-Embedder-Policy"] == "require-corp"
        with urllib.request.urlopen(url + "ort/ort-wasm-simd-threaded.wasm") as r:
            assert r.headers["Content-Type"] == "application/wasm"
        with urllib.request.urlopen(url + "samplers.js") as r:
            assert r.headers["Content-Type"] == "text/javascript"
    finally:
        server.shutdown()
        server.server_close()


def test_demo_refuses_a_folder_that_is_not_a_site(tmp_path, capsys):
    from ddpm_lightning.demo import main

    for args in ([str(tmp_path)], [str(tmp_path), "port=abc"], ["a", "b"], [str(tmp_path), "host=x"]):
        with pytest.raises(SystemExit) as exit_info:
            main(args)
        err = capsys.readouterr().err
        assert exit_info.value.code == 2 and err.count("\n") == 1 and err.startswith("error: "), err
    main_err = subprocess.run([sys.executable, "-m", "ddpm_lightning.demo", str(tmp_path)], capture_output=True, text=True,
                              env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=120)
    assert main_err.returncode == 2 and main_err.stderr.startswith("error: ") and "is not a demo site" in main_err.stderr
