"""return_freed_memory: freed tensors of heap size leave the resident set at once (glibc)."""
import subprocess
import sys

import pytest

PROGRAM = """
import sys
import torch
from mmtune.train.trainer import return_freed_memory

def rss_mib():
    line = next(l for l in open("/proc/self/status") if l.startswith("VmRSS:"))
    return int(line.split()[1]) / 1024

if sys.argv[1] == "on":
    return_freed_memory()
first = torch.ones(2**18)
del first  # a 1 MiB free: glibc's dynamic threshold now serves blocks of this size from its heap
before = rss_mib()
blocks = [torch.ones(2**18) for _ in range(300)]
last = blocks.pop()  # stays allocated above the others, so the heap top cannot shrink
del blocks
print(rss_mib() - before)
"""


def _kept_mib(mode: str) -> float:
    out = subprocess.run([sys.executable, "-c", PROGRAM, mode], capture_output=True, text=True, check=True)
    return float(out.stdout)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc and /proc")
def test_freed_blocks_leave_the_resident_set():
    assert _kept_mib("off") > 200  # what glibc keeps by default (300 MiB freed)
    assert _kept_mib("on") < 20
