"""ferpipe.heap: a freed big block stays in the process's heap for the next batch."""

from __future__ import annotations

import platform
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# glibc's mallinfo2: how many blocks are mapped on their own, and how many free bytes the heap keeps.
_SCRIPT = textwrap.dedent("""
    import ctypes, json, sys
    import numpy as np
    class Info(ctypes.Structure):
        _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd",
                                                    "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]
    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = Info
    if sys.argv[1] == "retain":
        from ferpipe.heap import retain_freed_memory
        assert retain_freed_memory()
    before = libc.mallinfo2().hblks
    a = np.ones(256 << 20, np.uint8)
    mapped = libc.mallinfo2().hblks - before
    del a
    print(json.dumps({"mapped_blocks": mapped, "free_kept": libc.mallinfo2().fordblks}))
""")


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc's malloc")
def test_a_freed_block_stays_in_the_heap():
    def run(mode: str) -> dict:
        out = subprocess.run([sys.executable, "-c", _SCRIPT, mode], capture_output=True, text=True, check=True,
                             env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
        return __import__("json").loads(out.stdout)

    block = 256 << 20
    default, retained = run("default"), run("retain")
    # By default a 256 MiB block is mapped on its own and handed back on free (the next batch
    # faults it in again); retained, it comes from the heap and stays there, free for reuse.
    assert default["mapped_blocks"] == 1 and default["free_kept"] < block
    assert retained["mapped_blocks"] == 0 and retained["free_kept"] >= block
