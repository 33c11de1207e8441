"""Child processes (DataLoader workers, and what they start) that die with their parent, however it dies.

A trainer killed with SIGKILL (a scheduler, the out-of-memory killer) runs no cleanup, and its DataLoader workers are
reparented to PID 1. torch's watchdog ends an idle one after up to five seconds, but not one that is blocked: a
worker whose finished item does not fit the queue's pipe waits forever for its feeder thread (the workers themselves
hold the pipe's read end, so the write never fails), and one stuck in a read never looks. On Linux the kernel does
it instead: prctl(PR_SET_PDEATHSIG, SIGKILL) kills a process the moment its parent exits, whatever it is doing.

Elsewhere (no prctl: macOS, Windows) `die_with` does nothing and workers rely on torch's watchdog.

- The signal follows the parent *thread*: a DataLoader iterator must be created by a thread that outlives its
  workers (mmtune's loop runs in the main thread). The pin-memory thread is a thread of the trainer: it dies with it.
- It is not inherited: a worker that starts processes of its own (a video decoder, say) gives each of them
  `die_with(os.getpid())`, as `preexec_fn` of subprocess.Popen or first thing in a multiprocessing target, so every
  generation dies with the one before it.
- With the forkserver start method the worker's parent is the fork server, which exits when the trainer does.
"""
from __future__ import annotations

import ctypes
import functools
import os
import signal
import sys
from pathlib import Path
from typing import Callable, Iterator

PR_SET_PDEATHSIG = 1
"""From <linux/prctl.h>."""


def die_with(pid: int) -> Callable[..., None]:
    """A function to run first thing in a new process started by `pid` (it takes and ignores a DataLoader
    worker id): the process is SIGKILLed when its parent exits, and at once if `pid` is already gone, as a
    parent that died before the request would never trigger it. Picklable, for spawned workers."""
    return functools.partial(_die_with, pid)


def _die_with(pid: int, *_worker_id: int) -> None:
    prctl = _prctl()
    if prctl is None:
        return
    if prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        error = ctypes.get_errno()
        raise OSError(error, f"prctl(PR_SET_PDEATHSIG): {os.strerror(error)}")
    if pid not in _ancestors(os.getpid()):
        os.kill(os.getpid(), signal.SIGKILL)


def _prctl() -> Callable[..., int] | None:
    if not sys.platform.startswith("linux"):
        return None
    return getattr(ctypes.CDLL(None, use_errno=True), "prctl", None)


def _ancestors(pid: int) -> Iterator[int]:
    """The parent of `pid`, its parent and so on (from /proc). A dead parent's pid, even if reused, cannot be among
    them: an orphan is adopted by an older process (init or a subreaper)."""
    while pid > 1:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except FileNotFoundError:  # gone while we looked: the chain is broken
            return
        pid = int(stat.rsplit(")", 1)[1].split()[1])  # the name in parentheses may hold spaces
        yield pid
