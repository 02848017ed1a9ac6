"""host_malloc: `retain` keeps freed host memory for reuse, so a loop that frees and allocates
the same large tensor stops page-faulting it back in each time; `system` leaves glibc's policy.
Each policy runs in a fresh process (the setting is process-wide and one-way)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from ddpm_lightning.host_malloc import _glibc, set_host_malloc

PAGES = 64 * 2**20 // 4096  # one 64 MiB tensor, above glibc's largest dynamic mmap threshold

CHILD = f"""
import resource, torch
from ddpm_lightning.host_malloc import set_host_malloc
print(set_host_malloc({{policy!r}}))
for _ in range(10):  # the heap settles within a few allocations
    torch.empty({PAGES * 1024}).fill_(1.0)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    torch.empty({PAGES * 1024}).fill_(1.0)  # 64 MiB of float32, written, freed
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(policy: str) -> tuple[bool, int]:
    out = subprocess.run([sys.executable, "-c", CHILD.format(policy=policy)], capture_output=True, text=True,
                         check=True).stdout.split()
    return out[0] == "True", int(out[1])


@pytest.mark.skipif(_glibc() is None, reason="mallopt policy is glibc's")
def test_retain_stops_refaulting_freed_memory():
    changed, retained = _faults("retain")
    unchanged, system = _faults("system")
    assert changed and not unchanged
    assert system > 5 * PAGES  # glibc unmaps the block at every free: ~PAGES faults per allocation
    assert retained < PAGES  # kept in the heap: written again without faults (0 once settled)


def test_unknown_policy_is_refused():
    with pytest.raises(ValueError, match="host_malloc must be one of retain, system"):
        set_host_malloc("jemalloc")
