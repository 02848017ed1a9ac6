"""The benchmark scripts run at `--smoke` size on the CPU and produce their table (no timing
assertions: timings depend on the machine and its load)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "benchmarks"
EXPECTED = {
    "memory",
    "training overhead",
    "vs denoising-diffusion-pytorch",
    "sampling",
    "sampler cost",
    "host-device sync",
    "host malloc",
    "GPU fast path",
    "MFU",
    "goal",
    "default run",
}


def run_script(name: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_MODE": "offline", "PYTHONWARNINGS": "ignore"}
    return subprocess.run(
        [sys.executable, str(BENCHMARKS / name), *args],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout,
    )


def test_run_all_smoke_prints_and_writes_every_table(tmp_path):
    out_json, out_md = tmp_path / "bench.json", tmp_path / "bench.md"
    proc = run_script("run_all.py", "--smoke", "--json", str(out_json), "--markdown", str(out_md))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "## All benchmarks" in proc.stdout
    assert "| benchmark | case | ours | reference | unit | ratio | goal | met | note |" in proc.stdout

    record = json.loads(out_json.read_text())
    assert record["environment"]["torch"]
    benchmarks = {row["benchmark"] for row in record["rows"]}
    assert EXPECTED <= benchmarks, EXPECTED - benchmarks
    for row in record["rows"]:
        if row["goal"] and row["ratio"] is not None:
            assert row["met"] in (True, False), row
    # CPU: the GPU-only rows say so instead of inventing a number
    gpu_rows = [r for r in record["rows"] if r["benchmark"] == "GPU fast path"]
    assert gpu_rows and all(r["ours"] is None and "n/a" in r["note"] for r in gpu_rows)
    # the sampling comparison really compares the same computation
    sampling = [r for r in record["rows"] if r["benchmark"] == "sampling"]
    assert len(sampling) == 2 and all("max |diff|" in r["note"] for r in sampling)
    assert out_md.read_text().startswith("## All benchmarks")


def test_a_script_runs_alone_and_writes_json(tmp_path):
    out = tmp_path / "sync.json"
    proc = run_script("sync_audit.py", "--smoke", "--json", str(out))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "## Host-device synchronisation in the training step" in proc.stdout
    (row,) = json.loads(out.read_text())["rows"]
    assert row["benchmark"] == "host-device sync" and row["unit"] == "per step"


def test_sampler_quality_smoke_writes_the_table_and_the_plot(tmp_path):
    out_md, plot = tmp_path / "quality.md", tmp_path / "quality.png"
    proc = run_script("sampler_quality.py", "--smoke", "--markdown", str(out_md), "--plot", str(plot), timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    table = out_md.read_text()
    for case in ("ddpm @ 20 NFE", "heun karras @ 9 NFE", "dpmpp_2m karras @ 10 NFE", "euler_ancestral karras @ 5 NFE",
                 "dpmpp_2m_sde karras @ 5 NFE", "best sampler at <= 20 NFE"):
        assert case in table, case
    assert plot.stat().st_size > 1000 and plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_default_study_smoke_scores_each_row_against_the_floor(tmp_path):
    out = tmp_path / "study.json"
    proc = run_script("default_study.py", "--smoke", "--rows", "baseline,linear_epsilon", "--results-json", str(out), timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = json.loads(out.read_text())
    assert list(results) == ["baseline", "linear_epsilon"]
    assert results["linear_epsilon"]["overrides"] == ["schedule=linear", "parameterization=epsilon", "loss=mse"]
    assert results["baseline"]["overrides"] == ["loss=mse"]  # the study's reference: cosine + v, plain MSE
    for r in results.values():
        # the floor is a real-vs-real distance (> 0), the shares a distribution over the ten classes
        assert r["floor"] > 0 and abs(r["fid_ratio"] - r["fid"] / r["floor"]) < 1e-9
        assert abs(sum(r["class_shares"]) - 1) < 1e-3 and 0 <= r["class_entropy"] <= 1
        assert 0 <= r["confident"] <= 1 and r["real_confident"] > 0.5 and r["steps"] == 4
    bad = run_script("default_study.py", "--smoke", "--rows", "baseline,nope")
    assert bad.returncode != 0 and "unknown rows ['nope']" in bad.stderr


def test_default_study_curve_scores_the_checkpoint_at_each_step(tmp_path):
    out = tmp_path / "curve.json"
    proc = run_script("default_study.py", "--smoke", "--rows", "baseline", "--curve", "2,4", "--results-json", str(out), timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    curve = json.loads(out.read_text())["baseline"]["curve"]
    assert list(curve) == ["2", "4"] and [c["steps"] for c in curve.values()] == [2, 4]
    assert 0 < curve["2"]["wall_s"] <= curve["4"]["wall_s"]
    # the last point is last.ckpt's weights: the same samples, the same scores
    assert curve["4"]["fid"] == pytest.approx(json.loads(out.read_text())["baseline"]["fid"], rel=1e-6)
    bad = run_script("default_study.py", "--smoke", "--rows", "baseline", "--curve", "3")
    assert bad.returncode != 0 and "multiple of row baseline's validation interval (trainer.val_check_interval), 2" in bad.stderr
    # the interval is the row's composed config's, not a constant: 500 by default, refused before any row trains
    bad = run_script("default_study.py", "--rows", "baseline", "--curve", "750")
    assert bad.returncode != 0 and "validation interval (trainer.val_check_interval), 500" in bad.stderr
    bad = run_script("default_study.py", "--curve", "500,x")
    assert bad.returncode != 0 and "'500,x': give comma-separated positive steps" in bad.stderr


def test_step_cost_smoke_reports_seconds_per_step_and_per_validation(tmp_path):
    out = tmp_path / "cost.json"
    proc = run_script("step_cost.py", "--smoke", "--rows", "baseline,no_attention,validation_no_strips", "--json", str(out), timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = json.loads(out.read_text())["rows"]
    assert [r["case"].split(":")[0] for r in rows] == ["baseline", "no_attention", "validation_no_strips"]
    assert [r["unit"] for r in rows] == ["s/step", "s/step", "s"]
    # the training rows are relative to the baseline's seconds per step (timings meaningless at smoke size)
    assert rows[0]["ratio"] == 1.0 and rows[1]["reference"] == rows[0]["ours"]
    assert "4 validations in 8 steps" in rows[2]["note"]
    bad = run_script("step_cost.py", "--smoke", "--rows", "baseline,nope")
    assert bad.returncode != 0 and "unknown rows ['nope']" in bad.stderr
    bad = run_script("step_cost.py", "--steps", "50")
    assert bad.returncode != 0 and "--steps 50: must be >= 100" in bad.stderr
    bad = run_script("step_cost.py", "--repeats", "0")  # checked for every benchmark, in benchlib
    assert bad.returncode != 0 and "--repeats 0: must be an integer >= 1" in bad.stderr


def test_default_run_keeps_its_folder_when_asked_and_never_overwrites_one(tmp_path):
    keep = tmp_path / "run"
    proc = run_script("default_run.py", "--smoke", "--keep", str(keep), timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert (keep / "checkpoints" / "last.ckpt").is_file() and list((keep / "samples").glob("samples_step_*.png"))
    before = sorted(p.relative_to(keep) for p in keep.rglob("*"))
    again = run_script("default_run.py", "--smoke", "--keep", str(keep))
    assert again.returncode != 0 and f"--keep {keep} is a file or holds files" in again.stderr
    assert sorted(p.relative_to(keep) for p in keep.rglob("*")) == before
    # the kept checkpoint scored with another sampler than the goal's DDIM-50
    ckpt = str(keep / "checkpoints" / "last.ckpt")
    scored = run_script("digits_quality.py", "--ckpt", ckpt, "--sampler", "ddpm", "--num-steps", "2", "--samples", "16")
    assert scored.returncode == 0, scored.stderr[-3000:]
    record = json.loads(scored.stdout.splitlines()[0])
    assert record["sampler"] == {"name": "ddpm", "num_steps": 2} and record["n"] == 16 and record["floor"] > 0
    bad = run_script("digits_quality.py", "--ckpt", ckpt, "--sampler", "nope")
    assert bad.returncode != 0 and "--sampler 'nope'; choose from ['ddpm', 'ddim'" in bad.stderr
    bad = run_script("digits_quality.py", "--ckpt", ckpt, "--samples", "0")
    assert bad.returncode != 0 and "--samples 0: must be an integer >= 1" in bad.stderr


def test_class_conditional_smoke_reports_accuracy_at_each_guidance(tmp_path):
    out = tmp_path / "cond.json"
    proc = run_script("class_conditional.py", "--smoke", "--json", str(out), "--grids", str(tmp_path), timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = json.loads(out.read_text())["rows"]
    assert [r["case"].rsplit("w = ", 1)[1] for r in rows] == ["1", "2", "3", "5"]
    assert all(0 <= r["ours"] <= 1 for r in rows)
    for w in ("1", "3"):
        assert (tmp_path / f"digits_cond_w{w}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
