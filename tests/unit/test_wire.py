"""The wire format: pure functions, bytes in and bytes out."""

from __future__ import annotations

import os
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pyresponder import wire

HEADER = wire.server_header(0, 2, -24, 0.012, 0.034, bytes([192, 0, 2, 1]), 0xE000_0000_8000_0000)


def request(version: int = 4, mode: int = 3, poll: int = 6, transmit: bytes = b"") -> bytes:
    transmit = transmit or os.urandom(8)
    return bytes([(version << 3) | mode, 0, poll]) + bytes(37) + transmit


@pytest.mark.parametrize("version", [1, 2, 3, 4])
def test_client_request_of_every_version_is_answered_in_mode_4(version: int) -> None:
    assert wire.reply_mode(request(version)[0], 48, 40000) == wire.MODE_SERVER


def test_symmetric_active_is_answered_in_symmetric_passive() -> None:
    assert wire.reply_mode(request(4, 1)[0], 48, 123) == wire.MODE_SYMMETRIC_PASSIVE


@pytest.mark.parametrize("mode", [2, 4, 5, 6, 7])
def test_modes_a_server_never_answers(mode: int) -> None:
    assert wire.reply_mode(request(4, mode)[0], 48, 40000) == wire.DROP_MODE


def test_ntpv1_mode_0_is_answered_only_from_a_port_other_than_123() -> None:
    first = request(1, 0)[0]
    assert wire.reply_mode(first, 48, 40000) == wire.MODE_SERVER
    assert wire.reply_mode(first, 48, 123) == wire.DROP_MODE
    assert wire.reply_mode(request(4, 0)[0], 48, 40000) == wire.DROP_MODE


@pytest.mark.parametrize("version", [0, 5, 6, 7])
def test_unknown_versions_are_dropped(version: int) -> None:
    assert wire.reply_mode(request(version)[0], 48, 40000) == wire.DROP_VERSION


@pytest.mark.parametrize("length", [0, 1, 44, 47, 49, 50, 51, 70])
def test_short_or_unaligned_requests_are_dropped(length: int) -> None:
    assert wire.reply_mode(0x23, length, 40000) == wire.DROP_LENGTH


@pytest.mark.parametrize("length", [48, 52, 68, 72, 1024])
def test_longer_aligned_requests_with_extensions_or_mac_are_answered(length: int) -> None:
    assert wire.reply_mode(0x23, length, 40000) == wire.MODE_SERVER


def test_reply_fields() -> None:
    req = request(version=3, poll=10, transmit=bytes(range(1, 9)))
    out = bytearray(48)
    receive, transmit = 0x1111_2222_3333_4444, 0x5555_6666_7777_8888
    wire.write_reply(out, req, wire.MODE_SERVER, HEADER, receive, transmit)
    packet = wire.parse_packet(out)
    assert (packet.leap, packet.version, packet.mode) == (0, 3, 4)
    assert packet.stratum == 2
    assert packet.poll == 10
    assert packet.precision == -24
    assert packet.root_delay == pytest.approx(0.012, abs=2e-5)
    assert packet.root_dispersion == pytest.approx(0.034, abs=2e-5)
    assert packet.refid == bytes([192, 0, 2, 1])
    assert packet.reference_ts == 0xE000_0000_8000_0000
    assert out[24:32] == bytes(range(1, 9))  # origin = request's transmit, bit for bit
    assert packet.receive_ts == 0x1111_2222_3333_4444
    assert packet.transmit_ts == 0x5555_6666_7777_8888


def test_reply_carries_the_leap_indicator_of_the_header() -> None:
    header = wire.server_header(wire.LEAP_ADD_SECOND, 2, -20, 0, 0, b"GPS\0", 0)
    out = bytearray(48)
    wire.write_reply(out, request(4), wire.MODE_SERVER, header, 1, 2)
    assert out[0] >> 6 == wire.LEAP_ADD_SECOND
    assert out[0] & 7 == 4


def test_data_minimized_request_gets_its_transmit_echoed() -> None:
    transmit = os.urandom(8)
    req = bytes([0x23]) + bytes(39) + transmit
    out = bytearray(48)
    wire.write_reply(out, req, wire.reply_mode(req[0], len(req), 50000), HEADER, 1, 2)
    assert bytes(out[24:32]) == transmit


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


@given(st.binary(min_size=0, max_size=200), st.integers(0, 65535))
def test_any_datagram_is_either_dropped_or_answered_with_48_bytes(data: bytes, port: int) -> None:
    mode = wire.reply_mode(data[0] if data else 0, len(data), port)
    if mode < 0:
        return
    out = bytearray(48)
    wire.write_reply(out, data, mode, HEADER, 1, 2)
    assert len(out) == 48 <= len(data)  # never larger than the request: no amplification
    assert out[0] & 7 in (wire.MODE_SERVER, wire.MODE_SYMMETRIC_PASSIVE)
    assert out[24:32] == data[40:48]


@given(st.integers(0, 2**63))
def test_ntp_timestamp_is_64_bits(unix_ns: int) -> None:
    assert 0 <= wire.ntp_from_unix_ns(unix_ns) < 2**64
    struct.pack("!Q", wire.ntp_from_unix_ns(unix_ns))


@given(st.integers(0, 255), st.sampled_from([48, 52, 68, 1024]), st.integers(0, 65535))
def test_lookup_table_agrees_with_reply_mode(first: int, length: int, port: int) -> None:
    table = wire.reply_mode_table()
    expected = wire.reply_mode(first, length, port)
    if table[first] == wire.DEPENDS_ON_PORT:
        assert (first >> 3) & 7 == 1 and first & 7 == 0  # NTPv1: no mode field
    else:
        assert table[first] == expected


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
