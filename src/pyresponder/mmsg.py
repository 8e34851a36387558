"""The preallocated buffers that recvmmsg and sendmmsg work on, and the two libc calls.

Every buffer is allocated once per socket: request slots, source-address slots, ancillary-data
slots, reply slots and the two mmsghdr arrays live in bytearrays whose addresses are handed to
the kernel. Slot ``i`` of every buffer belongs to the ``i``-th datagram of a batch; reply ``i``'s
msg_name points at request ``i``'s source-address slot, so one sendmmsg answers a batch without
copying addresses. A reply is sent from two pieces: its first 40 bytes from ``replies`` and its
transmit timestamp from ``stamps``.

The kernel overwrites msg_namelen, msg_controllen and msg_flags of the receive headers: they are
restored from a pristine copy before each recvmmsg (``Buffers.reset_receive``).
"""

from __future__ import annotations

import ctypes
import socket
import struct
from typing import Final

from . import wire
from .sockets import IP_PKTINFO, IPV6_PKTINFO


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
NAME_AT: Final = _MsgHdr.name.offset
CONTROLLEN_AT: Final = _MsgHdr.controllen.offset
FLAGS_AT: Final = _MsgHdr.flags.offset
LEN_AT: Final = _MMsgHdr.len.offset

RECEIVE_SIZE: Final = 2048
NAME_SIZE: Final = 128  # sockaddr_storage
RX_CONTROL_SIZE: Final = 256
TX_CONTROL_SIZE: Final = socket.CMSG_SPACE(20)
REPLY_SIZE: Final = wire.PACKET_LEN
STAMP_AT: Final = 40  # where the transmit timestamp goes in a reply
STAMP_SIZE: Final = 8

_IOVEC: Final = struct.Struct("@PN")
_MSGHDR_PTRS: Final = struct.Struct("@PI4xPNPN")  # name, namelen, iov, iovlen, control, clen
_CMSG_HEAD: Final = struct.Struct("@Nii")

_libc = ctypes.CDLL(None, use_errno=True)
try:
    recvmmsg = _libc.recvmmsg
    sendmmsg = _libc.sendmmsg
except AttributeError:  # not Linux/glibc-like: the worker falls back to recvmsg_into
    AVAILABLE = False
else:
    AVAILABLE = True
    recvmmsg.argtypes = (ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int,
                         ctypes.c_void_p)
    recvmmsg.restype = ctypes.c_int
    sendmmsg.argtypes = (ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int)
    sendmmsg.restype = ctypes.c_int


class Buffers:
    """One socket's slots for ``batch`` datagrams, pinned for the kernel."""

    def __init__(self, batch: int, ipv6: bool, wildcard: bool) -> None:
        self.batch = batch
        self.ipv6 = ipv6
        self.wildcard = wildcard
        self._pins: list[ctypes.Array[ctypes.c_char]] = []

        self.requests = bytearray(batch * RECEIVE_SIZE)
        self.names = bytearray(batch * NAME_SIZE)
        self.rx_control = bytearray(batch * RX_CONTROL_SIZE)
        self.replies = bytearray(batch * REPLY_SIZE)
        self.tx_control = bytearray(batch * TX_CONTROL_SIZE)
        # Transmit timestamps live apart from the replies, one 8-byte slot each, as the second
        # iovec of every reply: a group is stamped with one pack_into of consecutive values.
        self.stamps = bytearray(batch * STAMP_SIZE)
        rx_iov, tx_iov = bytearray(batch * IOVEC_SIZE), bytearray(batch * 2 * IOVEC_SIZE)
        self.rx_headers = bytearray(batch * MMSG_SIZE)
        self.tx_headers = bytearray(batch * MMSG_SIZE)
        requests_at, self.names_at = self._pin(self.requests), self._pin(self.names)
        rx_control_at, replies_at = self._pin(self.rx_control), self._pin(self.replies)
        tx_control_at, rx_iov_at, tx_iov_at = (
            self._pin(self.tx_control), self._pin(rx_iov), self._pin(tx_iov)
        )
        stamps_at = self._pin(self.stamps)
        self.rx_headers_at = self._pin(self.rx_headers)
        self.tx_headers_at = self._pin(self.tx_headers)

        # Where a reply's source address goes: in_pktinfo.ipi_spec_dst or in6_pktinfo.ipi6_addr.
        if ipv6:
            self.pktinfo_level, self.pktinfo_type, info_len = socket.IPPROTO_IPV6, IPV6_PKTINFO, 20
            self.dst_in_rx, self.dst_len, self.dst_in_tx = 0, 20, 0  # address + ifindex
        else:
            self.pktinfo_level, self.pktinfo_type, info_len = socket.IPPROTO_IP, IP_PKTINFO, 12
            self.dst_in_rx, self.dst_len, self.dst_in_tx = 8, 4, 4  # ipi_addr -> ipi_spec_dst
        self.tx_controllen = socket.CMSG_SPACE(info_len)
        name_len = 28 if ipv6 else 16  # sockaddr_in6 / sockaddr_in: fixed per socket family

        for i in range(batch):
            _IOVEC.pack_into(rx_iov, i * IOVEC_SIZE, requests_at + i * RECEIVE_SIZE, RECEIVE_SIZE)
            _IOVEC.pack_into(tx_iov, 2 * i * IOVEC_SIZE, replies_at + i * REPLY_SIZE, STAMP_AT)
            _IOVEC.pack_into(tx_iov, (2 * i + 1) * IOVEC_SIZE, stamps_at + i * STAMP_SIZE,
                             STAMP_SIZE)
            _MSGHDR_PTRS.pack_into(
                self.rx_headers, i * MMSG_SIZE, self.names_at + i * NAME_SIZE, NAME_SIZE,
                rx_iov_at + i * IOVEC_SIZE, 1, rx_control_at + i * RX_CONTROL_SIZE,
                RX_CONTROL_SIZE,
            )
            _MSGHDR_PTRS.pack_into(
                self.tx_headers, i * MMSG_SIZE, self.names_at + i * NAME_SIZE, name_len,
                tx_iov_at + 2 * i * IOVEC_SIZE, 2,
                tx_control_at + i * TX_CONTROL_SIZE if wildcard else 0,
                self.tx_controllen if wildcard else 0,
            )
            _CMSG_HEAD.pack_into(self.tx_control, i * TX_CONTROL_SIZE, socket.CMSG_LEN(info_len),
                                 self.pktinfo_level, self.pktinfo_type)
        self.rx_pristine = bytes(self.rx_headers)
        self.tx_pristine = bytes(self.tx_headers)

    def _pin(self, buffer: bytearray) -> int:
        """The address of a bytearray's memory; the ctypes view that pins it is kept alive."""
        view = (ctypes.c_char * len(buffer)).from_buffer(buffer)
        self._pins.append(view)
        return ctypes.addressof(view)

    def set_header(self, header: bytes) -> None:
        """Write the server's 24-byte header into every reply slot (on backend state changes)."""
        for offset in range(0, len(self.replies), REPLY_SIZE):
            self.replies[offset : offset + 24] = header
