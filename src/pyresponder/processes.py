"""Ending child processes and describing how they ended (for the supervisor)."""

from __future__ import annotations

import contextlib
import os
import signal
import time


def stop(pids: list[int], grace: float) -> list[int]:
    """SIGTERM ``pids``, reap them, SIGKILL what is left after ``grace`` s; the killed pids."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    remaining = set(pids)
    while remaining and time.monotonic() < deadline:
        for pid in list(remaining):
            try:
                done, _ = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                done = pid
            if done:
                remaining.discard(pid)
        if remaining:
            time.sleep(0.01)
    for pid in remaining:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)
    return sorted(remaining)


def describe_status(status: int) -> str:
    """``was killed by SIGKILL`` or ``exited with status 3``, from a waitpid status."""
    if os.WIFSIGNALED(status):
        return f"was killed by {signal.Signals(os.WTERMSIG(status)).name}"
    return f"exited with status {os.waitstatus_to_exitcode(status)}"
