"""A Hydra callback for tests: after every job of a sweep, append the parent process's resident
memory (VmRSS, kB, from /proc) to the file named by $RSS_PROBE_FILE."""

from __future__ import annotations

import os

from hydra.experimental.callback import Callback


def vm_rss_kb() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


class RSSProbe(Callback):
    def on_job_end(self, config, job_return, **kwargs) -> None:
        with open(os.environ["RSS_PROBE_FILE"], "a") as f:
            f.write(f"{vm_rss_kb()}\n")

