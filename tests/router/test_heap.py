"""The router keeps freed heap for the next large body instead of faulting it in again (``keep_freed_heap``)."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

# A large body's worth of 256 KB reads, freed, again and again: the minor page faults of the last one.
_LAST_BODY_FAULTS = """
import resource, sys
from router.server import keep_freed_heap
if sys.argv[1] == "keep":
    assert keep_freed_heap()
def body():
    return [bytes(256 * 1024) for _ in range(19)]  # 4.8 MB, as the router reads it
for _ in range(5):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    pieces = body()
    del pieces
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", _LAST_BODY_FAULTS, mode], capture_output=True, text=True, check=True)
    return int(out.stdout)


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="tunes glibc's allocator")
def test_large_bodies_reuse_the_memory_of_those_before() -> None:
    pages = 19 * 256 * 1024 // 4096
    assert _faults("default") > pages // 4  # glibc gave it back and faults it in again, page by page
    assert _faults("keep") < pages // 20
