"""The rules that decide whether a reply says synchronized."""

from __future__ import annotations

import pytest

from pyresponder import wire
from pyresponder.syncstate import (
    DISPERSION_RATE,
    NO_BACKEND,
    BackendSample,
    BackendView,
    SyncPolicy,
    evaluate,
    remember,
    root_dispersion,
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
    # The backend's own, plus half the loopback round trip and the measured offset.
    assert packet.root_dispersion == pytest.approx(0.02 + 1e-4 / 2 + 1e-5, abs=2e-5)


def test_root_dispersion_grows_15_ppm_of_the_sample_age() -> None:
    state = evaluate(sample(), 100.0 + 8.0, POLICY)
    expected = 0.02 + 1e-4 / 2 + 1e-5 + 8.0 * DISPERSION_RATE
    assert decode(state.header).root_dispersion == pytest.approx(expected, abs=2e-5)


@pytest.mark.parametrize("offset", [0.004, -0.004])
def test_root_dispersion_adds_half_the_delay_and_the_offset_magnitude(offset: float) -> None:
    measured = sample(root_dispersion=0.001, delay=0.002, offset=offset)
    assert root_dispersion(measured, 100.0) == pytest.approx(0.001 + 0.001 + 0.004)
    assert root_dispersion(measured, 110.0) == pytest.approx(0.006 + 10 * 15e-6)
    header = evaluate(measured, 110.0, POLICY).header
    assert decode(header).root_dispersion == pytest.approx(0.006 + 10 * 15e-6, abs=2e-5)


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


# --- holdover: the backend restarts (LI=3 for a while) or goes silent ---

HOLD = SyncPolicy(backend_timeout=10.0, max_offset=0.1, holdover=60.0)
GOOD = sample(received_at=100.0)


def history(*samples: BackendSample, policy: SyncPolicy = HOLD) -> BackendView:
    view = NO_BACKEND
    for each in samples:
        view = remember(view, each, policy)
    return view


def test_remember_keeps_the_last_servable_sample_as_the_anchor() -> None:
    view = history(GOOD, sample(leap=3, stratum=0, received_at=101.0))
    assert view.last_synchronized == GOOD
    assert view.latest is not None and view.latest.leap == 3
    assert history(sample(leap=3, received_at=5.0)).last_synchronized is None
    far = history(GOOD, sample(offset=0.5, received_at=102.0))
    assert far.last_synchronized == GOOD  # a far offset is not a state to fall back on


def test_unsynchronized_backend_after_a_synchronized_one_is_held_over() -> None:
    view = history(GOOD, sample(leap=3, stratum=0, received_at=101.0))
    state = evaluate(view, 104.0, HOLD)
    assert state.synchronized and state.holdover
    assert "holdover" in state.reason and "leap 3" in state.reason
    packet = decode(state.header)
    assert (packet.leap, packet.stratum, packet.refid) == (0, 2, bytes([192, 0, 2, 7]))
    # Root dispersion grows from the anchor's arrival, at 15 ppm/s.
    expected = 0.02 + 1e-4 / 2 + 1e-5 + 4.0 * DISPERSION_RATE
    assert packet.root_dispersion == pytest.approx(expected, abs=2e-5)


def test_holdover_is_counted_from_the_last_synchronized_sample() -> None:
    view = history(GOOD, sample(leap=3, stratum=0, received_at=150.0))
    assert evaluate(view, 160.0, HOLD).holdover
    state = evaluate(view, 160.1, HOLD)
    assert not state.synchronized and not state.holdover
    assert "holdover of 60 s is over" in state.reason
    assert_unsynchronized(state.header)


def test_silent_backend_is_held_over_until_the_holdover_ends() -> None:
    view = history(GOOD)
    assert evaluate(view, 111.0, HOLD).holdover  # silent past backend_timeout: holdover
    assert evaluate(view, 159.9, HOLD).synchronized
    assert not evaluate(view, 160.5, HOLD).synchronized
    assert "silent" in evaluate(view, 160.5, HOLD).reason


def test_holdover_zero_is_off() -> None:
    off = SyncPolicy(backend_timeout=10.0, max_offset=0.1, holdover=0.0)
    view = history(GOOD, sample(leap=3, stratum=0, received_at=101.0), policy=off)
    state = evaluate(view, 101.0, off)
    assert not state.synchronized and not state.holdover
    assert not evaluate(history(GOOD, policy=off), 110.5, off).synchronized


def test_no_holdover_without_a_synchronized_sample_before() -> None:
    view = history(sample(leap=3, stratum=0, received_at=100.0))
    assert not evaluate(view, 101.0, HOLD).synchronized
    assert not evaluate(NO_BACKEND, 101.0, HOLD).synchronized


@pytest.mark.parametrize("offset", [0.2, -0.2])
def test_no_holdover_when_an_unsynchronized_reply_shows_the_local_clock_far(offset: float) -> None:
    view = history(GOOD, sample(leap=3, stratum=0, offset=offset, received_at=101.0))
    state = evaluate(view, 101.5, HOLD)
    assert not state.synchronized
    assert "local clock" in state.reason


def test_holdover_dispersion_counts_the_larger_of_the_offsets_measured() -> None:
    view = history(GOOD, sample(leap=3, stratum=0, offset=-0.05, received_at=101.0))
    packet = decode(evaluate(view, 101.0, HOLD).header)
    expected = 0.02 + 1e-4 / 2 + 0.05 + 1.0 * DISPERSION_RATE
    assert packet.root_dispersion == pytest.approx(expected, abs=2e-5)


def test_backend_synchronized_again_ends_holdover() -> None:
    view = history(GOOD, sample(leap=3, stratum=0, received_at=101.0),
                   sample(stratum=3, received_at=105.0))
    state = evaluate(view, 105.0, HOLD)
    assert state.synchronized and not state.holdover
    assert state.stratum == 3


@pytest.mark.parametrize("leap", [wire.LEAP_ADD_SECOND, wire.LEAP_DELETE_SECOND])
def test_no_holdover_across_an_announced_leap_second(leap: int) -> None:
    view = history(sample(leap=leap, received_at=100.0), sample(leap=3, stratum=0,
                                                                 received_at=101.0))
    state = evaluate(view, 101.5, HOLD)
    assert not state.synchronized
    assert "leap second is announced" in state.reason
