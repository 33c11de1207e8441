"""die_with: DataLoader workers, and the processes they start, die with their parent however it dies, whatever
they are blocked on; a worker whose parent died before it could ask kills itself; without prctl it does nothing."""
import os
import signal
import subprocess
import sys

import pytest

from tests.helpers import PROMPTLY_S, ProcessTree

BLOCKED_WORKERS = """
import os, subprocess, sys, torch
from mmtune.data.workers import die_with

class Blocked(torch.utils.data.IterableDataset):
    def __iter__(self):  # each worker starts a grandchild, then waits for a writer that never comes
        child = subprocess.Popen(["sleep", "600"], preexec_fn=die_with(os.getpid()))
        print(child.pid, flush=True)
        with open(sys.argv[1]) as fifo:
            yield fifo.read()

loader = torch.utils.data.DataLoader(Blocked(), batch_size=None, num_workers=2, worker_init_fn=die_with(os.getpid()))
next(iter(loader))
"""


def test_workers_blocked_in_a_read_and_their_children_die_with_a_killed_parent(tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with ProcessTree([sys.executable, "-c", BLOCKED_WORKERS, str(fifo)], stdout=subprocess.PIPE, text=True) as tree:
        grandchildren = {int(tree.proc.stdout.readline()) for _ in range(2)}
        assert grandchildren < set(tree.alive()) and len(tree.alive()) == 5  # parent, 2 workers, 2 grandchildren
        assert tree.kill_root(PROMPTLY_S) == []


CALL_DIE_WITH = """
import sys
from mmtune.data import workers
sys.platform = sys.argv[2]
workers.die_with(int(sys.argv[1]))(0)
print("alive")
"""


@pytest.mark.parametrize("parent, platform, survives", [
    ("running", "linux", True),
    ("gone", "linux", False),  # it died before the child could ask to die with it
    ("gone", "darwin", True),  # no prctl: a no-op
])
def test_die_with_checks_the_parent_is_still_there(parent, platform, survives):
    gone = subprocess.Popen(["true"])
    gone.wait()
    pid = os.getpid() if parent == "running" else gone.pid
    done = subprocess.run([sys.executable, "-c", CALL_DIE_WITH, str(pid), platform], capture_output=True, text=True)
    assert (done.returncode, done.stdout) == ((0, "alive\n") if survives else (-signal.SIGKILL, "")), done.stderr
