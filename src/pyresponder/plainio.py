"""The plain engine: one datagram per system call (recvmsg_into / sendmsg), the portable fallback.

It only moves bytes; what to answer is ``request.respond``'s to decide, and the reply is stamped
and sent by ``transmitter.send_one``.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import struct
import time
from typing import Final

from . import request, wire
from .mmsg import RECEIVE_SIZE
from .ratelimit import RateLimiter, ipv6_key
from .shared import ANSWERED, KOD_SENT, RATE_LIMITED, RECEIVED, SEND_ERRORS
from .sockets import IP_PKTINFO, IPV6_PKTINFO, SCM_TIMESTAMPNS, Listener
from .transmitter import send_one

log = logging.getLogger(__name__)

_ANCILLARY_SIZE: Final = socket.CMSG_SPACE(16) + socket.CMSG_SPACE(20) + 64
_TIMESPEC: Final = struct.Struct("@qq")
_NS: Final = wire.NS_PER_S
_SOL_SOCKET: Final = int(socket.SOL_SOCKET)
_MSG_TRUNC: Final = int(socket.MSG_TRUNC)


class PlainSocket:
    def __init__(self, listener: Listener, batch: int, limiter: RateLimiter | None) -> None:
        self.limiter = limiter
        self.sock = listener.sock
        self.name = listener.name
        self.wildcard = listener.wildcard
        self.batch = batch
        self.header = bytes(24)
        self.clock = time.time_ns  # for transmit timestamps (Unix ns); tests pass a stepped one
        # Preallocated once: the loop reuses them for every packet.
        self._request = bytearray(RECEIVE_SIZE)
        self._request_buffers = [self._request]
        self._reply = bytearray(wire.PACKET_LEN)
        self._reply_buffers = [self._reply]

    def set_header(self, header: bytes) -> None:
        self.header = header
        self._reply[:24] = header  # the template request.respond patches

    def drain(self, counters: list[int], leap_bits: int, rounds: int) -> None:
        sock, wildcard, limiter = self.sock, self.wildcard, self.limiter
        buffer, buffers, reply = self._request, self._request_buffers, self._reply
        for _ in range(rounds * self.batch):
            try:
                length, ancillary, flags, address = sock.recvmsg_into(buffers, _ANCILLARY_SIZE)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as error:
                log.warning("receive on %s failed: %s", self.name, error)
                return
            counters[RECEIVED] += 1
            if flags & _MSG_TRUNC:
                length = 0
            receive_ns = 0
            route: list[tuple[int, int, bytes]] = []
            reachable = True
            for level, kind, data in ancillary:
                if kind == SCM_TIMESTAMPNS and level == _SOL_SOCKET:
                    seconds, nanos = _TIMESPEC.unpack(data)
                    receive_ns = seconds * _NS + nanos
                elif wildcard:
                    reachable, route = _route(level, kind, data)
            if not receive_ns:
                receive_ns = time.time_ns()
            client = client_key(address[0]) if limiter is not None else 0
            verdict = request.respond(reply, 0, buffer, 0, length, address[1], reachable, client,
                                      receive_ns, leap_bits, limiter)
            if verdict < 0:
                counters[request.DROP_COUNTER[verdict]] += 1
                continue
            if verdict:  # over the rate limit, answered anyway or kissed
                counters[RATE_LIMITED] += 1
                if verdict == request.REPLY_KOD:
                    counters[KOD_SENT] += 1
            if send_one(sock, reply, self._reply_buffers, address, route, receive_ns,
                        self.clock):
                counters[ANSWERED] += 1
            else:
                counters[SEND_ERRORS] += 1
            if verdict == request.REPLY_KOD:
                reply[:24] = self.header


def client_key(host: str) -> int:
    """The rate limiter's key for a source address, the same as the batch engine computes."""
    address = int(ipaddress.ip_address(host.partition("%")[0]))
    if ":" in host:
        return ipv6_key(address >> 64, address & ((1 << 64) - 1))
    return address


def _route(level: int, kind: int, data: bytes) -> tuple[bool, list[tuple[int, int, bytes]]]:
    """Whether the request was sent to a unicast address of ours, and the ancillary data that
    makes the reply leave from that address."""
    if level == socket.IPPROTO_IP and kind == IP_PKTINFO and len(data) >= 12:
        # struct in_pktinfo {ifindex, spec_dst, addr}: set spec_dst to the request's destination.
        reachable = request.unicast_destination(data[8:12], data[4:8])
        return reachable, [(socket.IPPROTO_IP, IP_PKTINFO, bytes(4) + data[8:12] + bytes(4))]
    if level == socket.IPPROTO_IPV6 and kind == IPV6_PKTINFO and len(data) >= 20:
        # struct in6_pktinfo {addr, ifindex}: the same address, on the interface it came in on.
        reachable = request.unicast_destination(data[:16])
        return reachable, [(socket.IPPROTO_IPV6, IPV6_PKTINFO, bytes(data[:20]))]
    return True, []
