"""The uniform-batch fast path: a whole recvmmsg batch answered without a per-packet Python loop.

Under load almost every batch is uniform: plain 48-byte client requests, each with the same
ancillary data (a kernel timestamp, and on wildcard sockets a PKTINFO). Such a batch is decoded
with one ``struct`` format that spans all of its slots, validated with C-level operations
(``tuple.count``, ``bytes.translate``, ``in``), its timestamps converted with ``map`` over
``operator`` functions, and written back with extended-slice assignments and one ``pack_into``
per buffer. The cost is a few dozen C calls per batch whatever its size, instead of a dozen
bytecode-level steps per packet.

Anything else (a short or long request, a drop, NTPv1 from port 123, an unexpected ancillary
layout, rate limiting) returns False and the caller's per-packet loop handles the batch.
"""

from __future__ import annotations

import socket
import struct
import time
from functools import cache
from itertools import repeat
from operator import add, mul, rshift
from typing import TYPE_CHECKING, Final

from . import wire
from .sockets import SCM_TIMESTAMPNS

if TYPE_CHECKING:
    from .batchio import BatchSocket

MIN_BATCH: Final = 4  # below this, the per-packet loop is as cheap
_NS: Final = wire.NS_PER_S
_EPOCH: Final = wire.NTP_UNIX_OFFSET
_MASK32: Final = 0xFFFF_FFFF
_FRAC_SHIFT: Final = wire.FRACTION_SHIFT
_FRAC_MUL: Final = wire.FRACTION_MUL
_SOL_SOCKET: Final = int(socket.SOL_SOCKET)
_PER_REPLY: Final = 5  # arguments per reply in Layout.tails: origin, rx s, rx frac, tx, header
_ERA: Final = 1 << 32  # NTP seconds wrap here (2036)


def _reply_first_bytes(leap_bits: int) -> bytes:
    """Request byte 0 -> reply byte 0 for plain client requests; 0 marks 'not for the fast path'."""
    table = bytearray(256)
    for first, mode in enumerate(wire.reply_mode_table()):
        if mode > 0:
            table[first] = leap_bits | (first & 0x38) | mode
    return bytes(table)


_FIRST_BYTES: Final = {leap << 6: _reply_first_bytes(leap << 6) for leap in range(4)}


class Layout:
    """Formats for one socket's buffers; one Struct per batch size, built on first use."""

    def __init__(self, sock: BatchSocket) -> None:
        from . import batchio  # noqa: PLC0415 (batchio imports this module)

        self.sock = sock
        self.mmsg = batchio.MMSG_SIZE
        controllen_at = batchio.CONTROLLEN_AT
        flags_at = batchio.FLAGS_AT
        len_at = batchio.LEN_AT
        self.result_one = (
            f"{controllen_at}xNi{len_at - flags_at - 4}xI{self.mmsg - len_at - 4}x"
        )
        self.request_size = batchio.RECEIVE_SIZE
        self.rx_control_size = batchio.RX_CONTROL_SIZE
        self.tx_control_size = batchio.TX_CONTROL_SIZE
        timestamp = "8xiiqq"  # cmsghdr (length skipped), level, type, struct timespec
        if not sock.wildcard:
            self.control_one, self.values = timestamp, 4
            self.expected_controllen = socket.CMSG_SPACE(16)
        elif sock.ipv6:  # in6_pktinfo: address, ifindex
            self.control_one, self.values = timestamp + "8xii16sI", 8
            self.expected_controllen = socket.CMSG_SPACE(16) + socket.CMSG_SPACE(20)
        else:  # in_pktinfo: ifindex, spec_dst, addr (the destination of the request)
            self.control_one, self.values = timestamp + "8xii8x4s", 7
            self.expected_controllen = socket.CMSG_SPACE(16) + socket.CMSG_SPACE(12)
        used = struct.calcsize("@" + self.control_one)
        self.control_one += f"{self.rx_control_size - used}x"
        if sock.wildcard:
            self.pktinfo = (sock.pktinfo_level, sock.pktinfo_type)
            if sock.ipv6:  # cmsghdr + in6_pktinfo, padded to the slot
                self.tx_one, self.tx_fields = f"Nii16sI{self.tx_control_size - 36}x", 5
            else:  # cmsghdr + in_pktinfo (ifindex 0: routing picks the interface)
                self.tx_one, self.tx_fields = f"Niii4s4s{self.tx_control_size - 28}x", 6
            self.tx_cmsg_len = socket.CMSG_LEN(20 if sock.ipv6 else 12)

    @cache  # noqa: B019 (one Layout per socket, for the worker's life)
    def results(self, count: int) -> struct.Struct:
        return struct.Struct("@" + self.result_one * count)

    @cache  # noqa: B019
    def controls(self, count: int) -> struct.Struct:
        return struct.Struct("@" + self.control_one * count)

    @cache  # noqa: B019
    def origins(self, count: int) -> struct.Struct:
        return struct.Struct(("40x8s" + f"{self.request_size - 48}x") * count)

    @cache  # noqa: B019
    def tails(self, count: int) -> struct.Struct:
        """Bytes 24-48 of ``count`` consecutive replies, with the 24-byte headers between:
        origin, receive seconds and fraction, transmit timestamp (64 bits), next header."""
        return struct.Struct(">" + "8sIIQ24s" * (count - 1) + "8sIIQ")

    @cache  # noqa: B019
    def tx_controls(self, count: int) -> struct.Struct:
        return struct.Struct("@" + self.tx_one * count)

    def tail_arguments(self, count: int, header: bytes) -> list[object]:
        arguments: list[object] = [b""] * (_PER_REPLY * count - 1)
        arguments[_PER_REPLY - 1 :: _PER_REPLY] = [header] * (count - 1)
        return arguments

    @cache  # noqa: B019
    def tx_control_arguments(self, count: int) -> list[object]:
        level, kind = self.pktinfo
        if self.sock.ipv6:
            return [self.tx_cmsg_len, level, kind, b"", 0] * count
        return [self.tx_cmsg_len, level, kind, 0, b"", bytes(4)] * count


def answer(  # noqa: PLR0911 (each early return is one reason a batch is not uniform)
    sock: BatchSocket, layout: Layout, count: int, counters: list[int],
    leap_bits: int,
) -> bool:
    """Answer a uniform batch of ``count`` requests; False (nothing sent) when it is not one."""
    if count < MIN_BATCH or sock.limiter is not None:
        return False
    results = layout.results(count).unpack_from(sock.rx_headers)
    if (
        results[2::3].count(wire.PACKET_LEN) != count  # every request exactly 48 bytes
        or results[1::3].count(0) != count  # no MSG_TRUNC or MSG_CTRUNC
        or results[0::3].count(layout.expected_controllen) != count
    ):
        return False
    requests = sock.requests
    end = count * layout.request_size
    firsts = requests[0:end : layout.request_size].translate(_FIRST_BYTES[leap_bits])
    if 0 in firsts:  # something to drop, or NTPv1 whose answer depends on the port
        return False
    controls = layout.controls(count).unpack_from(sock.rx_control)
    step = layout.values
    if (
        controls[0::step].count(_SOL_SOCKET) != count
        or controls[1::step].count(SCM_TIMESTAMPNS) != count
    ):
        return False
    if sock.wildcard:
        level, kind = layout.pktinfo
        if controls[4::step].count(level) != count or controls[5::step].count(kind) != count:
            return False
        tx_arguments = layout.tx_control_arguments(count)
        if sock.ipv6:
            tx_arguments[3::5] = controls[6::step]  # the request's destination address ...
            tx_arguments[4::5] = controls[7::step]  # ... and the interface it came in on
        else:
            tx_arguments[4::6] = controls[6::step]  # in_pktinfo.ipi_spec_dst = request's ipi_addr
        layout.tx_controls(count).pack_into(sock.tx_control, 0, *tx_arguments)

    # Receive timestamps: NTP seconds in this era (the batch must not straddle the 2036 wrap).
    seconds = controls[2::step]
    era_offset = _EPOCH - _ERA if seconds[0] + _EPOCH >= _ERA else _EPOCH
    receive_seconds = list(map(add, seconds, repeat(era_offset, count)))
    if max(receive_seconds) >= _ERA or min(receive_seconds) < 0:
        return False
    arguments = sock.tail_arguments(count)
    arguments[0::_PER_REPLY] = layout.origins(count).unpack_from(requests)
    arguments[1::_PER_REPLY] = receive_seconds
    arguments[2::_PER_REPLY] = list(map(rshift, map(mul, controls[3::step], repeat(_FRAC_MUL)),
                                        repeat(_FRAC_SHIFT)))
    polls = requests[2:end : layout.request_size]

    # Transmit timestamps last: the time now, plus each reply's place in the sendmmsg times the
    # measured cost of one message (see batchio), as one arithmetic range of 64-bit NTP values.
    step = ((max(sock.send_step_ns, 1) << 32) // _NS) or 1
    start_ns = time.time_ns()
    start_seconds, start_nanos = divmod(start_ns, _NS)
    first_tx = ((start_seconds + _EPOCH) & _MASK32) << 32
    first_tx |= (start_nanos * _FRAC_MUL) >> _FRAC_SHIFT
    if first_tx + step * count >= 1 << 64:  # the batch would straddle the era wrap: go slowly
        return False
    arguments[3::_PER_REPLY] = range(first_tx, first_tx + step * count, step)
    replies = sock.replies
    layout.tails(count).pack_into(replies, 24, *arguments)
    reply_end = count * wire.PACKET_LEN
    replies[0:reply_end : wire.PACKET_LEN] = firsts
    replies[2:reply_end : wire.PACKET_LEN] = polls
    sock.transmit(count, counters, start_ns)
    return True
