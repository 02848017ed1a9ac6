"""Shared pieces of the benchmarks: composing the real configs, timing, memory, FLOPs, and
the result table every script prints (and can write as JSON or markdown).

Each comparison runs both sides in one process, alternating them (A B, B A, A B, ...) so that
a change in the machine's load hits both, and reports medians and the ratio of the medians.
Scripts import this file as a sibling (`python benchmarks/<script>.py` puts `benchmarks/` on
the path); it is not part of the `ddpm_lightning` package.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import logging
import os
import platform
import resource
import statistics
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

import ddpm_lightning
from ddpm_lightning.host_malloc import set_host_malloc

CONF_DIR = Path(ddpm_lightning.__file__).resolve().parent / "conf"

# network preset -> the data config it is meant for
NETWORK_DATA = {"unet_small": "digits", "unet_ddpm_cifar10": "cifar10"}
# --smoke shrinks the presets to the tests' tiny UNets (seconds on a CPU)
SMOKE_NETWORK = {
    "unet_small": ["network.block_out_channels=[16,16,32]", "network.attention_head_dim=8", "network.norm_num_groups=8"],
    "unet_ddpm_cifar10": ["network.block_out_channels=[16,32,32,32]", "network.norm_num_groups=8"],
}
PRECISIONS = ("32-true", "bf16-mixed", "16-mixed")
# Dense (no sparsity) bf16 tensor-core peaks from the vendors' data sheets, in TFLOP/s, matched
# against torch.cuda.get_device_name() in this order; --peak-tflops overrides.
PEAK_BF16_TFLOPS = (
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H100", 989.4),  # SXM
    ("H200", 989.4),
    ("GH200", 989.4),
    ("A100", 312.0),
    ("L40S", 362.0),
    ("L4", 121.0),
)


# ---- command line ------------------------------------------------------------------------


def base_parser(description: str) -> argparse.ArgumentParser:
    """The options every benchmark shares."""
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--network", default="unet_small", choices=sorted(NETWORK_DATA), help="network preset (conf/network)")
    p.add_argument("--data", default=None, help="data preset; default: the network's (digits / cifar10)")
    p.add_argument("--precision", default="32-true", choices=PRECISIONS)
    p.add_argument("--repeats", type=int, default=None, help="alternating repeats of each side (median reported)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: PyTorch's)")
    p.add_argument("--host-malloc", default="retain", choices=["retain", "system"],
                   help="glibc malloc policy for this process, as train.py's host_malloc (default retain, as train.py)")
    p.add_argument("--smoke", action="store_true", help="tiny sizes: checks the script runs (CI); timings meaningless")
    p.add_argument("--json", type=Path, default=None, help="write the rows and the environment as JSON here")
    p.add_argument("--markdown", type=Path, default=None, help="write the table as markdown here")
    return p


def finish_args(args: argparse.Namespace, **defaults: Any) -> argparse.Namespace:
    """Fill options left at None from `defaults` (each a (normal, smoke) pair or a value)."""
    if args.data is None:
        args.data = NETWORK_DATA[args.network]
    for key, value in defaults.items():
        if getattr(args, key, None) is None:
            normal, smoke = value if isinstance(value, tuple) else (value, value)
            setattr(args, key, smoke if args.smoke else normal)
    if args.repeats is None:
        args.repeats = 1 if args.smoke else 3
    if args.repeats < 1:  # before any work: a median of no runs has no value
        raise SystemExit(f"error: --repeats {args.repeats}: must be an integer >= 1")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda but torch.cuda.is_available() is False")
    if args.threads is None and args.smoke:
        args.threads = 1  # a busy CI machine makes multi-threaded tiny ops crawl (OpenMP spin-waits)
    if args.threads:
        torch.set_num_threads(args.threads)
    set_host_malloc(args.host_malloc)  # what `python train.py` does first (host_malloc=retain)
    return args


def quiet() -> None:
    """Silence Lightning's per-fit banners and the warnings a benchmark provokes on purpose."""
    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    warnings.filterwarnings("ignore", ".*tensorboardX.*")
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", ".*treespec.*")
    os.environ.setdefault("WANDB_MODE", "offline")


# ---- configs -----------------------------------------------------------------------------


def compose(overrides: Sequence[str], output_dir: Path):
    """The `train` config of `python train.py <overrides>`, writing under `output_dir` (as the
    tests' `compose_train` does)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = hydra_compose("train", overrides=list(overrides), return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(output_dir)
        cfg.hydra.job.num = 0
        cfg.paths.output_dir = str(output_dir)
    HydraConfig().set_config(cfg)
    return cfg


def train_overrides(
    args: argparse.Namespace,
    *,
    batch_size: int,
    max_steps: int,
    ema: bool = False,
    extra: Sequence[str] = (),
) -> list[str]:
    """`python train.py` overrides for a timed run: the chosen network, data, batch, device and
    precision; no validation, checkpoints, logger, progress bar or sample grids (a bare loop does
    none of them); EMA on or off."""
    overrides = [
        f"network={args.network}",
        f"data={args.data}",
        f"data.batch_size={batch_size}",
        f"trainer.accelerator={'gpu' if args.device == 'cuda' else 'cpu'}",
        f"trainer.precision={args.precision}",
        f"trainer.max_steps={max_steps}",
        "trainer.limit_val_batches=0",
        "+trainer.enable_checkpointing=false",
        "trainer.enable_progress_bar=false",
        "trainer.enable_model_summary=false",
        "logger=none",
        "callbacks=ema" if ema else "callbacks=none",
    ]
    if args.smoke or getattr(args, "tiny", False):
        overrides += SMOKE_NETWORK[args.network]
    if args.device == "cpu" and args.data != "digits":
        overrides.append("data.num_workers=0")  # loader workers would fight the model for 2 cores
    return merge_overrides(overrides + list(extra))


def merge_overrides(overrides: Sequence[str]) -> list[str]:
    """Later overrides of a key replace earlier ones (Hydra refuses a key given twice)."""
    by_key: dict[str, str] = {}
    for o in overrides:
        key = o.split("=", 1)[0].lstrip("+~")
        by_key.pop(key, None)
        by_key[key] = o
    return list(by_key.values())


def synthetic_pool_if_needed(datamodule, n: int = 2048) -> None:
    """Datasets that are not on disk (CIFAR-10: the device machine has no internet) get `n`
    random images of the right shape instead of files; the rest of the datamodule (split, flips,
    loader, workers, pinned memory) is the real one."""
    if type(datamodule).__name__ != "TorchvisionDataModule":
        return
    from ddpm_lightning.data.datasets import TensorItems

    g = torch.Generator().manual_seed(0)
    images = torch.rand(n, *datamodule.data_shape, generator=g) * 2 - 1
    datamodule._build_pool = lambda: TensorItems(images)
    datamodule.prepare_data = lambda: None


def build_run(cfg):
    """`ddpm_lightning.train.build(cfg)` with seed 0 (the same weights on both sides)."""
    from ddpm_lightning.train import build

    torch.manual_seed(0)
    datamodule, model, trainer = build(cfg)
    synthetic_pool_if_needed(datamodule)
    return datamodule, model, trainer


def autocast(device: str, precision: str):
    """The autocast context of a Lightning precision string (what Lightning enters for us)."""
    if precision == "32-true":
        return torch.autocast(device, enabled=False)
    dtype = torch.bfloat16 if precision.startswith("bf16") else torch.float16
    return torch.autocast(device, dtype=dtype)


# ---- timing ------------------------------------------------------------------------------


def sync(device: str | torch.device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def mark(device: str | torch.device) -> tuple[float, float]:
    """(wall, process CPU) seconds now, after the device's queued work."""
    sync(device)
    return time.perf_counter(), time.process_time()


class Measured(float):
    """A rate or a duration by the wall clock that also carries the same quantity measured by
    this process's CPU time (`.cpu`). On a shared machine other processes stretch wall time but
    hardly the CPU time a process needs (with one torch thread), so the CPU-time ratio is the
    load-robust one; on a GPU, wall time is what counts."""

    cpu: float

    def __new__(cls, wall: float, cpu: float) -> "Measured":
        obj = super().__new__(cls, wall)
        obj.cpu = cpu
        return obj

    @classmethod
    def rate(cls, amount: float, start: tuple[float, float], stop: tuple[float, float]) -> "Measured":
        return cls(amount / (stop[0] - start[0]), amount / max(stop[1] - start[1], 1e-12))

    @classmethod
    def duration(cls, start: tuple[float, float], stop: tuple[float, float]) -> "Measured":
        return cls(stop[0] - start[0], stop[1] - start[1])


def alternate(sides: dict[str, Callable[[], float]], repeats: int) -> dict[str, list[float]]:
    """Run each side `repeats` times, alternating the order (A B, B A, ...); each call returns
    one measurement."""
    names = list(sides)
    out: dict[str, list[float]] = {n: [] for n in names}
    for r in range(repeats):
        for name in names if r % 2 == 0 else names[::-1]:
            out[name].append(sides[name]())
    return out


def median(xs: Sequence[float]) -> float:
    return float(statistics.median(xs))


def ratio_of_medians(a: Sequence[float], b: Sequence[float]) -> float:
    return median(a) / median(b)


def spread(a: Sequence[float], b: Sequence[float]) -> str:
    """The range of the per-repeat ratios a_i / b_i and, for `Measured` values, the ratio of the
    medians by CPU time, as a note."""
    r = [x / y for x, y in zip(a, b)]
    note = f"per-repeat ratios {min(r):.3f}-{max(r):.3f} (n={len(r)})"
    if all(isinstance(x, Measured) for x in (*a, *b)):
        note += f"; by process CPU time: ratio {median([x.cpu for x in a]) / median([y.cpu for y in b]):.3f}"
    return note


def time_calls(fn: Callable[[], Any], n: int, device: str, warmup: int = 1) -> Measured:
    """Median seconds of one call of fn (synchronised around each call), by wall and CPU time."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(n):
        start = mark(device)
        fn()
        times.append(Measured.duration(start, mark(device)))
    return Measured(median(times), median([t.cpu for t in times]))


# ---- memory ------------------------------------------------------------------------------


def _status_kib(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def rss_mib() -> float | None:
    kib = _status_kib("VmRSS")
    return kib / 1024 if kib is not None else None


def minor_faults() -> int:
    """Minor page faults of this process so far: memory the kernel mapped (and zero-filled)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def peak_rss_mib() -> float | None:
    kib = _status_kib("VmHWM")
    return kib / 1024 if kib is not None else None


def reset_peak_rss() -> bool:
    """Return freed heap memory to the OS, then reset the kernel's peak-RSS mark to the current
    RSS (Linux >= 4.0: `echo 5 > /proc/self/clear_refs`). False where that is not possible."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


# ---- FLOPs -------------------------------------------------------------------------------


def train_step_flops(network: Callable, x: torch.Tensor, t: torch.Tensor, precision: str = "32-true") -> int:
    """FLOPs of one forward and backward pass of `network(x, t)` (matmuls, convolutions and
    attention, as `torch.utils.flop_counter.FlopCounterMode` counts them; elementwise ops are
    not counted, as MFU conventions do)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        with autocast(x.device.type, precision):
            out = network(x, t)
        out.float().square().mean().backward()
    return counter.get_total_flops()


def peak_tflops(device: str, override: float | None = None) -> float | None:
    """The device's dense bf16 peak (TFLOP/s), or None when unknown (CPUs)."""
    if override:
        return override
    if torch.device(device).type != "cuda":
        return None
    name = torch.cuda.get_device_name()
    for key, value in PEAK_BF16_TFLOPS:
        if key in name:
            return value
    return None


# ---- the table ---------------------------------------------------------------------------


@dataclass
class Row:
    """One line of a benchmark table. `ratio` is ours / reference (or as the case says);
    `goal` is a condition on it such as '>= 0.98' or '<= 1.00' (empty: no goal)."""

    benchmark: str
    case: str
    ours: float | None = None
    reference: float | None = None
    unit: str = ""
    ratio: float | None = None
    goal: str = ""
    met: bool | None = None
    note: str = ""

    def __post_init__(self) -> None:
        if self.met is None and self.goal and self.ratio is not None:
            self.met = meets(self.ratio, self.goal)


def meets(value: float, goal: str) -> bool:
    op, _, bound = goal.partition(" ")
    b = float(bound.rstrip("%x")) / (100 if bound.endswith("%") else 1)
    return {">=": value >= b, "<=": value <= b, "<": value < b, ">": value > b}[op]


def _fmt(x: float | None) -> str:
    if x is None:
        return "n/a"
    if abs(x) >= 100:
        return f"{x:,.0f}"
    if abs(x) >= 1:
        return f"{x:.2f}"
    return f"{x:.3g}"


def markdown(rows: Sequence[Row]) -> str:
    head = "| benchmark | case | ours | reference | unit | ratio | goal | met | note |"
    lines = [head, "|" + "---|" * 9]
    for r in rows:
        met = "n/a" if r.met is None else ("yes" if r.met else "**no**")
        if r.ratio is None:
            ratio = "n/a"
        elif r.goal.endswith("%"):
            ratio = f"{100 * r.ratio:.2f}%"
        else:
            ratio = f"{r.ratio:.3f}" if abs(r.ratio) < 10 else _fmt(r.ratio)
        lines.append(
            f"| {r.benchmark} | {r.case} | {_fmt(r.ours)} | {_fmt(r.reference)} | {r.unit} | {ratio} | "
            f"{r.goal or '-'} | {met} | {r.note} |"
        )
    return "\n".join(lines)


def environment(device: str = "cpu") -> dict[str, Any]:
    """Machine, versions and load, for the record."""
    import diffusers
    import lightning

    cpu = platform.processor() or "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    env = {
        "date_utc": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "loadavg_1_5_15": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "lightning": lightning.__version__,
        "diffusers": diffusers.__version__,
        "device": torch.cuda.get_device_name() if torch.device(device).type == "cuda" else "cpu",
    }
    try:
        from importlib.metadata import version

        env["denoising_diffusion_pytorch"] = version("denoising-diffusion-pytorch")
    except Exception:  # noqa: BLE001 - not installed
        env["denoising_diffusion_pytorch"] = None
    return env


def report(rows: Sequence[Row], args: argparse.Namespace, title: str) -> None:
    """Print the table; write it as JSON / markdown when asked."""
    env = environment(args.device)
    table = markdown(rows)
    load = env["loadavg_1_5_15"]
    header = (
        f"## {title}\n\n{env['date_utc']}; {env['device']} ({env['cpu']}, {env['cpu_count']} cores, "
        f"{env['torch_threads']} torch threads, host_malloc={getattr(args, 'host_malloc', '?')}); load average {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f}; "
        f"torch {env['torch']}, lightning {env['lightning']}, diffusers {env['diffusers']}"
        + (" (--smoke: timings meaningless)" if args.smoke else "")
    )
    print(f"\n{header}\n\n{table}\n", flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"title": title, "args": _plain_args(args), "environment": env,
                                         "rows": [asdict(r) for r in rows]}, indent=2))
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(f"{header}\n\n{table}\n")


def script_main(
    description: str,
    title: str,
    run: Callable[[argparse.Namespace], Sequence[Row] | None],
    argv: Sequence[str] | None,
    add_args: Callable[[argparse.ArgumentParser], None] | None = None,
    defaults: Callable[[argparse.Namespace], Any] = finish_args,
) -> list[Row]:
    """A benchmark script's `main`: the shared options and the script's own, their defaults,
    the rows of `run(args)` printed (and written) as a table titled `title`. `run` returns None
    when it has nothing to report (a child process that prints its own result)."""
    p = base_parser(description)
    if add_args is not None:
        add_args(p)
    args = p.parse_args(argv)
    defaults(args)
    quiet()
    rows = run(args)
    if rows is None:
        return []
    report(rows, args, title)
    return list(rows)


def _plain_args(args: argparse.Namespace) -> dict[str, Any]:
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
