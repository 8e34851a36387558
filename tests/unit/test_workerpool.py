"""Worker restart backoff on an explicit clock, with a stub in place of fork."""

from __future__ import annotations

import pytest

from pyresponder.workerpool import (
    HEALTHY_AFTER,
    RESTART_BACKOFF_MAX,
    STABLE_AFTER,
    WorkerPool,
    backoff,
)


class Starter:
    """Hands out pids 100, 101, ...; raises OSError while ``failing``."""

    def __init__(self) -> None:
        self.next_pid = 100
        self.failing = False
        self.started: list[int] = []

    def __call__(self, index: int) -> int:
        if self.failing:
            raise OSError(11, "Resource temporarily unavailable")
        self.started.append(index)
        self.next_pid += 1
        return self.next_pid


def test_backoff_is_exponential_and_capped() -> None:
    assert [backoff(n) for n in range(1, 6)] == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.6])
    assert backoff(20) == RESTART_BACKOFF_MAX
    assert backoff(10_000) == RESTART_BACKOFF_MAX
    assert backoff(0) == 0.0


def test_a_crash_looping_worker_waits_longer_each_time_not_quantised() -> None:
    starter = Starter()
    pool = WorkerPool(1, starter)
    now = 0.0
    pool.start_all(now)
    delays = []
    for _ in range(8):
        now += 0.01  # dies right after its start
        _, delay = pool.died(pool.slots[0].pid, now) or (0, -1.0)
        delays.append(delay)
        restart_at = pool.next_restart()
        assert restart_at is not None
        assert restart_at == pytest.approx(now + delay)  # for the caller's wait deadline
        assert pool.tend(restart_at - 1e-6) == []  # not a moment early
        now = restart_at
        assert pool.tend(now) == [0]
    assert delays == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 6.4, 10.0])
    assert pool.restarts == 8


def test_a_worker_dying_just_after_a_second_still_backs_off() -> None:
    """The old rule (backoff only for deaths within 1 s) restarted this one with no delay."""
    pool = WorkerPool(1, Starter())
    now = 0.0
    pool.start_all(now)
    delays = []
    for _ in range(6):
        now += 1.2
        death = pool.died(pool.slots[0].pid, now)
        assert death is not None
        delays.append(death[1])
        now = death[1] + now
        pool.tend(now)
    assert delays == sorted(delays) and delays[-1] > 1.0


def test_backoff_resets_only_after_a_worker_stayed_up() -> None:
    pool = WorkerPool(1, Starter())
    pool.start_all(0.0)
    for now in (0.1, 1.0, 2.0, 4.0):
        death = pool.died(pool.slots[0].pid, now)
        assert death is not None
        pool.tend(pool.next_restart() or 0.0)
    started = pool.slots[0].started_at
    death = pool.died(pool.slots[0].pid, started + STABLE_AFTER - 0.5)
    assert death is not None and death[1] > 1.0  # not yet stable: still backing off
    pool.tend(pool.next_restart() or 0.0)
    started = pool.slots[0].started_at
    death = pool.died(pool.slots[0].pid, started + STABLE_AFTER)
    assert death is not None and death[1] == pytest.approx(0.1)  # first step again


def test_fork_failure_does_not_stop_the_pool_and_is_retried_with_backoff() -> None:
    starter = Starter()
    pool = WorkerPool(2, starter)
    starter.failing = True
    pool.start_all(0.0)
    assert pool.running == 0
    assert pool.next_restart() == pytest.approx(0.1)
    assert pool.tend(0.1) == []  # still failing: the next try is later
    assert pool.next_restart() == pytest.approx(0.3)
    starter.failing = False
    assert pool.tend(0.31) == [0, 1]
    assert pool.running == 2


def test_healthy_needs_a_worker_that_stayed_up() -> None:
    pool = WorkerPool(2, Starter())
    assert not pool.healthy(0.0)
    pool.start_all(10.0)
    assert not pool.healthy(10.5)
    assert pool.next_healthy(10.5) == pytest.approx(10.0 + HEALTHY_AFTER)
    assert pool.healthy(10.0 + HEALTHY_AFTER)
    assert pool.next_healthy(12.0) is None
    for pid in pool.pids():
        pool.died(pid, 12.0)
    assert not pool.healthy(12.0)


def test_unknown_pid_is_not_a_worker() -> None:
    pool = WorkerPool(1, Starter())
    pool.start_all(0.0)
    assert pool.died(4242, 1.0) is None
    assert pool.running == 1
