"""Shared memory between supervisor and workers, across a real fork."""

from __future__ import annotations

import os

from pyresponder.shared import COUNTER_NAMES, SharedState
from pyresponder.syncstate import BackendSample

SAMPLE = BackendSample(1, 3, -22, b"ABCD", 77 << 32, 0.5, 0.25, -0.001, 0.0002, 42.5)


def test_empty_state_has_no_sample() -> None:
    assert SharedState(2).latest() is None


def test_sample_published_before_fork_is_seen_by_child_and_updates_after_fork_too() -> None:
    shared = SharedState(1)
    shared.publish(SAMPLE)
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(write_end)
        os.read(read_end, 1)  # wait until the parent has published the second sample
        latest = shared.latest()
        os._exit(0 if latest is not None and latest.stratum == 4 else 1)
    os.close(read_end)
    shared.publish(BackendSample(0, 4, -22, b"ABCD", 78 << 32, 0.5, 0.25, 0.0, 0.0, 43.0))
    os.write(write_end, b"x")
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert shared.sequence() == 4


def test_round_trip() -> None:
    shared = SharedState(1)
    shared.publish(SAMPLE)
    assert shared.latest() == SAMPLE


def test_counters_from_a_child_are_summed() -> None:
    shared = SharedState(2)
    pid = os.fork()
    if pid == 0:
        shared.store_counters(1, [5, 4, 1, 0, 0, 0, 0, 0])
        os._exit(0)
    os.waitpid(pid, 0)
    shared.store_counters(0, [10, 10, 0, 0, 0, 0, 0, 0])
    totals = shared.totals()
    assert set(totals) == set(COUNTER_NAMES)
    assert totals["received"] == 15
    assert totals["answered"] == 14
    assert totals["dropped_length"] == 1


def test_poller_stats() -> None:
    shared = SharedState(1)
    shared.record_poll(ok=True)
    shared.record_poll(ok=False)
    stats = shared.poller_stats()
    assert (stats.polls, stats.failures) == (2, 1)
