"""The wire format: pure functions, bytes in and bytes out (the rules are in test_request)."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pyresponder import wire


def test_server_header_fields() -> None:
    header = wire.server_header(
        1, 2, -24, 0.012, 0.034, bytes([192, 0, 2, 1]), 0xE000_0000_8000_0000
    )
    packet = wire.parse_packet(header + bytes(24))
    assert (packet.leap, packet.stratum, packet.precision) == (1, 2, -24)
    assert packet.root_delay == pytest.approx(0.012, abs=2e-5)
    assert packet.root_dispersion == pytest.approx(0.034, abs=2e-5)
    assert packet.refid == bytes([192, 0, 2, 1])
    assert packet.reference_ts == 0xE000_0000_8000_0000


def test_timestamp_conversion_round_trip() -> None:
    now_ns = 1_795_000_000_123_456_789
    ntp = wire.ntp_from_unix_ns(now_ns)
    assert ntp >> 32 == (now_ns // 1_000_000_000 + wire.NTP_UNIX_OFFSET) & 0xFFFFFFFF
    assert abs(wire.unix_ns_from_ntp(ntp, now_ns) - now_ns) <= 1


def test_timestamps_after_the_2036_era_rollover() -> None:
    after_rollover_ns = (2**32 - wire.NTP_UNIX_OFFSET + 100) * 1_000_000_000
    ntp = wire.ntp_from_unix_ns(after_rollover_ns)
    assert ntp >> 32 == 100  # era 1 starts again from zero
    assert abs(wire.unix_ns_from_ntp(ntp, after_rollover_ns - 10**9) - after_rollover_ns) <= 1


def test_short_format_saturates() -> None:
    assert wire.short_from_seconds(-1.0) == 0
    assert wire.short_from_seconds(1.5) == 0x0001_8000
    assert wire.short_from_seconds(1e9) == 0xFFFF_FFFF


def test_client_request_is_data_minimized() -> None:
    packet = wire.client_request(b"ABCDEFGH", version=4)
    assert len(packet) == 48
    assert packet[0] == 0x23
    assert packet[1:40] == bytes(39)
    assert packet[40:] == b"ABCDEFGH"


def test_parse_rejects_short_data() -> None:
    with pytest.raises(ValueError, match="too short"):
        wire.parse_packet(b"\x23" * 47)


def test_refid_text() -> None:
    assert wire.refid_text(b"GPS\0", 1) == "GPS"
    assert wire.refid_text(b"RATE", 0) == "RATE"
    assert wire.refid_text(bytes([192, 0, 2, 1]), 2) == "192.0.2.1"


@given(st.integers(0, 2**63))
def test_ntp_timestamp_is_64_bits(unix_ns: int) -> None:
    assert 0 <= wire.ntp_from_unix_ns(unix_ns) < 2**64
    struct.pack("!Q", wire.ntp_from_unix_ns(unix_ns))


def test_offset_and_delay() -> None:
    base = 1_795_000_000 * 10**9
    reply = bytearray(48)
    # Server 5 ms ahead; 1 ms each way; 0.5 ms inside the server.
    t1, t2, t3, t4 = base, base + 6_000_000, base + 6_500_000, base + 2_500_000
    struct.pack_into("!QQ", reply, 32, wire.ntp_from_unix_ns(t2), wire.ntp_from_unix_ns(t3))
    offset, delay = wire.offset_and_delay(wire.parse_packet(reply), t1, t4)
    assert offset == pytest.approx(0.005, abs=1e-8)
    assert delay == pytest.approx(0.002, abs=1e-8)


@given(st.integers(0, 999_999_999))
def test_hot_loop_fraction_is_within_one_unit_of_the_exact_one(nanos: int) -> None:
    fast = (nanos * wire.FRACTION_MUL) >> wire.FRACTION_SHIFT
    exact = (nanos << 32) // wire.NS_PER_S
    assert 0 <= exact - fast <= 1
