"""Helpers of the browser tests: a tiny exported model, a served site, headless Chromium (Debian's
`chromium` driven by Playwright for Python with `executable_path`; `playwright install` is never
used)."""

from __future__ import annotations

import shutil
import threading
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

TINY_UNET = {
    "_target_": "ddpm_lightning.networks.UNet", "in_channels": None, "out_channels": None, "sample_size": None,
    "block_out_channels": [16, 16, 32], "layers_per_block": 1, "attention_head_dim": 8, "norm_num_groups": 8,
    # the attention block is kept on purpose: MultiHeadAttention has failed in JS runtimes (diffusers.js #13)
    "down_block_types": ["DownBlock2D", "AttnDownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "AttnUpBlock2D", "UpBlock2D"],
}


def chromium_path() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        pytest.skip("Debian's chromium is not installed (apt-get install -y chromium; .ci/run does it)")
    return path


def tiny_module(seed: int = 0, conditioning: dict | None = None):
    """A small untrained DiffusionModule for (1, 16, 16) digits (seeded init); `conditioning`
    (e.g. {"type": "class", "num_classes": 4}) makes it conditional, its UNet with a class embedding."""
    from ddpm_lightning.module import DiffusionModule

    torch.manual_seed(seed)
    network = {**TINY_UNET, "num_class_embeds": None} if conditioning else TINY_UNET
    module = DiffusionModule(network, data_shape=(1, 16, 16), sampler={"name": "ddim", "num_steps": 50, "eta": 0.0},
                             conditioning=conditioning)
    return module.eval()


def digits_samples(n: int = 8) -> torch.Tensor:
    from ddpm_lightning.data import DigitsDataModule

    dm = DigitsDataModule(image_size=16)
    dm.setup("fit")
    return dm.real_samples(n, "train")


@contextmanager
def serving(site: Path):
    """The demo's own server for `site` on a free 127.0.0.1 port, in a thread: yields the URL."""
    from ddpm_lightning.demo import make_server

    server = make_server(site, port=0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


@contextmanager
def chromium():
    """A headless Chromium browser (Playwright sync API)."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright for Python is not installed (pip install -e '.[test]')")
    executable = chromium_path()
    with sync_api.sync_playwright() as p:
        # root in CI containers: Chromium's sandbox needs user namespaces it does not have there
        browser = p.chromium.launch(executable_path=executable, headless=True, args=["--no-sandbox"])
        try:
            yield browser
        finally:
            browser.close()


def open_page(browser, url: str, route=None, timeout_s: float = 120):
    """A page at `url`, after the app's start-up finished (ddpmTest.ready resolved)."""
    page = browser.new_page(viewport={"width": 1200, "height": 1100})
    messages: list[str] = []
    page.on("console", lambda m: messages.append(f"{m.type}: {m.text}"))
    page.on("pageerror", lambda e: messages.append(f"pageerror: {e}"))
    if route is not None:
        route(page)
    page.goto(url)
    page.wait_for_function("window.ddpmTest !== undefined", timeout=timeout_s * 1000)
    ready = page.evaluate("window.ddpmTest.ready")
    page.console_messages = messages
    return page, ready
