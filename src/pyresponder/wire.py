"""NTP wire format: pure functions, bytes in and bytes out, no I/O and no clock reads.

Timestamps are handled as raw 64-bit NTP values (32.32 fixed point seconds since 1900, modulo the
era) so the hot path never converts to floats.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Final

PACKET_LEN: Final = 48
NTP_UNIX_OFFSET: Final = 2_208_988_800  # seconds from 1900-01-01 to 1970-01-01
NS_PER_S: Final = 1_000_000_000
# Nanoseconds to 2**-32 s units as a multiply and a shift, (ns * 2**62 // 1e9) >> 30: what the
# hot loop uses instead of ntp_from_unix_ns's division (the error is below one unit).
FRACTION_SHIFT: Final = 30
FRACTION_MUL: Final = (1 << (32 + FRACTION_SHIFT)) // NS_PER_S
_ERA: Final = 1 << 64  # one NTP era in 2**-32 s units

MODE_RESERVED: Final = 0
MODE_SYMMETRIC_ACTIVE: Final = 1
MODE_SYMMETRIC_PASSIVE: Final = 2
MODE_CLIENT: Final = 3
MODE_SERVER: Final = 4

LEAP_NONE: Final = 0
LEAP_ADD_SECOND: Final = 1
LEAP_DELETE_SECOND: Final = 2
LEAP_UNSYNCHRONIZED: Final = 3

NTP_PORT: Final = 123

_HEADER: Final = struct.Struct("!BBbbII4sQQQQ")
_SERVER_PART: Final = struct.Struct("!BBbbII4sQ")  # the first 24 bytes, shared by all replies
_U64: Final = struct.Struct("!Q")


def server_header(
    leap: int,
    stratum: int,
    precision: int,
    root_delay: float,
    root_dispersion: float,
    refid: bytes,
    reference_ts: int,
) -> bytes:
    """Build the 24 leading bytes of every reply: the state a server shares with all clients."""
    if len(refid) != 4:
        raise ValueError("refid must be 4 bytes")
    return _SERVER_PART.pack(
        (leap & 3) << 6,
        stratum & 0xFF,
        0,
        max(-128, min(127, precision)),
        short_from_seconds(root_delay),
        short_from_seconds(root_dispersion),
        refid,
        reference_ts & 0xFFFF_FFFF_FFFF_FFFF,
    )


def client_request(transmit: bytes, version: int = 4) -> bytes:
    """A 48-byte mode-3 request carrying ``transmit`` (8 bytes) as its transmit timestamp.

    Every other field is zero, as a data-minimized client (RFC 9109 style) sends it.
    """
    if len(transmit) != 8:
        raise ValueError("transmit timestamp must be 8 bytes")
    return bytes([(version << 3) | MODE_CLIENT]) + bytes(39) + transmit


@dataclass(frozen=True, slots=True)
class Packet:
    """A decoded NTP packet header (extension fields and MACs are ignored)."""

    leap: int
    version: int
    mode: int
    stratum: int
    poll: int
    precision: int
    root_delay: float
    root_dispersion: float
    refid: bytes
    reference_ts: int
    origin_ts: int
    receive_ts: int
    transmit_ts: int

    @property
    def origin_raw(self) -> bytes:
        return _U64.pack(self.origin_ts)


def parse_packet(data: bytes | bytearray | memoryview) -> Packet:
    """Decode the 48-byte header; raises ValueError when the data cannot be an NTP packet."""
    if len(data) < PACKET_LEN:
        raise ValueError(f"NTP packet too short: {len(data)} bytes")
    (
        first,
        stratum,
        poll,
        precision,
        root_delay,
        root_dispersion,
        refid,
        reference_ts,
        origin_ts,
        receive_ts,
        transmit_ts,
    ) = _HEADER.unpack_from(data)
    return Packet(
        leap=first >> 6,
        version=(first >> 3) & 7,
        mode=first & 7,
        stratum=stratum,
        poll=poll,
        precision=precision,
        root_delay=root_delay / 65536.0,
        root_dispersion=root_dispersion / 65536.0,
        refid=refid,
        reference_ts=reference_ts,
        origin_ts=origin_ts,
        receive_ts=receive_ts,
        transmit_ts=transmit_ts,
    )


def short_from_seconds(seconds: float) -> int:
    """NTP short format (16.16 fixed point), saturating instead of wrapping."""
    if seconds <= 0.0:
        return 0
    return min(int(seconds * 65536.0 + 0.5), 0xFFFF_FFFF)


def ntp_from_unix_ns(unix_ns: int) -> int:
    """Unix time in nanoseconds to a 64-bit NTP timestamp (wraps at the 2036 era boundary)."""
    seconds, nanos = divmod(unix_ns, NS_PER_S)
    return (((seconds + NTP_UNIX_OFFSET) & 0xFFFF_FFFF) << 32) | ((nanos << 32) // NS_PER_S)


def unix_ns_from_ntp(timestamp: int, pivot_unix_ns: int) -> int:
    """A 64-bit NTP timestamp to Unix nanoseconds, in the era closest to ``pivot_unix_ns``."""
    pivot = (pivot_unix_ns + NTP_UNIX_OFFSET * NS_PER_S) * (1 << 32) // NS_PER_S
    delta = (timestamp - pivot) % _ERA
    if delta >= _ERA // 2:
        delta -= _ERA
    ntp_units = pivot + delta
    return ntp_units * NS_PER_S // (1 << 32) - NTP_UNIX_OFFSET * NS_PER_S


def offset_and_delay(packet: Packet, sent_ns: int, received_ns: int) -> tuple[float, float]:
    """A client's clock offset and round-trip delay, in seconds, from a server's reply.

    ``sent_ns`` and ``received_ns`` are the client's own Unix times of request and reply (T1,
    T4); the reply carries T2 and T3. Offset is server time minus client time (RFC 5905).
    """
    t2 = unix_ns_from_ntp(packet.receive_ts, sent_ns)
    t3 = unix_ns_from_ntp(packet.transmit_ts, sent_ns)
    offset = ((t2 - sent_ns) + (t3 - received_ns)) / 2e9
    delay = max((received_ns - sent_ns) - (t3 - t2), 0) / 1e9
    return offset, delay


def refid_text(refid: bytes, stratum: int) -> str:
    """Human form of a refid: ASCII for stratum 0/1 (kiss codes, clock names), else IPv4."""
    if stratum <= 1:
        return refid.rstrip(b"\0").decode("ascii", "replace")
    return ".".join(str(b) for b in refid)
