"""glibc malloc settings for CPU work on large tensors (encoding and training batches).

glibc serves an allocation above its mmap threshold (adjusted at run time, 32 MiB at most) with a
fresh ``mmap`` and unmaps it on ``free``, so every forward pass pays the kernel to map and zero
its activations again: encoding a batch of 32 at 260 px (clipsearch-base) on this project's 2-core
host spent ~45 % of its CPU time in the kernel. Serving such blocks from the heap and keeping
freed memory there for the next batch cut the time per batch by 2-2.5x, for ~25 % more peak RSS
(docs/benchmarks.md, "CPU allocator").

The settings are process-wide; a user who sets one of them (``MALLOC_MMAP_THRESHOLD_``, ... or
``GLIBC_TUNABLES=glibc.malloc...``, which glibc reads at start) or ``CLIPSEARCH_MALLOC_TUNING=0``
keeps their own.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import os
import sys

log = logging.getLogger(__name__)

OPT_OUT = "CLIPSEARCH_MALLOC_TUNING"
MIB = 1 << 20
# glibc's environment name -> (mallopt parameter, value).
SETTINGS = {
    "MALLOC_MMAP_THRESHOLD_": (-3, 256 * MIB),  # M_MMAP_THRESHOLD: larger blocks come from the heap
    "MALLOC_TRIM_THRESHOLD_": (-1, 1024 * MIB),  # M_TRIM_THRESHOLD: free memory kept for reuse
    "MALLOC_TOP_PAD_": (-2, 256 * MIB),  # M_TOP_PAD: heap growth in fewer, larger steps
}


def _wanted() -> bool:
    """On Linux, unless the user opted out or set glibc's malloc themselves."""
    if not sys.platform.startswith("linux") or os.environ.get(OPT_OUT, "1") == "0":
        return False
    if "glibc.malloc" in os.environ.get("GLIBC_TUNABLES", ""):
        return False
    return not any(name in os.environ for name in SETTINGS)


@functools.cache
def tune() -> bool:
    """Apply :data:`SETTINGS` to this process once; True when glibc took all of them."""
    if not _wanted():
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    # musl has a mallopt that accepts nothing (returns 0): then nothing changed.
    done = all(mallopt(param, value) == 1 for param, value in SETTINGS.values())
    log.debug("malloc tuned for large tensors: %s", done)
    return done
