"""What glibc does with the memory of freed tensors during a run: keep it for the next step, or give it back.

A training step allocates and frees the same few gigabytes of activations, logits and gradients every time. By
default glibc serves blocks over its mmap threshold (up to 32 MiB) with their own mappings and unmaps them when
freed, so every step faults the same memory in again, page by page, and the kernel zeroes each page:
SmolLM2-135M full fine-tuning (packed 8 x 512, one CPU thread) took ~790,000 page faults and ~3.5 s of system
time per ~33 s step. Two policies, each set for the length of a run and undone after it:

- `keep` (CPU runs): no mappings and no trimming, so freed blocks stay in the heap and the next step reuses them:
  ~110,000 faults and ~1.3 s of system time per step, ~7% more tokens/s, about the same peak resident memory
  (9.4-10.1 against 9.4-9.6 GiB over three runs each: the next step needs those pages again anyway). What torch's own CPU launcher gets by preloading jemalloc or tcmalloc.
- `return` (activation checkpointing, the memory-first mode): every block of 64 KiB or more gets its own mapping,
  unmapped when freed. Otherwise glibc raises its threshold after the first large frees and keeps freed blocks
  resident and fragmented: SmolLM2-135M with activation checkpointing peaked at 4.97 GiB that way and at 3.04 GiB
  with this, for ~10% more CPU time.

Where the C library is not glibc, both are no-ops.
"""
from __future__ import annotations

import contextlib
import ctypes
from collections.abc import Iterator

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, M_MMAP_MAX = -1, -3, -4
"""glibc's mallopt parameter numbers."""
GLIBC_DEFAULTS = {M_TRIM_THRESHOLD: 128 * 1024, M_MMAP_THRESHOLD: 128 * 1024, M_MMAP_MAX: 65536}
POLICIES = {
    "keep": {M_MMAP_MAX: 0, M_TRIM_THRESHOLD: -1},  # -1: never trim the heap top
    "return": {M_MMAP_THRESHOLD: 64 * 1024},
}


def policy_for(device_type: str, activation_checkpointing: bool) -> str | None:
    """`return` for the memory-first mode, `keep` for other CPU runs; None (glibc as it is) for GPU runs, whose
    host side allocates little."""
    if activation_checkpointing:
        return "return"
    return "keep" if device_type == "cpu" else None


@contextlib.contextmanager
def freed_memory(policy: str | None) -> Iterator[None]:
    """Run the body under `policy`; afterwards glibc's defaults are back and the heap's free top is given back to
    the system, so a notebook does not hold a run's peak."""
    libc = _glibc()
    if policy is None or libc is None:
        yield
        return
    for parameter, value in POLICIES[policy].items():
        libc.mallopt(parameter, value)
    try:
        yield
    finally:
        for parameter in POLICIES[policy]:
            libc.mallopt(parameter, GLIBC_DEFAULTS[parameter])
        libc.malloc_trim(0)


def _glibc():
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.gnu_get_libc_version  # glibc only: musl has libc.so but not this
        return libc
    except (OSError, AttributeError):
        return None
