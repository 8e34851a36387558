"""The request rules: pure functions, bytes and an explicit time in, verdict and bytes out."""

from __future__ import annotations

import os

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pyresponder import request, wire
from pyresponder.ratelimit import RateLimiter, RateLimitPolicy

HEADER = wire.server_header(0, 2, -24, 0.012, 0.034, bytes([192, 0, 2, 1]), 0xE000_0000_8000_0000)
NOW_NS = 1_795_000_000_123_456_789
SENTINEL = 0xA5


def ntp_request(version: int = 4, mode: int = 3, poll: int = 6, transmit: bytes = b"") -> bytes:
    transmit = transmit or os.urandom(8)
    return bytes([(version << 3) | mode, 0, poll]) + bytes(37) + transmit


def respond(data: bytes, port: int = 40000, reachable: bool = True, client: int = 1,
            receive_ns: int = NOW_NS, limiter: RateLimiter | None = None,
            header: bytes = HEADER) -> tuple[int, bytes]:
    """The verdict and the whole output buffer: the header template the engines keep in a reply
    slot, then a sentinel, so that a write past the reply's 40 bytes shows."""
    out = template(header)
    buffer = bytearray(data) + bytearray(max(0, 48 - len(data)))  # the engines' buffers are large
    verdict = request.respond(out, 0, buffer, 0, len(data), port, reachable, client, receive_ns,
                              header[0] & 0xC0, limiter)
    return verdict, bytes(out)


def template(header: bytes = HEADER) -> bytearray:
    return bytearray(header) + bytearray([SENTINEL]) * 176


@pytest.mark.parametrize("version", [1, 2, 3, 4])
def test_client_request_of_every_version_is_answered_in_mode_4(version: int) -> None:
    assert request.reply_mode(ntp_request(version)[0], 48, 40000) == wire.MODE_SERVER


def test_symmetric_active_is_answered_in_symmetric_passive() -> None:
    assert request.reply_mode(ntp_request(4, 1)[0], 48, 123) == wire.MODE_SYMMETRIC_PASSIVE


@pytest.mark.parametrize("mode", [2, 4, 5, 6, 7])
def test_modes_a_server_never_answers(mode: int) -> None:
    assert request.reply_mode(ntp_request(4, mode)[0], 48, 40000) == request.DROP_MODE
    assert respond(ntp_request(4, mode))[0] == request.DROP_MODE


def test_ntpv1_mode_0_is_answered_only_from_a_port_other_than_123() -> None:
    first = ntp_request(1, 0)[0]
    assert request.reply_mode(first, 48, 40000) == wire.MODE_SERVER
    assert request.reply_mode(first, 48, 123) == request.DROP_MODE
    assert request.reply_mode(ntp_request(4, 0)[0], 48, 40000) == request.DROP_MODE
    assert respond(ntp_request(1, 0), port=123)[0] == request.DROP_MODE
    verdict, out = respond(ntp_request(1, 0), port=124)
    assert verdict == request.REPLY
    assert out[0] & 0x3F == (1 << 3) | wire.MODE_SERVER


@pytest.mark.parametrize("version", [0, 5, 6, 7])
def test_unknown_versions_are_dropped(version: int) -> None:
    assert request.reply_mode(ntp_request(version)[0], 48, 40000) == request.DROP_VERSION


@pytest.mark.parametrize("length", [0, 1, 44, 47, 49, 50, 51, 70])
def test_short_or_unaligned_requests_are_dropped(length: int) -> None:
    assert request.reply_mode(0x23, length, 40000) == request.DROP_LENGTH


@pytest.mark.parametrize("length", [48, 52, 68, 72, 1024])
def test_longer_aligned_requests_with_extensions_or_mac_are_answered(length: int) -> None:
    assert request.reply_mode(0x23, length, 40000) == wire.MODE_SERVER


def test_reply_fields() -> None:
    req = ntp_request(version=3, poll=10, transmit=bytes(range(1, 9)))
    verdict, out = respond(req)
    assert verdict == request.REPLY
    packet = wire.parse_packet(out[:40] + bytes(8))
    assert (packet.leap, packet.version, packet.mode) == (0, 3, 4)
    assert packet.stratum == 2
    assert packet.poll == 10
    assert packet.precision == -24
    assert packet.refid == bytes([192, 0, 2, 1])
    assert packet.reference_ts == 0xE000_0000_8000_0000
    assert out[24:32] == bytes(range(1, 9))  # origin = request's transmit, bit for bit
    assert packet.receive_ts == request.ntp_timestamp(NOW_NS)
    assert out[40:] == bytes([SENTINEL]) * 160  # T3 is the transmitter's; nothing past it


def test_reply_carries_the_leap_indicator_of_the_header() -> None:
    header = wire.server_header(wire.LEAP_ADD_SECOND, 2, -20, 0, 0, b"GPS\0", 0)
    _, out = respond(ntp_request(4), header=header)
    assert out[0] >> 6 == wire.LEAP_ADD_SECOND
    assert out[0] & 7 == 4


def test_source_port_0_is_dropped_before_it_costs_a_rate_limit_token() -> None:
    limiter = RateLimiter(RateLimitPolicy(interval=1.0, burst=3))
    for _ in range(10):
        assert respond(ntp_request(), port=0, limiter=limiter)[0] == request.DROP_UNREACHABLE
    assert [respond(ntp_request(), limiter=limiter)[0] for _ in range(3)] == [request.REPLY] * 3


def test_unreachable_destination_is_dropped() -> None:
    verdict, out = respond(ntp_request(), reachable=False)
    assert verdict == request.DROP_UNREACHABLE
    assert out == template()


@pytest.mark.parametrize(("destination", "local", "unicast"), [
    (bytes([127, 0, 0, 2]), bytes([127, 0, 0, 2]), True),
    (bytes([192, 0, 2, 10]), b"", True),
    (bytes([127, 255, 255, 255]), bytes([127, 0, 0, 1]), False),  # subnet broadcast
    # Queued before IP_PKTINFO was on: the kernel leaves ipi_spec_dst 0.0.0.0.
    (bytes([127, 0, 0, 1]), bytes(4), True),
    (bytes([255, 255, 255, 255]), bytes(4), False),
    (bytes([224, 0, 1, 1]), bytes(4), False),
    (bytes([255, 255, 255, 255]), b"", False),
    (bytes([224, 0, 1, 1]), b"", False),
    (bytes([239, 1, 2, 3]), bytes([10, 0, 0, 1]), False),
    (bytes(15) + b"\x01", b"", True),  # ::1
    (bytes.fromhex("20010db8000000000000000000000001"), b"", True),
    (bytes.fromhex("ff020000000000000000000000000101"), b"", False),  # ff02::101
    (bytes(10) + b"\xff\xff" + bytes([127, 0, 0, 1]), b"", True),  # ::ffff:127.0.0.1
    (bytes(10) + b"\xff\xff" + bytes([255, 255, 255, 255]), b"", False),
    (bytes(10) + b"\xff\xff" + bytes([224, 0, 0, 1]), b"", False),
])
def test_unicast_destination(destination: bytes, local: bytes, unicast: bool) -> None:
    assert request.unicast_destination(destination, local) is unicast


def test_rate_limited_client_gets_leaks_kisses_and_drops_in_its_own_count() -> None:
    limiter = RateLimiter(RateLimitPolicy(interval=1.0, burst=3, leak=2, kod=2))
    verdicts = [respond(ntp_request(), client=9, limiter=limiter)[0] for _ in range(9)]
    assert verdicts[:3] == [request.REPLY] * 3
    # Over the limit: every 2nd leaked; of the others every 2nd kissed, the rest dropped.
    assert verdicts[3:] == [request.DROP_RATE, request.REPLY_LEAKED, request.REPLY_KOD,
                            request.REPLY_LEAKED, request.DROP_RATE, request.REPLY_LEAKED]


def test_kiss_of_death_bytes() -> None:
    limiter = RateLimiter(RateLimitPolicy(interval=1.0, burst=3, leak=0, kod=1))
    for _ in range(3):
        respond(ntp_request(), limiter=limiter)
    req = ntp_request(version=3, poll=7)
    verdict, out = respond(req, limiter=limiter)
    assert verdict == request.REPLY_KOD
    assert out[0] == (3 << 6) | (3 << 3) | 4  # LI 3, the request's version, mode 4
    assert out[1] == 0  # stratum 0
    assert out[2] == 7
    assert out[12:16] == b"RATE"
    assert out[24:32] == req[40:48]


@given(st.binary(min_size=0, max_size=200), st.integers(0, 65535), st.booleans())
def test_any_datagram_is_dropped_or_answered_within_its_own_length(
    data: bytes, port: int, reachable: bool
) -> None:
    verdict, out = respond(data, port=port, reachable=reachable)
    if verdict < 0:
        assert out == template()  # a drop writes nothing
        return
    assert len(data) >= 48 and len(data) % 4 == 0  # never larger than the request
    assert port != 0 and reachable
    assert out[40:] == bytes([SENTINEL]) * 160  # 40 bytes + the transmitter's 8: 48
    assert out[0] & 7 in (wire.MODE_SERVER, wire.MODE_SYMMETRIC_PASSIVE)
    assert out[24:32] == data[40:48]


@given(st.integers(0, 255), st.sampled_from([48, 52, 68, 1024]), st.integers(0, 65535))
def test_lookup_table_agrees_with_reply_mode(first: int, length: int, port: int) -> None:
    table = request.reply_mode_table()
    expected = request.reply_mode(first, length, port)
    if table[first] == request.DEPENDS_ON_PORT:
        assert (first >> 3) & 7 == 1 and first & 7 == 0  # NTPv1: no mode field
    else:
        assert table[first] == expected


@given(st.integers(0, 255), st.sampled_from([0, 1, 2, 3]))
def test_first_byte_table_agrees_with_respond(first: int, leap: int) -> None:
    header = bytes([leap << 6]) + HEADER[1:]
    data = bytes([first]) + ntp_request()[1:]
    verdict, out = respond(data, header=header)
    table = request.reply_first_bytes(leap << 6)
    if table[first]:
        assert verdict == request.REPLY
        assert out[0] == table[first]
    else:  # a drop, or NTPv1 (which depends on the port): the per-packet loop decides
        assert verdict < 0 or (first >> 3) & 7 == 1


@given(st.integers(0, 2**63))
def test_ntp_timestamp_is_within_one_unit_of_the_exact_conversion(unix_ns: int) -> None:
    assert 0 <= wire.ntp_from_unix_ns(unix_ns) - request.ntp_timestamp(unix_ns) <= 1
