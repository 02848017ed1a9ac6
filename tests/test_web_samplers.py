"""The browser's JS samplers and guidance under Node (`node --test tests/js/`), against the Python samplers'
numbers in tests/fixtures/web_samplers.json, which must be what the Python code writes now."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from web_sampler_numbers import FIXTURE, fixture_text  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def test_fixture_is_what_python_writes_now():
    assert FIXTURE.read_text() == fixture_text(), "stale fixture: run `python tests/web_sampler_numbers.py`"


def test_js_samplers_under_node():
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed (Node 20 runs the JS sampler tests)")
    result = subprocess.run([node, "--test", "tests/js/"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "# fail 0" in result.stdout and "# pass 8" in result.stdout
