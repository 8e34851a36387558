"""The batch engine: recvmmsg in, sendmmsg out, through ctypes, for the worker's hot loop.

It only moves bytes: one recvmmsg fills the preallocated slots of ``mmsg.Buffers``; the replies
are decided by the request rules, for a whole plain batch at once (``wholebatch``) or request by
request (``request.respond``); the ``Transmitter`` stamps and sends them. A packet costs a
handful of C calls and no Python objects beyond a few ints.

- The per-packet loop writes the replies it keeps into slots 0, 1, ... in order, pointing each
  reply's msg_name at its request's source-address slot (and restores the pristine headers after
  the batch when it had to move one).
- On wildcard sockets the request's destination address (IP_PKTINFO / IPV6_PKTINFO) becomes the
  reply's source address.
- socket's IntFlag constants are converted to plain ints: ``int & IntFlag`` runs enum code.
"""

from __future__ import annotations

import errno
import socket
import struct
import time
from typing import Final

from . import mmsg, request, wholebatch
from .mmsg import MMSG_SIZE, NAME_SIZE, RECEIVE_SIZE, RX_CONTROL_SIZE, TX_CONTROL_SIZE
from .ratelimit import RateLimiter, ipv6_key
from .shared import KOD_SENT, RATE_LIMITED, RECEIVED
from .sockets import SCM_TIMESTAMPNS, Listener
from .transmitter import Transmitter

AVAILABLE: Final = mmsg.AVAILABLE
DEFAULT_BATCH: Final = 64
DEFAULT_SEND_BATCH: Final = 16

# (msg_controllen, msg_flags, msg_len) in one unpack: the three things the kernel reports.
_RESULT: Final = struct.Struct(
    f"@N{mmsg.FLAGS_AT - mmsg.CONTROLLEN_AT - struct.calcsize('N')}x"
    f"i{mmsg.LEN_AT - mmsg.FLAGS_AT - 4}xI"
)
_SIZE_T: Final = struct.Struct("@N")
_CMSG_HEAD: Final = struct.Struct("@Nii")
_CMSG_DATA_AT: Final = socket.CMSG_LEN(0)
_TIMESTAMP_CMSG: Final = struct.Struct("@8xiiqq")  # cmsghdr (len skipped) + timespec
_TIMESPEC: Final = struct.Struct("@qq")
_NAME_PTR: Final = struct.Struct("@P")
_PORT: Final = struct.Struct("!H")
_IPV4: Final = struct.Struct("!I")
_IPV6: Final = struct.Struct("!QQ")
_SPEC_DST_AND_ADDR: Final = struct.Struct("!II")  # in_pktinfo after ipi_ifindex
_MULTICAST_IPV4: Final = 0xE000_0000
_NS: Final = 1_000_000_000
_NO_TIMESTAMP: Final = -1
_MSG_TRUNC: Final = int(socket.MSG_TRUNC)
_MSG_DONTWAIT: Final = int(socket.MSG_DONTWAIT)
_SOL_SOCKET: Final = int(socket.SOL_SOCKET)
_SCM_TIMESTAMPNS: Final = int(SCM_TIMESTAMPNS)
_TIMESTAMP_SIZE: Final = socket.CMSG_SPACE(16)  # cmsghdr + struct timespec
_DROP_COUNTER: Final = request.DROP_COUNTER
_CONTROLLEN_AT: Final = mmsg.CONTROLLEN_AT
_REPLY_KOD: Final = request.REPLY_KOD


class BatchSocket:
    """One listening socket served with recvmmsg/sendmmsg and preallocated buffers.

    ``whole_batches=False`` sends every batch through the per-packet loop (tests compare the
    two paths).
    """

    def __init__(self, listener: Listener, batch: int = DEFAULT_BATCH,
                 send_batch: int = DEFAULT_SEND_BATCH,
                 limiter: RateLimiter | None = None, whole_batches: bool = True) -> None:
        if not AVAILABLE:
            raise OSError(errno.ENOSYS, "recvmmsg/sendmmsg are not available")
        self.listener = listener
        self.fd = listener.sock.fileno()
        self.batch = batch
        self.wildcard = listener.wildcard
        self.ipv6 = listener.family == socket.AF_INET6
        self.limiter = limiter
        self.header = bytes(24)
        self.buffers = mmsg.Buffers(batch, self.ipv6, self.wildcard)
        self.transmitter = Transmitter(self.fd, self.buffers, send_batch)
        self.layout = wholebatch.Layout(
            self.ipv6, self.wildcard, (self.buffers.pktinfo_level, self.buffers.pktinfo_type)
        )
        self.whole_batches = whole_batches and limiter is None
        self.whole_batches_answered = 0  # batches the fast path took (tests look)

    @property
    def send_batch(self) -> int:
        return self.transmitter.send_batch

    def set_header(self, header: bytes) -> None:
        """The server's 24-byte header for every reply (on backend state changes): written into
        every reply slot, which the per-packet loop then only patches."""
        self.header = header
        self.layout.set_header(header)
        self.buffers.set_header(header)

    def drain(self, counters: list[int], leap_bits: int, rounds: int) -> None:
        """Receive and answer up to ``rounds`` batches, stopping early when the socket is empty."""
        buffers = self.buffers
        for _ in range(rounds):
            buffers.rx_headers[:] = buffers.rx_pristine
            count = mmsg.recvmmsg(self.fd, buffers.rx_headers_at, self.batch, _MSG_DONTWAIT, None)
            if count <= 0:
                return  # EAGAIN: another worker (or colour) took what was there
            counters[RECEIVED] += count
            self._answer(count, counters, leap_bits)
            if count < self.batch:
                return

    def _answer(self, count: int, counters: list[int], leap_bits: int) -> None:
        if self.whole_batches:
            latest = wholebatch.answer(self.buffers, self.layout, count, leap_bits)
            if latest >= 0:
                self.whole_batches_answered += 1
                self.transmitter.send(count, counters, latest)
                return
        self._answer_each(count, counters, leap_bits)

    def _answer_each(self, count: int, counters: list[int], leap_bits: int) -> None:
        """The per-packet loop: ask the request rules about each request, keep the replies in
        slots 0, 1, ..., then send them."""
        buffers = self.buffers
        rx_headers, requests, rx_control = buffers.rx_headers, buffers.requests, buffers.rx_control
        replies, tx_control, tx_headers, names = (
            buffers.replies, buffers.tx_control, buffers.tx_headers, buffers.names
        )
        wildcard, dst_len, limiter, ipv6 = self.wildcard, buffers.dst_len, self.limiter, self.ipv6
        result_unpack, stamp_unpack, port_unpack = (
            _RESULT.unpack_from, _TIMESTAMP_CMSG.unpack_from, _PORT.unpack_from
        )
        respond, drop_counter = request.respond, _DROP_COUNTER
        spec_and_addr = _SPEC_DST_AND_ADDR.unpack_from
        pending = 0  # replies kept so far: the next one goes into this slot
        latest = 0  # the latest receive time of a kept request (Unix ns)
        moved = False  # a reply header was changed: restore the pristine ones after the batch
        kissed = False  # a reply slot holds a KoD: put the header back after the batch
        for i in range(count):
            controllen, flags, length = result_unpack(rx_headers, i * MMSG_SIZE + _CONTROLLEN_AT)
            if flags & _MSG_TRUNC:
                length = 0
            control_at = i * RX_CONTROL_SIZE
            info_at = -1
            if controllen >= _TIMESTAMP_SIZE:
                level, kind, seconds, nanos = stamp_unpack(rx_control, control_at)
                if level != _SOL_SOCKET or kind != _SCM_TIMESTAMPNS:
                    seconds, nanos, info_at = self._parse_control(control_at, controllen)
                elif wildcard:
                    info_at = self._find_pktinfo(control_at + _TIMESTAMP_SIZE,
                                                 control_at + controllen)
            else:
                seconds, nanos, info_at = self._parse_control(control_at, controllen)
            receive_ns = time.time_ns() if seconds == _NO_TIMESTAMP else seconds * _NS + nanos
            reachable = True
            if info_at >= 0:
                if ipv6:
                    reachable = self._unicast(info_at)
                else:  # what request.unicast_destination says, without making bytes
                    local, destination = spec_and_addr(rx_control, info_at + 4)
                    if local != destination or destination >= _MULTICAST_IPV4:
                        reachable = self._unicast(info_at)
            verdict = respond(
                replies, pending * 48, requests, i * RECEIVE_SIZE, length,
                port_unpack(names, i * NAME_SIZE + 2)[0], reachable,
                self._client_key(i) if limiter is not None else 0, receive_ns, leap_bits, limiter,
            )
            if verdict < 0:
                counters[drop_counter[verdict]] += 1
                continue
            if verdict:  # over the rate limit, answered anyway or kissed
                counters[RATE_LIMITED] += 1
                if verdict == _REPLY_KOD:
                    counters[KOD_SENT] += 1
                    kissed = True
            if receive_ns > latest:  # noqa: PLR1730 (a compare is cheaper than max())
                latest = receive_ns
            slot = pending
            if slot != i:
                _NAME_PTR.pack_into(tx_headers, slot * MMSG_SIZE + mmsg.NAME_AT,
                                    buffers.names_at + i * NAME_SIZE)
                moved = True
            if wildcard:
                if info_at >= 0:
                    at = slot * TX_CONTROL_SIZE + _CMSG_DATA_AT + buffers.dst_in_tx
                    source_at = info_at + buffers.dst_in_rx
                    tx_control[at : at + dst_len] = rx_control[source_at : source_at + dst_len]
                else:  # no pktinfo came: let the kernel choose the source address
                    _SIZE_T.pack_into(tx_headers, slot * MMSG_SIZE + mmsg.CONTROLLEN_AT, 0)
                    moved = True
            pending += 1
        if pending:
            self.transmitter.send(pending, counters, latest)
        if moved:
            tx_headers[:] = buffers.tx_pristine
        if kissed:
            buffers.set_header(self.header)

    def _unicast(self, info_at: int) -> bool:
        """Whether the request behind this PKTINFO was sent to a unicast address of ours."""
        control = self.buffers.rx_control
        if self.ipv6:
            return request.unicast_destination(bytes(control[info_at : info_at + 16]))
        return request.unicast_destination(bytes(control[info_at + 8 : info_at + 12]),
                                           bytes(control[info_at + 4 : info_at + 8]))

    def _client_key(self, index: int) -> int:
        if self.ipv6:
            high, low = _IPV6.unpack_from(self.buffers.names, index * NAME_SIZE + 8)
            return ipv6_key(high, low)
        key: int = _IPV4.unpack_from(self.buffers.names, index * NAME_SIZE + 4)[0]
        return key

    def _find_pktinfo(self, at: int, end: int) -> int:
        control, level, kind = (
            self.buffers.rx_control, self.buffers.pktinfo_level, self.buffers.pktinfo_type
        )
        while at + _CMSG_DATA_AT <= end:
            clen, cmsg_level, cmsg_kind = _CMSG_HEAD.unpack_from(control, at)
            if clen < _CMSG_DATA_AT:
                return -1
            if cmsg_level == level and cmsg_kind == kind:
                return at + _CMSG_DATA_AT
            at += (clen + 7) & ~7
        return -1

    def _parse_control(self, at: int, controllen: int) -> tuple[int, int, int]:
        """The slow path: walk every control message (unusual order or missing timestamp)."""
        control, buffers = self.buffers.rx_control, self.buffers
        end = at + min(controllen, RX_CONTROL_SIZE)
        seconds, nanos, info_at = _NO_TIMESTAMP, 0, -1
        while at + _CMSG_DATA_AT <= end:
            clen, level, kind = _CMSG_HEAD.unpack_from(control, at)
            if clen < _CMSG_DATA_AT:
                break
            if level == _SOL_SOCKET and kind == _SCM_TIMESTAMPNS:
                seconds, nanos = _TIMESPEC.unpack_from(control, at + _CMSG_DATA_AT)
            elif (level == buffers.pktinfo_level and kind == buffers.pktinfo_type
                  and self.wildcard):
                info_at = at + _CMSG_DATA_AT
            at += (clen + 7) & ~7
        return seconds, nanos, info_at
