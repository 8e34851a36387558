"""Shared memory between supervisor and workers, across real forks, killed writers included."""

from __future__ import annotations

import os
import signal
import socket
import time

from pyresponder.shared import _SLOT_SIZE, _SLOTS_AT, COUNTER_NAMES, SharedState
from pyresponder.sockets import prepare
from pyresponder.syncstate import NO_BACKEND, BackendSample, BackendView, SyncPolicy
from pyresponder.worker import Worker

SAMPLE = BackendSample(1, 3, -22, b"ABCD", 77 << 32, 0.5, 0.25, -0.001, 0.0002, 42.5)
OTHER = BackendSample(0, 4, -22, b"ABCD", 78 << 32, 0.5, 0.25, 0.0, 0.0, 43.0)
READ_BOUND = 0.5  # seconds: a read that takes longer than this is a reader spinning


def test_empty_state_has_no_sample() -> None:
    assert SharedState(2).latest() == NO_BACKEND


def test_sample_published_before_fork_is_seen_by_child_and_updates_after_fork_too() -> None:
    shared = SharedState(1)
    shared.publish(BackendView(SAMPLE, SAMPLE))
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(write_end)
        os.read(read_end, 1)  # wait until the parent has published the second sample
        view = shared.latest()
        ok = view.latest == OTHER and view.last_synchronized == SAMPLE
        os._exit(0 if ok else 1)
    os.close(read_end)
    shared.publish(BackendView(OTHER, SAMPLE))
    os.write(write_end, b"x")
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert shared.sequence() == 2


def test_a_bare_sample_is_a_view_without_anchor() -> None:
    shared = SharedState(1)
    shared.publish(SAMPLE)
    assert shared.latest() == BackendView(SAMPLE, None)


def test_round_trip_with_and_without_an_anchor() -> None:
    shared = SharedState(1)
    shared.publish(BackendView(SAMPLE, None))
    assert shared.latest() == BackendView(SAMPLE, None)
    shared.publish(BackendView(OTHER, SAMPLE))
    assert shared.latest() == BackendView(OTHER, SAMPLE)


def _kill_writer_mid_publish(shared: SharedState) -> None:
    """A real writer process publishes OTHER and is SIGKILLed between the two slot halves."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_end)

        def stop_here() -> None:
            os.write(write_end, b"x")  # half the slot is written: tell the parent, then hang
            time.sleep(60)

        shared.publish_hook = stop_here
        shared.publish(BackendView(OTHER, SAMPLE))
        os._exit(3)  # never reached
    os.close(write_end)
    assert os.read(read_end, 1) == b"x"
    os.kill(pid, signal.SIGKILL)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status)
    os.close(read_end)


def test_writer_killed_mid_publish_leaves_readers_the_last_complete_view() -> None:
    shared = SharedState(1)
    shared.publish(BackendView(SAMPLE, SAMPLE))
    _kill_writer_mid_publish(shared)
    began = time.monotonic()
    for _ in range(100):
        assert shared.latest() == BackendView(SAMPLE, SAMPLE)
    assert time.monotonic() - began < READ_BOUND
    # The supervisor (a new writer in the same memory) publishes again and readers follow.
    shared.publish(BackendView(OTHER, None))
    assert shared.latest() == BackendView(OTHER, None)


def _tear_active_slot(shared: SharedState) -> None:
    """What a reader on a weakly ordered CPU may see: the index's slot half rewritten."""
    at = _SLOTS_AT + (shared.sequence() & 1) * _SLOT_SIZE
    shared._map[at + 20 : at + 40] = os.urandom(20)


def test_torn_slot_is_detected_and_the_reader_returns_its_last_good_view_in_bounded_time(
) -> None:
    shared = SharedState(1)
    shared.publish(BackendView(SAMPLE, SAMPLE))
    assert shared.latest() == BackendView(SAMPLE, SAMPLE)
    _tear_active_slot(shared)
    began = time.monotonic()
    assert shared.latest() == BackendView(SAMPLE, SAMPLE)  # never the torn bytes
    assert time.monotonic() - began < READ_BOUND
    child = os.fork()
    if child == 0:  # a reader that never saw a good view gets "nothing known", not garbage
        shared._last_good = NO_BACKEND
        os._exit(0 if shared.latest() == NO_BACKEND else 1)
    _, status = os.waitpid(child, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def test_a_worker_reading_a_torn_view_still_stops_on_sigterm() -> None:
    """A real Worker whose shared view is torn for good: SIGTERM ends it within a bound."""
    shared = SharedState(1)
    shared.publish(BackendView(SAMPLE, SAMPLE))
    _kill_writer_mid_publish(shared)
    _tear_active_slot(shared)  # the worst case: no complete slot where the index points
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    listener = prepare(sock, 0)
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_end)
        os.write(write_end, b"x")
        code = 1
        try:
            code = Worker(0, [listener], shared, SyncPolicy(), os.getppid(), io="plain").run()
        finally:
            os._exit(code)
    os.close(write_end)
    assert os.read(read_end, 1) == b"x"
    os.close(read_end)
    time.sleep(0.5)  # several refreshes, each reading the torn view
    assert os.waitpid(pid, os.WNOHANG) == (0, 0)  # still running, not crashed
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            assert os.waitstatus_to_exitcode(status) == 0
            break
        time.sleep(0.02)
    else:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        raise AssertionError("the worker did not stop within 3 s of SIGTERM")
    sock.close()


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
