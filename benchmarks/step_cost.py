"""Seconds per training step of the default run and its variants on this machine (issue #16:
what buys more steps in the default run's 10 minutes on 2 CPU cores).

    python benchmarks/step_cost.py                       # the rows of ALL, ~20 min on an idle machine
    python benchmarks/step_cost.py --rows baseline,compile
    python benchmarks/step_cost.py --smoke               # CI: a tiny UNet, a few steps

A training row runs `python train.py logger=none <overrides>` twice, to N1 and to N2 steps, with
validation off (`trainer.limit_val_batches=0`): (wall(N2) - wall(N1)) / (N2 - N1) is the cost of
one step, start-up (imports, data, the final grid) cancelled out. `compile` adds a third run: the
first to N1 with an empty inductor cache (the compile time a fresh `python train.py compile=true`
pays, reported as its own figure), then both timed runs with that cache warm. The validation rows
run N2 steps validating every `VALIDATION_EVERY` steps with the grids as configured and report
the cost of one validation (validation loss + sample grid + trajectory and forward strips) over
the row without validation. Each wall time is one run, or the median of `--repeats` runs: single
runs differ by a few seconds. The machine must be otherwise idle.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchlib import Row, finish_args, script_main
from default_run import SMOKE
from default_study import ROWS

ROOT = Path(__file__).resolve().parents[1]
NO_VALIDATION = ["trainer.limit_val_batches=0", "~callbacks.progress_bar"]
VALIDATION_EVERY = 100

# name -> (overrides, environment): any row of the study (default_study.ROWS), and these
ENVIRONMENT_ROWS: dict[str, tuple[list[str], dict[str, str]]] = {
    "threads1": ([], {"OMP_NUM_THREADS": "1"}),   # one torch thread instead of one per core
    "compile": (["compile=true"], {}),             # inductor's CPU backend
}
TRAINING: dict[str, tuple[list[str], dict[str, str]]] = {**{n: (o, {}) for n, o in ROWS.items()}, **ENVIRONMENT_ROWS}
VALIDATION: dict[str, list[str]] = {
    "validation": [],                               # the default grids: DDPM-100, 64 samples, both strips
    "validation_ddim25": ["callbacks.sample_grid.sampler={name:ddim,num_steps:25,eta:0.0}"],
    "validation_no_strips": ["callbacks.sample_grid.trajectory_samples=0", "callbacks.sample_grid.forward_samples=0"],
}
# `--rows all`: the rows that change the cost of a step or of a validation
ALL = ["baseline", "threads1", "channels_last", "no_attention", "batch128", "no_attention_batch32", "compile", *VALIDATION]


def _wall(overrides: list[str], env: dict[str, str], smoke: bool, tmp: Path, repeats: int = 1) -> float:
    """Median wall time of `repeats` fresh `python train.py` runs."""
    walls = []
    for _ in range(repeats):
        out = Path(tempfile.mkdtemp(dir=tmp))
        args = ["logger=none", f"hydra.run.dir={out}", *(SMOKE if smoke else []), *overrides]
        start = time.perf_counter()
        subprocess.run([sys.executable, str(ROOT / "train.py"), *args], cwd=tmp, env={**os.environ, "WANDB_MODE": "offline", **env},
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        walls.append(time.perf_counter() - start)
    return statistics.median(walls)


def run(args) -> list[Row]:
    names = ALL if args.rows == "all" else args.rows.split(",")
    unknown = [n for n in names if n not in TRAINING and n not in VALIDATION]
    if unknown:
        raise SystemExit(f"error: unknown rows {unknown}; choose from {list(TRAINING) + list(VALIDATION)} or all ({ALL})")
    if not args.smoke and args.steps < VALIDATION_EVERY:
        raise SystemExit(f"error: --steps {args.steps}: must be >= {VALIDATION_EVERY} (one validation every {VALIDATION_EVERY} steps)")
    n1, n2 = (4, 8) if args.smoke else (args.steps // 7, args.steps)
    every = 2 if args.smoke else VALIDATION_EVERY
    rows, walls = [], {}  # name -> (wall to n1 steps, wall to n2 steps)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        # the validation rows compare with the baseline's steps
        for name in [n for n in names if n in TRAINING] + (["baseline"] if set(names) & set(VALIDATION) and "baseline" not in names else []):
            overrides, env = TRAINING[name]
            note = ""
            if name == "compile":
                env = {**env, "TORCHINDUCTOR_CACHE_DIR": str(tmp / "inductor")}
                cold = _wall([*overrides, *NO_VALIDATION, f"trainer.max_steps={n1}"], env, args.smoke, tmp)
            w1 = _wall([*overrides, *NO_VALIDATION, f"trainer.max_steps={n1}"], env, args.smoke, tmp, args.repeats)
            w2 = _wall([*overrides, *NO_VALIDATION, f"trainer.max_steps={n2}"], env, args.smoke, tmp, args.repeats)
            walls[name] = (w1, w2)
            if name == "compile":
                note = f"compiling: {cold - w1:.0f} s more at start-up with an empty inductor cache; "
            rows.append(Row("step cost", f"{name}: {' '.join(overrides) or '(defaults)'} {' '.join(f'{k}={v}' for k, v in env.items() if k != 'TORCHINDUCTOR_CACHE_DIR')}".strip(),
                            (w2 - w1) / (n2 - n1), None, "s/step", None, "",
                            note=note + f"{n2} steps {w2:.0f} s, {n1} steps {w1:.0f} s"))
        if "baseline" in walls:
            base = (walls["baseline"][1] - walls["baseline"][0]) / (n2 - n1)
            for row in rows:
                row.reference, row.ratio = base, row.ours / base
        for name in [n for n in names if n in VALIDATION]:
            k = n2 // every
            w = _wall([*VALIDATION[name], f"trainer.max_steps={n2}", f"trainer.val_check_interval={every}",
                       f"callbacks.sample_grid.every_n_steps={every}", "~callbacks.progress_bar"], {}, args.smoke, tmp, args.repeats)
            w_none = walls["baseline"][1]
            rows.append(Row("step cost", f"{name}: one validation {' '.join(VALIDATION[name]) or '(default grids)'}",
                            (w - w_none) / k, None, "s", None, "", note=f"{k} validations in {n2} steps: {w:.0f} s vs {w_none:.0f} s without"))
    return [r for r in rows if r.case.split(":")[0] in names]


def add_args(p) -> None:
    p.add_argument("--rows", default="all", help=f"comma-separated rows of {list(TRAINING) + list(VALIDATION)}, or all ({ALL})")
    p.add_argument("--steps", type=int, default=350, help="N2; N1 is N2 // 7")


def main(argv=None) -> list[Row]:
    # one run per figure unless --repeats says more (single runs differ by a few seconds)
    return script_main(__doc__, "Step cost", run, argv, add_args=add_args, defaults=lambda a: finish_args(a, repeats=1))


if __name__ == "__main__":
    main()
