"""The worker pool: which worker slots have a process, and when a dead one is started again.

Pure bookkeeping on an explicit clock: the process is started by an injected ``start(index)``
(a fork in the daemon, a stub in tests) and the caller reports deaths with ``died(pid, ...)``.

Restart backoff is exponential per slot (0.1 s, 0.2 s, 0.4 s ... up to RESTART_BACKOFF_MAX) and
falls back to the first step only after a worker stayed up STABLE_AFTER seconds, so a worker that
always dies a little later than some threshold cannot restart without delay forever. A start that
fails (fork raising OSError: out of memory, out of pids) counts as a death at once: the service
keeps running and tries again later.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

log = logging.getLogger(__name__)

RESTART_BACKOFF_FIRST: Final = 0.1
RESTART_BACKOFF_MAX: Final = 10.0
STABLE_AFTER: Final = 30.0  # a worker up this long resets its slot's backoff
HEALTHY_AFTER: Final = 1.0  # a worker up this long counts as serving (for the watchdog)


@dataclass(slots=True)
class Slot:
    pid: int = 0
    started_at: float = 0.0
    restart_at: float = 0.0  # when an empty slot may be filled again
    failures: int = 0  # deaths in a row, each sooner than STABLE_AFTER after its start


def backoff(failures: int) -> float:
    """The delay before the next start after ``failures`` quick deaths in a row."""
    if failures <= 0:
        return 0.0
    return min(RESTART_BACKOFF_FIRST * 2.0 ** min(failures - 1, 32), RESTART_BACKOFF_MAX)


class WorkerPool:
    def __init__(self, size: int, start: Callable[[int], int]) -> None:
        self.slots = [Slot() for _ in range(size)]
        self._start = start
        self.restarts = 0  # processes started to replace a dead one

    @property
    def running(self) -> int:
        return sum(1 for slot in self.slots if slot.pid)

    def pids(self) -> list[int]:
        return [slot.pid for slot in self.slots if slot.pid]

    def healthy(self, now: float) -> bool:
        """At least one worker is running and has been up for HEALTHY_AFTER seconds."""
        return any(slot.pid and now - slot.started_at >= HEALTHY_AFTER for slot in self.slots)

    def next_healthy(self, now: float) -> float | None:
        """When the next running worker that is not yet healthy becomes so."""
        due = [slot.started_at + HEALTHY_AFTER for slot in self.slots
               if slot.pid and slot.started_at + HEALTHY_AFTER > now]
        return min(due) if due else None

    def start_all(self, now: float) -> None:
        for index in range(len(self.slots)):
            self._fill(index, now)

    def tend(self, now: float) -> list[int]:
        """Start every empty slot whose backoff has passed; the indexes that got a process."""
        started = []
        for index, slot in enumerate(self.slots):
            if not slot.pid and now >= slot.restart_at and self._fill(index, now):
                self.restarts += 1
                started.append(index)
        return started

    def next_restart(self) -> float | None:
        """The earliest time an empty slot is due, for the caller's wait deadline."""
        due = [slot.restart_at for slot in self.slots if not slot.pid]
        return min(due) if due else None

    def died(self, pid: int, now: float) -> tuple[int, float] | None:
        """Record the death of ``pid``: (its slot, the restart delay), or None if not a worker."""
        for index, slot in enumerate(self.slots):
            if slot.pid == pid:
                slot.pid = 0
                return index, self._schedule(slot, now - slot.started_at, now)
        return None

    def forget(self) -> None:
        """Every process is gone (the caller stopped them)."""
        for slot in self.slots:
            slot.pid = 0

    def _fill(self, index: int, now: float) -> bool:
        slot = self.slots[index]
        try:
            pid = self._start(index)
        except OSError as error:
            delay = self._schedule(slot, 0.0, now)
            log.error("cannot start worker %d: %s; trying again in %.1f s", index, error, delay)
            return False
        slot.pid, slot.started_at, slot.restart_at = pid, now, 0.0
        return True

    def _schedule(self, slot: Slot, uptime: float, now: float) -> float:
        slot.failures = 1 if uptime >= STABLE_AFTER else slot.failures + 1
        delay = backoff(slot.failures)
        slot.restart_at = now + delay
        return delay
