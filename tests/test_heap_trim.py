"""Freed large blocks go back to the system: with `map_large_blocks` a process that allocated 64 blocks
of 8 MB between small kept ones holds none of them once freed; glibc's default keeps them (a first
freed large block raises its mmap threshold, the next ones come from the heap and stay there)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

PROBE = textwrap.dedent("""
    import sys, torch
    from lorakit import heap_trim
    def rss():
        return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmRSS")) * 1024
    if sys.argv[1] == "on":
        heap_trim.map_large_blocks()
    warm = torch.ones(2**21); del warm
    kept, big = [], []
    before = rss()
    for i in range(64):
        big.append(torch.ones(2**21))
        kept.append(torch.ones(2**14))
    del big
    print((rss() - before) / 2**20)
""")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator")
def test_large_blocks_are_returned_when_freed(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text(PROBE)
    held = {mode: float(subprocess.run([sys.executable, str(probe), mode], capture_output=True, text=True, check=True,
                                       cwd=Path(__file__).parent).stdout.split()[-1])
            for mode in ("off", "on")}
    assert held["off"] > 256, held  # 512 MB of freed blocks still resident by default
    assert held["on"] < 32, held
