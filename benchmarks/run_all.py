"""Every benchmark in one command, one combined table (and JSON / markdown files).

    python benchmarks/run_all.py                                  # CPU, unet_small (digits)
    python benchmarks/run_all.py --device cuda --network unet_ddpm_cifar10 --precision bf16-mixed \\
        --json outputs/bench/h100.json --markdown outputs/bench/h100.md
    python benchmarks/run_all.py --smoke                          # CI: tiny sizes, every script

The GPU command records training images/s (train.py path and bare loop), the peer comparison,
sampling against diffusers, peak memory, host-device syncs per step, each GPU fast path, MFU,
and the 5,000 images/s goal. Each script also runs alone with more options (`--help`).
Last, the default run (`python train.py`, about 9 minutes on 2 CPU cores; leave it out with
`--only` and the others' names).
"""

from __future__ import annotations

import time

import default_run
import gpu_fast_paths
import host_malloc
import memory
import sampling_speed
import sync_audit
import train_overhead
import vs_denoising_diffusion_pytorch
from benchlib import Row, base_parser, finish_args, quiet, report

# in this order: memory first, so that its forked children start from a process that has not
# yet run any tensor work
SCRIPTS = {
    "memory": memory,
    "train_overhead": train_overhead,
    "vs_denoising_diffusion_pytorch": vs_denoising_diffusion_pytorch,
    "sampling_speed": sampling_speed,
    "sync_audit": sync_audit,
    "gpu_fast_paths": gpu_fast_paths,
    "host_malloc": host_malloc,
    "default_run": default_run,  # last: the machine should be otherwise idle for it
}


def main(argv=None) -> list[Row]:
    p = base_parser(__doc__)
    p.add_argument("--only", default=",".join(SCRIPTS), help=f"comma-separated subset of {list(SCRIPTS)}")
    args = p.parse_args(argv)
    finish_args(args)
    quiet()
    common = ["--device", args.device, "--network", args.network, "--data", args.data,
              "--precision", args.precision, "--repeats", str(args.repeats), "--host-malloc", args.host_malloc]
    if args.threads:
        common += ["--threads", str(args.threads)]
    if args.smoke:
        common.append("--smoke")
    rows: list[Row] = []
    for name in args.only.split(","):
        if name not in SCRIPTS:
            raise SystemExit(f"error: unknown benchmark {name!r}; choose from {list(SCRIPTS)}")
        t0 = time.perf_counter()
        rows += SCRIPTS[name].main(common)
        print(f"[{name}: {time.perf_counter() - t0:.1f} s]", flush=True)
    report(rows, args, "All benchmarks")
    return rows


if __name__ == "__main__":
    main()
