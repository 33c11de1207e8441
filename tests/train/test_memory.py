"""host_memory: `return` gives freed tensors' memory back at once, `keep` holds it for reuse until the run ends,
and leaving either restores glibc's behaviour (glibc; each case in its own process, as mallopt is process-wide)."""
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc and /proc")

RETURN = """
import sys
import torch
from mmtune.train.host_memory import freed_memory

def rss_mib():
    line = next(l for l in open("/proc/self/status") if l.startswith("VmRSS:"))
    return int(line.split()[1]) / 1024

with freed_memory(None if sys.argv[1] == "off" else "return"):
    first = torch.ones(2**18)
    del first  # a 1 MiB free: glibc's dynamic threshold now serves blocks of this size from its heap
    before = rss_mib()
    blocks = [torch.ones(2**18) for _ in range(300)]
    last = blocks.pop()  # stays allocated above the others, so the heap top cannot shrink
    del blocks
    print(rss_mib() - before)
"""

KEEP = """
import sys
import torch
from mmtune.train.host_memory import freed_memory

def rss_mib():
    line = next(l for l in open("/proc/self/status") if l.startswith("VmRSS:"))
    return int(line.split()[1]) / 1024

before = rss_mib()
with freed_memory(None if sys.argv[1] == "off" else "keep"):
    block = torch.ones(2**24)  # 64 MiB, over any mmap threshold of glibc's
    del block
    inside = rss_mib() - before
print(inside, rss_mib() - before)
"""


def _run(program: str, mode: str) -> list[float]:
    out = subprocess.run([sys.executable, "-c", program, mode], capture_output=True, text=True, check=True)
    return [float(word) for word in out.stdout.split()]


def test_return_policy_gives_freed_blocks_back():
    assert _run(RETURN, "off")[0] > 200  # what glibc keeps by default (300 MiB freed)
    assert _run(RETURN, "on")[0] < 20


def test_keep_policy_keeps_freed_blocks_until_the_run_ends():
    inside_off, _ = _run(KEEP, "off")
    inside_on, after_on = _run(KEEP, "on")
    assert inside_off < 16  # glibc unmaps a freed 64 MiB block at once: the next step faults it in afresh
    assert inside_on > 48  # kept resident, for the next step to reuse
    assert after_on < 16  # given back when the run ends


def test_policy_per_run():
    from mmtune.train.host_memory import policy_for

    assert policy_for("cpu", activation_checkpointing=False) == "keep"
    assert policy_for("cpu", activation_checkpointing=True) == "return"
    assert policy_for("cuda", activation_checkpointing=True) == "return"
    assert policy_for("cuda", activation_checkpointing=False) is None
