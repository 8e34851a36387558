"""The worker clears an announced leap indicator at the leap, not at the next backend poll."""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime

import pytest

from pyresponder import wire
from pyresponder.shared import SharedState
from pyresponder.syncstate import BackendSample, SyncPolicy
from pyresponder.worker import Worker

LEAP_NS = int(datetime(2017, 1, 1, tzinfo=UTC).timestamp()) * wire.NS_PER_S


def test_worker_clears_the_leap_indicator_at_the_leap(monkeypatch: pytest.MonkeyPatch) -> None:
    shared = SharedState(1)
    now = time.monotonic()
    shared.publish(BackendSample(
        leap=wire.LEAP_ADD_SECOND, stratum=2, precision=-20, refid=b"GPS\0", reference_ts=0,
        root_delay=0.0, root_dispersion=0.0, offset=0.0, delay=0.0, received_at=now,
    ))
    worker = Worker(0, [], shared, SyncPolicy(), os.getppid())
    # Half a second before the leap, by the wall clock.
    monkeypatch.setattr(time, "time_ns", lambda: LEAP_NS - wire.NS_PER_S // 2)
    worker._refresh(now)
    assert worker.leap_bits >> 6 == wire.LEAP_ADD_SECOND
    assert worker.leap.clears_at == pytest.approx(now + 0.5)
    # The kernel steps the wall clock back at the leap; the backend still says LI=1.
    monkeypatch.setattr(time, "time_ns", lambda: LEAP_NS - wire.NS_PER_S + 1000)
    worker._refresh(now + 0.5)
    assert worker.leap_bits == 0
    assert worker.header[0] >> 6 == wire.LEAP_NONE
