"""How the C library's malloc hands host memory back to the OS, for CPU training speed.

PyTorch's CPU tensors come from malloc. glibc serves a block above its mmap threshold (128 KiB
at first, raised by itself up to 32 MiB as blocks are freed) with a fresh `mmap` that it unmaps
on free, and it trims the top of its heap once more than M_TRIM_THRESHOLD lies free there. A
training step frees its activations and gradients and allocates them again in the next step, so
under that policy every step page-faults its working set back in and the kernel zero-fills it.
Measured with the unet_small preset at batch 128 on one CPU thread (benchmarks/host_malloc.py):
about 20,000 minor page faults per step (80 MB) and a step some 10% slower than with the
memory kept.

`retain` keeps freed memory in the process for reuse: mmap threshold and trim threshold at their
maximum, and a heap grown in large steps. The peak resident memory is the same (a step needs its
working set either way); what changes is that it stays resident between steps. This is what the
jemalloc / tcmalloc advice of PyTorch's CPU performance guide buys, without preloading a library.
It changes nothing on a GPU's memory, and little on GPU runs, whose host allocations are small.
"""

from __future__ import annotations

import ctypes
import logging

log = logging.getLogger(__name__)

POLICIES = ("retain", "system")

# mallopt parameters (malloc.h)
M_TRIM_THRESHOLD = -1
M_TOP_PAD = -2
M_MMAP_THRESHOLD = -3
INT_MAX = 2**31 - 1  # mallopt takes an int; glibc accepts this for both thresholds
TOP_PAD = 1 << 30  # grow the heap 1 GiB at a time: address space only, pages come on first use


def _glibc() -> ctypes.CDLL | None:
    """The C library this process runs on, if it is glibc (not musl, not macOS's)."""
    try:
        libc = ctypes.CDLL(None)  # the symbols already loaded into this process, libc's among them
        libc.gnu_get_libc_version  # glibc only
        libc.mallopt
    except (OSError, AttributeError):
        return None
    return libc


def set_host_malloc(policy: str) -> bool:
    """Apply `policy` ("retain" or "system") to this process (and the processes it forks later,
    e.g. DataLoader workers). Returns whether a glibc setting was changed: "system" leaves the C
    library's defaults; on a C library other than glibc, "retain" does nothing (with a debug
    note). Call it early, before the large allocations: memory already mapped is unaffected."""
    if policy not in POLICIES:
        raise ValueError(f"host_malloc must be one of {', '.join(POLICIES)}; got {policy!r}")
    if policy == "system":
        return False
    libc = _glibc()
    if libc is None:
        log.debug("host_malloc=retain: not glibc, left as it is")
        return False
    ok = all(
        libc.mallopt(param, value) == 1
        for param, value in ((M_MMAP_THRESHOLD, INT_MAX), (M_TRIM_THRESHOLD, INT_MAX), (M_TOP_PAD, TOP_PAD))
    )
    if not ok:
        log.debug("host_malloc=retain: glibc refused a mallopt setting")
    return ok


def release_host_memory() -> bool:
    """Hand the heap's free memory back to the OS now (glibc's `malloc_trim(0)`): what `retain`
    keeps for the next step is waste once a job has ended. Returns whether glibc released any."""
    libc = _glibc()
    return bool(libc.malloc_trim(0)) if libc is not None else False
