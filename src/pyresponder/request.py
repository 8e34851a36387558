"""The rules for answering one request: pure code, bytes and an explicit time in, a verdict and
reply bytes out. No sockets, no clock.

Every engine (batchio's per-packet loop, the whole-batch fast path in wholebatch, plainio) gets
its answers from here; the engines only move bytes between the kernel and their buffers. The
whole-batch path applies the same rules to many requests at once, through tables derived from
the functions below, and a property test proves the engines' replies identical.

A verdict is a non-negative ``REPLY*`` value (a reply was written) or a negative ``DROP_*`` reason.
The transmit timestamp (bytes 40-48) is not part of the rules: the transmitter writes it just
before the send.
"""

from __future__ import annotations

import struct
from typing import Final

from . import wire
from .ratelimit import ADMIT, DROP, KISS_OF_DEATH, LEAK, RateLimiter
from .shared import DROP_BASE, RATE_LIMITED, SEND_ERRORS

# Answered: normally, over the rate limit but leaked, or with a kiss-o'-death RATE.
REPLY: Final = ADMIT
REPLY_LEAKED: Final = LEAK
REPLY_KOD: Final = KISS_OF_DEATH
# Not answered, and why.
DROP_LENGTH: Final = -1  # shorter than 48 bytes, not a multiple of 4, or truncated
DROP_VERSION: Final = -2  # version 0 or above 4
DROP_MODE: Final = -3  # server, broadcast, control (6), private (7) or reserved mode
DROP_UNREACHABLE: Final = -4  # the reply cannot be sent: source port 0, broadcast destination
DROP_RATE: Final = -5  # over the rate limit

# The counter (shared.COUNTER_NAMES index) each drop reason adds to, indexed by the reason
# itself: a negative index counts from the end. An unreachable client is a send error.
DROP_COUNTER: Final = (
    RATE_LIMITED,  # DROP_RATE
    SEND_ERRORS,  # DROP_UNREACHABLE
    DROP_BASE - DROP_MODE,
    DROP_BASE - DROP_VERSION,
    DROP_BASE - DROP_LENGTH,
)

# A request whose mode depends on its source port (NTPv1 has no mode field).
DEPENDS_ON_PORT: Final = -100

_NS: Final = wire.NS_PER_S
_EPOCH: Final = wire.NTP_UNIX_OFFSET
_MASK32: Final = 0xFFFF_FFFF
_HEAD: Final = struct.Struct("!QQ")  # origin (the request's transmit, bit for bit), receive
_U64: Final = struct.Struct("!Q")
_KISS_LEAP: Final = wire.LEAP_UNSYNCHRONIZED << 6
_ANY_IPV4: Final = bytes(4)


def reply_mode(first_byte: int, length: int, source_port: int) -> int:
    """The mode to answer a request with, or a negative ``DROP_*`` reason.

    Follows chrony: mode 3 gets mode 4, mode 1 gets mode 2, an NTPv1 request (which has no mode
    field) gets mode 4 unless it comes from port 123. Everything else, including the control and
    private modes used for amplification attacks, is dropped.
    """
    if length < wire.PACKET_LEN or length & 3:
        return DROP_LENGTH
    version = (first_byte >> 3) & 7
    if version < 1 or version > 4:
        return DROP_VERSION
    mode = first_byte & 7
    if mode == wire.MODE_CLIENT:
        return wire.MODE_SERVER
    if mode == wire.MODE_SYMMETRIC_ACTIVE:
        return wire.MODE_SYMMETRIC_PASSIVE
    if mode == wire.MODE_RESERVED and version == 1 and source_port != wire.NTP_PORT:
        return wire.MODE_SERVER
    return DROP_MODE


def reply_mode_table() -> tuple[int, ...]:
    """``reply_mode`` for every possible first byte of a full-length request, as a lookup table.

    Bytes whose answer depends on the source port map to ``DEPENDS_ON_PORT``. Derived from
    ``reply_mode``, so the two cannot drift.
    """
    table = []
    for first in range(256):
        other_port = reply_mode(first, wire.PACKET_LEN, wire.NTP_PORT + 1)
        same_port = reply_mode(first, wire.PACKET_LEN, wire.NTP_PORT)
        table.append(other_port if other_port == same_port else DEPENDS_ON_PORT)
    return tuple(table)


_MODES: Final = reply_mode_table()
_PACKET_LEN: Final = wire.PACKET_LEN
_FRAC_MUL: Final = wire.FRACTION_MUL
_FRAC_SHIFT: Final = wire.FRACTION_SHIFT


def reply_first_bytes(leap_bits: int) -> bytes:
    """Request byte 0 -> reply byte 0 for the requests whose answer depends on nothing else;
    0 for the others (drops, NTPv1). ``leap_bits`` is the header's LI, already shifted."""
    table = bytearray(256)
    for first, mode in enumerate(reply_mode_table()):
        if mode > 0:
            table[first] = leap_bits | (first & 0x38) | mode
    return bytes(table)


def unicast_destination(destination: bytes, local: bytes = b"") -> bool:
    """Whether a request was sent to one of our unicast addresses, so that a reply can leave from
    it: not a broadcast or multicast address.

    ``destination`` is the packet's destination from IP_PKTINFO (4 bytes) or IPV6_PKTINFO (16).
    ``local`` is in_pktinfo's ipi_spec_dst where known: the kernel sets it to the destination for
    a local unicast address and to an interface address otherwise, which is how a subnet
    broadcast (127.255.255.255, 192.0.2.255) shows. It is 0.0.0.0 for a request that was queued
    before IP_PKTINFO was switched on (systemd opened the socket before the responder ran): then
    only the destination itself can tell.
    """
    if len(destination) == 16:
        if destination[0] == 0xFF:
            return False  # IPv6 multicast
        if destination[:12] != b"\0" * 10 + b"\xff\xff":
            return True
        destination = destination[12:]  # an IPv4 client of a dual-stack socket
    if destination == b"\xff\xff\xff\xff" or 224 <= destination[0] < 240:
        return False
    return not local or local in (destination, _ANY_IPV4)


def ntp_timestamp(unix_ns: int) -> int:
    """Unix nanoseconds to a 64-bit NTP timestamp, the way every engine stamps (a multiply and a
    shift instead of a division: at most one 2**-32 s unit below the exact value)."""
    seconds, nanos = divmod(unix_ns, _NS)
    return (((seconds + _EPOCH) & _MASK32) << 32) | ((nanos * wire.FRACTION_MUL)
                                                     >> wire.FRACTION_SHIFT)


def respond(
    out: bytearray,
    at: int,
    request: bytes | bytearray | memoryview,
    request_at: int,
    length: int,
    source_port: int,
    reachable: bool,
    client: int,
    receive_ns: int,
    leap_bits: int,
    limiter: RateLimiter | None,
) -> int:
    """The whole rule for one request: a verdict, and bytes 0-40 of the reply to
    ``request[request_at:]`` in ``out[at:]`` when there is one.

    ``out[at:at + 24]`` must hold the server's 24-byte header (``wire.server_header``: leap,
    stratum, precision, root delay and dispersion, refid, reference time) with the leap bits
    ``leap_bits``: the engines keep their reply slots as templates and only patch them. Version
    and poll are echoed from the request and its transmit timestamp becomes the origin timestamp
    bit for bit, which is all a data-minimized client needs. A kiss-o'-death (RFC 5905) says LI 3,
    stratum 0, refid "RATE" (verdict ``REPLY_KOD``): the engine puts its header back afterwards.

    ``length`` is the datagram's size (0 when it was truncated), ``reachable`` whether it was
    sent to a unicast address of ours (see ``unicast_destination``), ``client`` the rate
    limiter's key for the source, ``receive_ns`` its arrival (Unix ns, from the kernel).
    A reply that cannot be sent is ruled out first, before it costs a rate-limit token.
    """
    if source_port == 0 or not reachable:
        return DROP_UNREACHABLE
    first = request[request_at]
    mode = _MODES[first]  # reply_mode, as a table (the per-packet loop's hottest line)
    if length < _PACKET_LEN or length & 3:
        return DROP_LENGTH
    if mode < 0:
        if mode != DEPENDS_ON_PORT:
            return mode
        mode = reply_mode(first, length, source_port)
        if mode < 0:
            return mode
    verdict = REPLY
    if limiter is not None:
        verdict = limiter.check(client, receive_ns / _NS)
        if verdict == DROP:
            return DROP_RATE
    # The reply; ntp_timestamp inlined: this runs for every request off the whole-batch path.
    if verdict == REPLY_KOD:
        out[at] = _KISS_LEAP | (first & 0x38) | mode
        out[at + 1] = 0
        out[at + 12 : at + 16] = b"RATE"
    else:
        out[at] = leap_bits | (first & 0x38) | mode
    out[at + 2] = request[request_at + 2]
    seconds, nanos = divmod(receive_ns, _NS)
    _HEAD.pack_into(out, at + 24, _U64.unpack_from(request, request_at + 40)[0],
                    (((seconds + _EPOCH) & _MASK32) << 32) | ((nanos * _FRAC_MUL) >> _FRAC_SHIFT))
    return verdict
