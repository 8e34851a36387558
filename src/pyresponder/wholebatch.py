"""The whole-batch fast path: a recvmmsg batch answered without a per-packet Python loop.

Pure, like the request rules it applies: it reads the buffers one recvmmsg filled and writes the
replies (all but the transmit timestamp, which the transmitter adds); no syscall, no clock.

Under load almost every batch is plain: 48-byte client requests, each with the same ancillary
data (a kernel timestamp, and on wildcard sockets a PKTINFO), from a port other than 0 and sent to
a unicast address. Such a batch is decoded with one ``struct`` format that spans all of its
slots, checked with C-level operations (``tuple.count``, ``bytes.translate``, ``in``), its
timestamps converted with ``map`` over ``operator`` functions, and written back with
extended-slice assignments and one ``pack_into``: a few dozen C calls per batch whatever its
size, instead of a dozen bytecode-level steps per packet.

The rules are the request core's (``request``): the first-byte table is derived from
``request.reply_mode``, destinations are judged by ``request.unicast_destination``. Anything the
tables cannot decide (a short or long request, a drop, NTPv1, a port-0 source, an unusual
destination or ancillary layout, rate limiting) makes ``answer`` return -1 with nothing written,
and the caller's per-packet loop, which asks ``request.respond`` about each request, takes the
batch. A property test proves both give the same bytes.
"""

from __future__ import annotations

import socket
import struct
from functools import cache
from itertools import repeat
from operator import add, mul, or_, rshift
from typing import Final

from . import mmsg, request, wire
from .sockets import SCM_TIMESTAMPNS

MIN_BATCH: Final = 4  # below this, the per-packet loop is as cheap
_NS: Final = wire.NS_PER_S
_EPOCH: Final = wire.NTP_UNIX_OFFSET
_FRAC_SHIFT: Final = wire.FRACTION_SHIFT
_FRAC_MUL: Final = wire.FRACTION_MUL
_SOL_SOCKET: Final = int(socket.SOL_SOCKET)
_PER_REPLY: Final = 4  # arguments per reply in Layout.replies: header, origin, rx s, rx fraction
_ERA: Final = 1 << 32  # NTP seconds wrap here (2036)
_FIRST_BYTES: Final = {leap << 6: request.reply_first_bytes(leap << 6) for leap in range(4)}


class Layout:
    """Formats for one socket's buffers; one Struct per batch size, built on first use."""

    def __init__(self, ipv6: bool, wildcard: bool, pktinfo: tuple[int, int]) -> None:
        self.ipv6 = ipv6
        self.wildcard = wildcard
        self.pktinfo = pktinfo
        self.header = bytes(24)
        self.result_one = (
            f"{mmsg.CONTROLLEN_AT}xNi{mmsg.LEN_AT - mmsg.FLAGS_AT - 4}x"
            f"I{mmsg.MMSG_SIZE - mmsg.LEN_AT - 4}x"
        )
        timestamp = "8xiiqq"  # cmsghdr (length skipped), level, type, struct timespec
        if not wildcard:
            self.control_one, self.values = timestamp, 4
            self.expected_controllen = socket.CMSG_SPACE(16)
        elif ipv6:  # in6_pktinfo: address, ifindex
            self.control_one, self.values = timestamp + "8xii16sI", 8
            self.expected_controllen = socket.CMSG_SPACE(16) + socket.CMSG_SPACE(20)
        else:  # in_pktinfo: ifindex, spec_dst (the local address), addr (the destination)
            self.control_one, self.values = timestamp + "8xii4x4s4s", 8
            self.expected_controllen = socket.CMSG_SPACE(16) + socket.CMSG_SPACE(12)
        used = struct.calcsize("@" + self.control_one)
        self.control_one += f"{mmsg.RX_CONTROL_SIZE - used}x"
        if ipv6:  # cmsghdr + in6_pktinfo, padded to the slot
            self.tx_one = f"Nii16sI{mmsg.TX_CONTROL_SIZE - 36}x"
        else:  # cmsghdr + in_pktinfo (ifindex 0: routing picks the interface)
            self.tx_one = f"Niii4s4s{mmsg.TX_CONTROL_SIZE - 28}x"
        self.tx_cmsg_len = socket.CMSG_LEN(20 if ipv6 else 12)
        self._arguments: dict[int, list[object]] = {}
        self._unicast: dict[bytes, bool] = {}  # destination -> request.unicast_destination

    def set_header(self, header: bytes) -> None:
        self.header = header
        self._arguments.clear()

    @cache  # noqa: B019 (one Layout per socket, for the worker's life)
    def results(self, count: int) -> struct.Struct:
        return struct.Struct("@" + self.result_one * count)

    @cache  # noqa: B019
    def controls(self, count: int) -> struct.Struct:
        return struct.Struct("@" + self.control_one * count)

    @cache  # noqa: B019
    def origins(self, count: int) -> struct.Struct:
        return struct.Struct(("40x8s" + f"{mmsg.RECEIVE_SIZE - 48}x") * count)

    @cache  # noqa: B019
    def replies(self, count: int) -> struct.Struct:
        """Bytes 0-40 of ``count`` consecutive replies: header, origin, receive seconds and
        fraction (the transmit timestamp's 8 bytes are left zero for the transmitter)."""
        return struct.Struct(">" + "24s8sII8x" * count)

    @cache  # noqa: B019
    def tx_controls(self, count: int) -> struct.Struct:
        return struct.Struct("@" + self.tx_one * count)

    def arguments(self, count: int) -> list[object]:
        """The argument list for ``replies(count)``, headers filled in."""
        arguments = self._arguments.get(count)
        if arguments is None:
            arguments = [b""] * (_PER_REPLY * count)
            arguments[0::_PER_REPLY] = [self.header] * count
            self._arguments[count] = arguments
        return arguments

    @cache  # noqa: B019
    def tx_control_arguments(self, count: int) -> list[object]:
        level, kind = self.pktinfo
        if self.ipv6:
            return [self.tx_cmsg_len, level, kind, b"", 0] * count
        return [self.tx_cmsg_len, level, kind, 0, b"", bytes(4)] * count

    def unicast(self, destination: bytes) -> bool:
        known = self._unicast.get(destination)
        if known is None:
            if len(self._unicast) > 1024:  # destinations are our own addresses: few
                self._unicast.clear()
            known = self._unicast[destination] = request.unicast_destination(destination)
        return known


def answer(  # noqa: PLR0911 (each early return is one reason a batch is not for this path)
    buffers: mmsg.Buffers, layout: Layout, count: int, leap_bits: int
) -> int:
    """Write replies 0..count-1 (all but T3) for a plain batch of ``count`` requests.

    Returns the latest receive time of the batch (Unix ns, for the transmitter's T3 >= T2
    clamp), or -1 with nothing written when the batch is not one for this path.
    """
    if count < MIN_BATCH:
        return -1
    results = layout.results(count).unpack_from(buffers.rx_headers)
    if (
        results[2::3].count(wire.PACKET_LEN) != count  # every request exactly 48 bytes
        or results[1::3].count(0) != count  # no MSG_TRUNC or MSG_CTRUNC
        or results[0::3].count(layout.expected_controllen) != count
    ):
        return -1
    requests = buffers.requests
    end = count * mmsg.RECEIVE_SIZE
    firsts = requests[0:end : mmsg.RECEIVE_SIZE].translate(_FIRST_BYTES[leap_bits])
    if 0 in firsts:  # something to drop, or NTPv1 whose answer depends on the port
        return -1
    names, names_end = buffers.names, count * mmsg.NAME_SIZE
    high_ports = names[2:names_end : mmsg.NAME_SIZE]
    if 0 in high_ports and 0 in bytes(map(or_, high_ports, names[3:names_end : mmsg.NAME_SIZE])):
        return -1  # a source port 0: no reply can reach it
    controls = layout.controls(count).unpack_from(buffers.rx_control)
    step = layout.values
    if (
        controls[0::step].count(_SOL_SOCKET) != count
        or controls[1::step].count(SCM_TIMESTAMPNS) != count
    ):
        return -1
    if layout.wildcard and not _route(buffers, layout, count, controls):
        return -1

    # Receive timestamps: NTP seconds in this era (the batch must not straddle the 2036 wrap).
    seconds, nanos = controls[2::step], controls[3::step]
    era_offset = _EPOCH - _ERA if seconds[0] + _EPOCH >= _ERA else _EPOCH
    receive_seconds = list(map(add, seconds, repeat(era_offset, count)))
    if max(receive_seconds) >= _ERA or min(receive_seconds) < 0:
        return -1
    arguments = layout.arguments(count)
    arguments[1::_PER_REPLY] = layout.origins(count).unpack_from(requests)
    arguments[2::_PER_REPLY] = receive_seconds
    arguments[3::_PER_REPLY] = list(map(rshift, map(mul, nanos, repeat(_FRAC_MUL)),
                                        repeat(_FRAC_SHIFT)))
    replies = buffers.replies
    layout.replies(count).pack_into(replies, 0, *arguments)
    reply_end = count * wire.PACKET_LEN
    replies[0:reply_end : wire.PACKET_LEN] = firsts
    replies[2:reply_end : wire.PACKET_LEN] = requests[2:end : mmsg.RECEIVE_SIZE]

    latest: int = max(seconds)
    if seconds.count(latest) == count:
        return latest * _NS + int(max(nanos))
    return int(max(map(add, map(mul, seconds, repeat(_NS)), nanos)))


def _route(buffers: mmsg.Buffers, layout: Layout, count: int, controls: tuple[object, ...]) -> bool:
    """Check every request's destination and write the replies' source addresses (PKTINFO);
    False when some request needs the per-packet loop."""
    step = layout.values
    level, kind = layout.pktinfo
    if controls[4::step].count(level) != count or controls[5::step].count(kind) != count:
        return False
    tx_arguments = layout.tx_control_arguments(count)
    if layout.ipv6:
        destinations = controls[6::step]
        first = destinations[0]
        assert isinstance(first, bytes)
        if destinations.count(first) == count:
            if not layout.unicast(first):
                return False
        elif not all(map(layout.unicast, destinations)):  # type: ignore[arg-type]
            return False
        tx_arguments[3::5] = destinations  # the request's destination address ...
        tx_arguments[4::5] = controls[7::step]  # ... and the interface it came in on
    else:
        # ipi_spec_dst equals the destination exactly when that is a local unicast address.
        destinations = controls[7::step]
        if controls[6::step] != destinations:
            return False
        tx_arguments[4::6] = destinations  # in_pktinfo.ipi_spec_dst = the request's ipi_addr
    layout.tx_controls(count).pack_into(buffers.tx_control, 0, *tx_arguments)
    return True
