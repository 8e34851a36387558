"""The backend monitor's state changes and log lines, fed samples on an explicit clock."""

from __future__ import annotations

import logging

import pytest

from pyresponder.endpoints import parse_endpoint
from pyresponder.monitor import BackendMonitor
from pyresponder.shared import SharedState
from pyresponder.syncstate import BackendSample, BackendView, SyncPolicy

POLICY = SyncPolicy(backend_timeout=10.0, max_offset=0.1, holdover=60.0)


def sample(at: float, leap: int = 0, stratum: int = 3) -> BackendSample:
    return BackendSample(leap, stratum, -20, b"GPS\0", 1 << 40, 0.001, 0.002, 1e-5, 1e-4, at)


@pytest.fixture
def monitor() -> BackendMonitor:
    # The endpoint is never polled here: samples are handed in directly.
    return BackendMonitor(parse_endpoint("127.0.0.1:9", 9), POLICY, SharedState(1), 1.0, 0.0)


def test_holdover_starts_and_ends_with_one_log_line_each(
    monitor: BackendMonitor, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="pyresponder.monitor")
    monitor.remember(sample(100.0))
    assert monitor.update(100.0)
    assert monitor.state is not None and monitor.state.synchronized
    monitor.remember(sample(101.0, leap=3, stratum=0))  # chronyd restarted
    assert monitor.update(101.0)
    assert monitor.state.holdover
    assert not monitor.update(102.0)  # still holdover: no new line
    monitor.remember(sample(105.0))
    assert monitor.update(105.0)
    assert not monitor.state.holdover
    messages = [record.getMessage() for record in caplog.records]
    assert sum("holdover started" in m for m in messages) == 1
    assert sum("holdover ended: backend synchronized again" in m for m in messages) == 1
    assert monitor.shared is not None
    assert monitor.shared.latest() == BackendView(sample(105.0), sample(105.0))
    monitor.close()


def test_holdover_running_out_says_unsynchronized(
    monitor: BackendMonitor, caplog: pytest.LogCaptureFixture
) -> None:
    monitor.remember(sample(100.0))
    monitor.update(100.0)
    monitor.update(120.0)  # silent past the timeout: holdover
    assert monitor.state is not None and monitor.state.holdover
    assert monitor.update(160.5)
    assert not monitor.state.synchronized
    messages = [record.getMessage() for record in caplog.records]
    assert any(m.startswith("holdover ended:") and "is over" in m for m in messages)
    assert any(m.startswith("unsynchronized:") for m in messages)
    monitor.close()


def test_without_shared_memory_it_still_decides() -> None:
    monitor = BackendMonitor(parse_endpoint("127.0.0.1:9", 9), POLICY, None, 1.0, 0.0)
    monitor.remember(sample(5.0))
    monitor.update(5.0)
    assert monitor.state is not None and monitor.state.synchronized
    assert len(monitor.state.header) == 24
    monitor.close()
