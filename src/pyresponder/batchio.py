"""Batched socket I/O with recvmmsg/sendmmsg through ctypes, for the worker's hot loop.

Every buffer is allocated once: request slots, source-address slots, ancillary-data slots, reply
slots and the two mmsghdr arrays live in bytearrays whose addresses are handed to the kernel. The
loop reads and patches them with ``struct`` at fixed offsets, so a packet costs a handful of C calls
and no Python objects beyond a few ints.

- The kernel overwrites msg_namelen, msg_controllen and msg_flags of the receive headers: they are
  restored from a pristine copy before each recvmmsg.
- Reply slots keep the 24-byte server header between packets (it is rewritten only when the
  backend state changes); a packet patches byte 0 (LI/VN/mode), byte 2 (poll) and bytes 24-48
  (origin, receive and transmit timestamps).
- Each reply's msg_name points at its request's source-address slot, so one sendmmsg answers the
  batch without copying addresses.
- Replies are sent in groups of at most ``send_batch``. The kernel sends the messages of one
  sendmmsg one after another, so each transmit timestamp is the time read just before the call
  plus the reply's place in the group times the measured cost of one message.
- socket's IntFlag constants are converted to plain ints: ``int & IntFlag`` runs enum code.
"""

from __future__ import annotations

import ctypes
import errno
import socket
import struct
import time
from typing import Final

from . import uniform, wire
from .ratelimit import DROP, KISS_OF_DEATH, RateLimiter, ipv6_key
from .shared import ANSWERED, DROP_BASE, KOD_SENT, RATE_LIMITED, RECEIVED, SEND_ERRORS
from .sockets import IP_PKTINFO, IPV6_PKTINFO, SCM_TIMESTAMPNS, Listener


class _IoVec(ctypes.Structure):
    _fields_ = (("base", ctypes.c_void_p), ("len", ctypes.c_size_t))


class _MsgHdr(ctypes.Structure):
    _fields_ = (
        ("name", ctypes.c_void_p),
        ("namelen", ctypes.c_uint32),
        ("iov", ctypes.c_void_p),
        ("iovlen", ctypes.c_size_t),
        ("control", ctypes.c_void_p),
        ("controllen", ctypes.c_size_t),
        ("flags", ctypes.c_int),
    )


class _MMsgHdr(ctypes.Structure):
    _fields_ = (("hdr", _MsgHdr), ("len", ctypes.c_uint))


MMSG_SIZE: Final = ctypes.sizeof(_MMsgHdr)
IOVEC_SIZE: Final = ctypes.sizeof(_IoVec)
CONTROLLEN_AT: Final = _MsgHdr.controllen.offset
FLAGS_AT: Final = _MsgHdr.flags.offset
LEN_AT: Final = _MMsgHdr.len.offset
_CONTROLLEN_AT: Final = CONTROLLEN_AT
_NAME_AT: Final = _MsgHdr.name.offset
# (msg_controllen, msg_flags, msg_len) in one unpack: the three things the kernel reports.
_RESULT: Final = struct.Struct(
    f"@N{_MsgHdr.flags.offset - _CONTROLLEN_AT - ctypes.sizeof(ctypes.c_size_t)}x"
    f"i{_MMsgHdr.len.offset - _MsgHdr.flags.offset - 4}xI"
)
_IOVEC: Final = struct.Struct("@PN")
_MSGHDR_PTRS: Final = struct.Struct("@PI4xPNPN")  # name, namelen, iov, iovlen, control, clen
_SIZE_T: Final = struct.Struct("@N")
_CMSG_HEAD: Final = struct.Struct("@Nii")
_CMSG_DATA_AT: Final = socket.CMSG_LEN(0)
_TIMESTAMP_CMSG: Final = struct.Struct("@8xiiqq")  # cmsghdr (len skipped) + timespec
_HEAD: Final = struct.Struct("!QQ")  # origin, receive timestamp
_ORIGIN: Final = struct.Struct("!Q")
_U64: Final = struct.Struct("!Q")
_NAME_PTR: Final = struct.Struct("@P")
_PORT: Final = struct.Struct("!H")
_IPV4: Final = struct.Struct("!I")
_IPV6: Final = struct.Struct("!QQ")

RECEIVE_SIZE: Final = 2048
NAME_SIZE: Final = 128  # sockaddr_storage
RX_CONTROL_SIZE: Final = 256
TX_CONTROL_SIZE: Final = socket.CMSG_SPACE(20)
DEFAULT_BATCH: Final = 64
DEFAULT_SEND_BATCH: Final = 16
_NS: Final = wire.NS_PER_S
_EPOCH: Final = wire.NTP_UNIX_OFFSET
_MASK32: Final = 0xFFFF_FFFF
_NO_TIMESTAMP: Final = -1
_FRAC_SHIFT: Final = wire.FRACTION_SHIFT
_FRAC_MUL: Final = wire.FRACTION_MUL
_MAX_STEP_NS: Final = 50_000
_INITIAL_STEP_NS: Final = 2_000
# Plain ints: socket's IntFlag/IntEnum constants go through enum code on every "&".
_MSG_TRUNC: Final = int(socket.MSG_TRUNC)
_MSG_DONTWAIT: Final = int(socket.MSG_DONTWAIT)
_SOL_SOCKET: Final = int(socket.SOL_SOCKET)
_SCM_TIMESTAMPNS: Final = int(SCM_TIMESTAMPNS)
_PACKET_LEN: Final = wire.PACKET_LEN
_DEPENDS_ON_PORT: Final = wire.DEPENDS_ON_PORT
_TIMESTAMP_SIZE: Final = socket.CMSG_SPACE(16)  # cmsghdr + struct timespec

_libc = ctypes.CDLL(None, use_errno=True)
try:
    _recvmmsg = _libc.recvmmsg
    _sendmmsg = _libc.sendmmsg
except AttributeError:  # not Linux/glibc-like: the worker falls back to recvmsg_into
    AVAILABLE = False
else:
    AVAILABLE = True
    _recvmmsg.argtypes = (ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int,
                          ctypes.c_void_p)
    _recvmmsg.restype = ctypes.c_int
    _sendmmsg.argtypes = (ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int)
    _sendmmsg.restype = ctypes.c_int

_MODES: Final = wire.reply_mode_table()


def _address(buffer: bytearray) -> tuple[int, ctypes.Array[ctypes.c_char]]:
    """The address of a bytearray's memory, and the ctypes view that pins it (keep it alive)."""
    view = (ctypes.c_char * len(buffer)).from_buffer(buffer)
    return ctypes.addressof(view), view


class BatchSocket:
    """One listening socket served with recvmmsg/sendmmsg and preallocated buffers."""

    def __init__(self, listener: Listener, batch: int = DEFAULT_BATCH,
                 send_batch: int = DEFAULT_SEND_BATCH,
                 limiter: RateLimiter | None = None) -> None:
        if not AVAILABLE:
            raise OSError(errno.ENOSYS, "recvmmsg/sendmmsg are not available")
        self.listener = listener
        self.fd = listener.sock.fileno()
        self.batch = batch
        self.send_batch = max(1, min(send_batch, batch))
        self.wildcard = listener.wildcard
        self.send_step_ns = _INITIAL_STEP_NS
        self.limiter = limiter
        self.header = bytes(24)
        ipv6 = listener.family == socket.AF_INET6
        self._pins: list[ctypes.Array[ctypes.c_char]] = []

        self.requests = bytearray(batch * RECEIVE_SIZE)
        self.names = bytearray(batch * NAME_SIZE)
        self.rx_control = bytearray(batch * RX_CONTROL_SIZE)
        self.replies = bytearray(batch * wire.PACKET_LEN)
        self.tx_control = bytearray(batch * TX_CONTROL_SIZE)
        rx_iov, tx_iov = bytearray(batch * IOVEC_SIZE), bytearray(batch * IOVEC_SIZE)
        self.rx_headers = bytearray(batch * MMSG_SIZE)
        self.tx_headers = bytearray(batch * MMSG_SIZE)
        addr = {name: self._pin(buffer) for name, buffer in (
            ("requests", self.requests), ("names", self.names), ("rx_control", self.rx_control),
            ("replies", self.replies), ("tx_control", self.tx_control), ("rx_iov", rx_iov),
            ("tx_iov", tx_iov), ("rx_headers", self.rx_headers),
            ("tx_headers", self.tx_headers),
        )}
        self.rx_headers_at = addr["rx_headers"]
        self.tx_headers_at = addr["tx_headers"]
        self.names_at = addr["names"]

        # Where a reply's source address goes: in_pktinfo.ipi_spec_dst or in6_pktinfo.ipi6_addr.
        if ipv6:
            self.pktinfo_level, self.pktinfo_type, info_len = socket.IPPROTO_IPV6, IPV6_PKTINFO, 20
            self.dst_in_rx, self.dst_len, self.dst_in_tx = 0, 20, 0  # address + ifindex
        else:
            self.pktinfo_level, self.pktinfo_type, info_len = socket.IPPROTO_IP, IP_PKTINFO, 12
            self.dst_in_rx, self.dst_len, self.dst_in_tx = 8, 4, 4  # ipi_addr -> ipi_spec_dst
        self.tx_controllen = socket.CMSG_SPACE(info_len)
        name_len = 28 if ipv6 else 16  # sockaddr_in6 / sockaddr_in: fixed per socket family
        self.ipv6 = ipv6

        for i in range(batch):
            _IOVEC.pack_into(rx_iov, i * IOVEC_SIZE, addr["requests"] + i * RECEIVE_SIZE,
                             RECEIVE_SIZE)
            _IOVEC.pack_into(tx_iov, i * IOVEC_SIZE, addr["replies"] + i * wire.PACKET_LEN,
                             wire.PACKET_LEN)
            _MSGHDR_PTRS.pack_into(
                self.rx_headers, i * MMSG_SIZE, addr["names"] + i * NAME_SIZE, NAME_SIZE,
                addr["rx_iov"] + i * IOVEC_SIZE, 1, addr["rx_control"] + i * RX_CONTROL_SIZE,
                RX_CONTROL_SIZE,
            )
            _MSGHDR_PTRS.pack_into(
                self.tx_headers, i * MMSG_SIZE, addr["names"] + i * NAME_SIZE, name_len,
                addr["tx_iov"] + i * IOVEC_SIZE, 1,
                addr["tx_control"] + i * TX_CONTROL_SIZE if self.wildcard else 0,
                self.tx_controllen if self.wildcard else 0,
            )
            _CMSG_HEAD.pack_into(self.tx_control, i * TX_CONTROL_SIZE, socket.CMSG_LEN(info_len),
                                 self.pktinfo_level, self.pktinfo_type)
        self.rx_pristine = bytes(self.rx_headers)
        self.tx_pristine = bytes(self.tx_headers)
        self.layout = uniform.Layout(self)
        self._tail_arguments: dict[int, list[object]] = {}

    def _pin(self, buffer: bytearray) -> int:
        address, view = _address(buffer)
        self._pins.append(view)
        return address

    def set_header(self, header: bytes) -> None:
        """Write the server's 24-byte header into every reply slot (on backend state changes)."""
        self.header = header
        self._tail_arguments.clear()
        for offset in range(0, len(self.replies), wire.PACKET_LEN):
            self.replies[offset : offset + 24] = header

    def drain(self, counters: list[int], leap_bits: int, rounds: int) -> None:
        """Receive and answer up to ``rounds`` batches, stopping early when the socket is empty."""
        for _ in range(rounds):
            self.rx_headers[:] = self.rx_pristine
            count = _recvmmsg(self.fd, self.rx_headers_at, self.batch, _MSG_DONTWAIT, None)
            if count <= 0:
                return  # EAGAIN: another worker (or colour) took what was there
            counters[RECEIVED] += count
            self._answer(count, counters, leap_bits)
            if count < self.batch:
                return

    def tail_arguments(self, count: int) -> list[object]:
        """The uniform path's argument list for ``count`` replies, headers filled in."""
        arguments = self._tail_arguments.get(count)
        if arguments is None:
            arguments = self.layout.tail_arguments(count, self.header)
            self._tail_arguments[count] = arguments
        return arguments

    def transmit(self, count: int, counters: list[int], start_ns: int) -> None:
        """sendmmsg the first ``count`` replies, stamped from ``start_ns``; count the outcome and
        learn the per-message cost (a moving average, capped against outliers: a preemption in
        the middle of a call is not the cost of a message)."""
        sent = _sendmmsg(self.fd, self.tx_headers_at, count, 0)
        elapsed = time.time_ns() - start_ns
        if sent <= 0:
            counters[SEND_ERRORS] += count
            return
        self.send_step_ns += (min(elapsed // sent, _MAX_STEP_NS) - self.send_step_ns) >> 3
        counters[ANSWERED] += sent
        if sent < count:
            counters[SEND_ERRORS] += count - sent

    def _answer(self, count: int, counters: list[int], leap_bits: int) -> None:
        if uniform.answer(self, self.layout, count, counters, leap_bits):
            return
        rx_headers, requests, rx_control = self.rx_headers, self.requests, self.rx_control
        replies, tx_control, tx_headers = self.replies, self.tx_control, self.tx_headers
        wildcard, send_batch, dst_len = self.wildcard, self.send_batch, self.dst_len
        result_unpack, stamp_unpack, head_pack, origin_unpack = (
            _RESULT.unpack_from, _TIMESTAMP_CMSG.unpack_from, _HEAD.pack_into, _ORIGIN.unpack_from
        )
        modes = _MODES
        pending = 0  # replies built but not sent yet
        moved = False  # a reply slot's header was changed: restore after the batch
        unrouted = False  # some slot was sent without pktinfo: give it back when reused
        kissed = False  # a reply slot holds a KoD header: restore after the batch
        limiter = self.limiter
        for i in range(count):
            controllen, flags, length = result_unpack(rx_headers, i * MMSG_SIZE + _CONTROLLEN_AT)
            request_at = i * RECEIVE_SIZE
            first = requests[request_at]
            mode = modes[first]
            if length < _PACKET_LEN or length & 3 or flags & _MSG_TRUNC:
                mode = wire.DROP_LENGTH
            elif mode == _DEPENDS_ON_PORT:
                port = _PORT.unpack_from(self.names, i * NAME_SIZE + 2)[0]
                mode = wire.reply_mode(first, length, port)
            if mode < 0:
                counters[DROP_BASE - mode] += 1
                continue
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
            if seconds == _NO_TIMESTAMP:  # no kernel timestamp: the best we have is now
                seconds, nanos = divmod(time.time_ns(), _NS)
            kiss = False
            if limiter is not None and not limiter.admit(
                self._client_key(i), seconds + nanos / _NS
            ):
                counters[RATE_LIMITED] += 1
                fate = limiter.over_limit()
                if fate == DROP:
                    continue
                kiss = fate == KISS_OF_DEATH

            slot = pending
            reply_at = slot * _PACKET_LEN
            if kissed:  # a KoD earlier in this batch may have left its header in this slot
                replies[reply_at : reply_at + 24] = self.header
            replies[reply_at] = leap_bits | (first & 0x38) | mode
            replies[reply_at + 2] = requests[request_at + 2]
            head_pack(
                replies,
                reply_at + 24,
                origin_unpack(requests, request_at + 40)[0],
                (((seconds + _EPOCH) & _MASK32) << 32) | ((nanos * _FRAC_MUL) >> _FRAC_SHIFT),
            )
            if kiss:  # RFC 5905 kiss-o'-death: LI 3, stratum 0, refid "RATE"
                replies[reply_at] = 0xC0 | (first & 0x38) | mode
                replies[reply_at + 1] = 0
                replies[reply_at + 12 : reply_at + 16] = b"RATE"
                counters[KOD_SENT] += 1
                kissed = True
            if slot != i:
                _NAME_PTR.pack_into(tx_headers, slot * MMSG_SIZE + _NAME_AT,
                                    self.names_at + i * NAME_SIZE)
                moved = True
            if wildcard:
                if info_at >= 0:
                    at = slot * TX_CONTROL_SIZE + _CMSG_DATA_AT + self.dst_in_tx
                    source_at = info_at + self.dst_in_rx
                    tx_control[at : at + dst_len] = rx_control[source_at : source_at + dst_len]
                    if unrouted:
                        _SIZE_T.pack_into(tx_headers, slot * MMSG_SIZE + _CONTROLLEN_AT,
                                          self.tx_controllen)
                else:  # no pktinfo came: let the kernel choose the source address
                    _SIZE_T.pack_into(tx_headers, slot * MMSG_SIZE + _CONTROLLEN_AT, 0)
                    moved = unrouted = True
            pending += 1
            if pending == send_batch:
                self._send(pending, counters)
                pending = 0  # later requests reuse slots 0..: their names get repointed
        if pending:
            self._send(pending, counters)
        if moved:
            self.tx_headers[:] = self.tx_pristine
        if kissed:
            self.set_header(self.header)

    def _client_key(self, index: int) -> int:
        if self.ipv6:
            high, low = _IPV6.unpack_from(self.names, index * NAME_SIZE + 8)
            return ipv6_key(high, low)
        key: int = _IPV4.unpack_from(self.names, index * NAME_SIZE + 4)[0]
        return key

    def _send(self, count: int, counters: list[int]) -> None:
        """Stamp the transmit timestamps, then send ``count`` replies with one sendmmsg.

        The kernel sends the messages of one call one after another, so reply k (from 0) leaves
        about k message-costs after the first: its timestamp is the time read just before the
        call plus k times the per-message cost measured on earlier calls (a moving average).
        The first reply is stamped like chronyd stamps each of its replies, just before the send.
        """
        replies, pack, step = self.replies, _U64.pack_into, self.send_step_ns
        start_ns = time.time_ns()
        for k in range(count):
            seconds, nanos = divmod(start_ns + k * step, _NS)
            pack(replies, k * _PACKET_LEN + 40,
                 (((seconds + _EPOCH) & _MASK32) << 32) | ((nanos * _FRAC_MUL) >> _FRAC_SHIFT))
        self.transmit(count, counters, start_ns)

    def _find_pktinfo(self, at: int, end: int) -> int:
        while at + _CMSG_DATA_AT <= end:
            clen, level, kind = _CMSG_HEAD.unpack_from(self.rx_control, at)
            if clen < _CMSG_DATA_AT:
                return -1
            if level == self.pktinfo_level and kind == self.pktinfo_type:
                return at + _CMSG_DATA_AT
            at += (clen + 7) & ~7
        return -1

    def _parse_control(self, at: int, controllen: int) -> tuple[int, int, int]:
        """The slow path: walk every control message (unusual order or missing timestamp)."""
        end = at + min(controllen, RX_CONTROL_SIZE)
        seconds, nanos, info_at = _NO_TIMESTAMP, 0, -1
        while at + _CMSG_DATA_AT <= end:
            clen, level, kind = _CMSG_HEAD.unpack_from(self.rx_control, at)
            if clen < _CMSG_DATA_AT:
                break
            if level == socket.SOL_SOCKET and kind == SCM_TIMESTAMPNS:
                seconds, nanos = struct.unpack_from("@qq", self.rx_control, at + _CMSG_DATA_AT)
            elif level == self.pktinfo_level and kind == self.pktinfo_type and self.wildcard:
                info_at = at + _CMSG_DATA_AT
            at += (clen + 7) & ~7
        return seconds, nanos, info_at
