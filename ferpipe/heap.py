"""Keep freed heap memory in the process (glibc), for loops that allocate the same big buffers.

A detector batch allocates and frees the same tensors of a few MB to a few hundred MB, hundreds
of times. glibc's defaults hand such blocks back to the kernel on free (``munmap``, or trimming
the heap top), so every next batch faults the same pages in again and the kernel zeroes them:
on the align stage that was 6.7 s of system time in a 25 s run. Here big blocks come from the
heap and freed memory stays there for reuse, in one arena for all threads (a thread's own arena
is built of 64 MiB heaps, and a larger block is mapped and unmapped each time whatever the
thresholds). The process's resident memory stays at its peak instead of shrinking between
batches (+0.1 to 0.3 GB on align). MTCNN on 640 faces, 2 lanes: 0.88 s of system time before,
0.08 s after (``benchmarks/align_process.py`` measures the whole stage).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import platform
from functools import lru_cache

# mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8
MMAP_THRESHOLD = 1 << 30   # only blocks of a GiB and more are mapped on their own
TRIM_THRESHOLD = 2**31 - 1  # a C int: never trim


@lru_cache(maxsize=1)
def retain_freed_memory() -> bool:
    """Set glibc's malloc to keep freed memory for reuse (once per process; threads started
    after it share the main arena). False where the C library is not glibc (nothing changes)."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    settings = ((_M_ARENA_MAX, 1), (_M_MMAP_THRESHOLD, MMAP_THRESHOLD), (_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    return all([libc.mallopt(param, value) == 1 for param, value in settings])
