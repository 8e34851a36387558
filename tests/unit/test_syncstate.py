"""The rules that decide whether a reply says synchronized."""

from __future__ import annotations

import pytest

from pyresponder import wire
from pyresponder.syncstate import (
    DISPERSION_RATE,
    BackendSample,
    SyncPolicy,
    evaluate,
)

POLICY = SyncPolicy(backend_timeout=10.0, max_offset=0.1)


def sample(**changes: object) -> BackendSample:
    fields: dict[str, object] = {
        "leap": 0,
        "stratum": 2,
        "precision": -23,
        "refid": bytes([192, 0, 2, 7]),
        "reference_ts": 123 << 32,
        "root_delay": 0.01,
        "root_dispersion": 0.02,
        "offset": 1e-5,
        "delay": 1e-4,
        "received_at": 100.0,
    }
    fields.update(changes)
    return BackendSample(**fields)  # type: ignore[arg-type]


def decode(header: bytes) -> wire.Packet:
    return wire.parse_packet(header + bytes(24))


def assert_unsynchronized(header: bytes) -> None:
    packet = decode(header)
    assert packet.leap == wire.LEAP_UNSYNCHRONIZED
    assert packet.stratum == 0
    assert packet.refid == bytes(4)


def test_no_backend_reply_yet_is_unsynchronized() -> None:
    state = evaluate(None, 5.0, POLICY)
    assert not state.synchronized
    assert_unsynchronized(state.header)


def test_fresh_sample_is_served_with_backend_fields() -> None:
    state = evaluate(sample(), 100.0, POLICY)
    assert state.synchronized
    packet = decode(state.header)
    assert (packet.leap, packet.stratum, packet.precision) == (0, 2, -23)
    assert packet.refid == bytes([192, 0, 2, 7])
    assert packet.reference_ts == 123 << 32
    assert packet.root_delay == pytest.approx(0.01, abs=2e-5)
    assert packet.root_dispersion == pytest.approx(0.02, abs=2e-5)


def test_root_dispersion_grows_15_ppm_of_the_sample_age() -> None:
    state = evaluate(sample(), 100.0 + 8.0, POLICY)
    expected = 0.02 + 8.0 * DISPERSION_RATE
    assert decode(state.header).root_dispersion == pytest.approx(expected, abs=2e-5)


def test_silent_backend_past_the_timeout_is_unsynchronized() -> None:
    assert evaluate(sample(), 110.0, POLICY).synchronized
    state = evaluate(sample(), 110.5, POLICY)
    assert not state.synchronized
    assert "silent" in state.reason
    assert_unsynchronized(state.header)


def test_backend_leap_3_is_unsynchronized() -> None:
    state = evaluate(sample(leap=3), 100.0, POLICY)
    assert not state.synchronized
    assert_unsynchronized(state.header)


@pytest.mark.parametrize("stratum", [0, 16, 255])
def test_backend_stratum_out_of_range_is_unsynchronized(stratum: int) -> None:
    assert not evaluate(sample(stratum=stratum), 100.0, POLICY).synchronized


@pytest.mark.parametrize("offset", [0.2, -0.2])
def test_local_clock_far_from_backend_is_unsynchronized(offset: float) -> None:
    state = evaluate(sample(offset=offset), 100.0, POLICY)
    assert not state.synchronized
    assert "local clock" in state.reason


def test_leap_second_warning_is_passed_on() -> None:
    state = evaluate(sample(leap=wire.LEAP_ADD_SECOND), 100.0, POLICY)
    assert state.synchronized
    assert decode(state.header).leap == wire.LEAP_ADD_SECOND


def test_never_leap_0_with_stratum_0() -> None:
    for candidate in (None, sample(stratum=0), sample(leap=3), sample(received_at=0.0)):
        header = evaluate(candidate, 100.0, POLICY).header
        packet = decode(header)
        assert not (packet.leap == 0 and packet.stratum == 0)
