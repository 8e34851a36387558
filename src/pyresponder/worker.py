"""A worker process: reads requests from the shared sockets and answers them.

Every worker reads every listening socket (non-blocking, woken by epoll with EPOLLEXCLUSIVE so one
datagram wakes one worker). The reply's first 24 bytes come from a header that is refreshed from
shared memory ten times a second, never per packet. The I/O itself is done by an engine per
socket: ``batchio.BatchSocket`` (recvmmsg/sendmmsg) or, where that is missing, ``PlainSocket``.
"""

from __future__ import annotations

import ctypes
import ipaddress
import logging
import os
import select
import signal
import socket
import struct
import time
from typing import Final, Protocol

from . import batchio, wire
from .ratelimit import DROP, KISS_OF_DEATH, RateLimiter, ipv6_key
from .shared import (
    ANSWERED,
    COUNTER_NAMES,
    DROP_BASE,
    KOD_SENT,
    RATE_LIMITED,
    RECEIVED,
    SEND_ERRORS,
    SharedState,
)
from .sockets import IP_PKTINFO, IPV6_PKTINFO, SCM_TIMESTAMPNS, Listener
from .syncstate import SyncPolicy, evaluate

log = logging.getLogger(__name__)

REFRESH_INTERVAL: Final = 0.1  # seconds between reads of the shared backend state
DRAIN_ROUNDS: Final = 4  # batches read from one socket before the next socket gets a turn
_ANCILLARY_SIZE: Final = socket.CMSG_SPACE(16) + socket.CMSG_SPACE(20) + 64
_TIMESPEC: Final = struct.Struct("@qq")
_U64: Final = struct.Struct("!Q")
_PR_SET_PDEATHSIG: Final = 1
_PR_SET_NAME: Final = 15
_NS_PER_S: Final = 1_000_000_000


class Engine(Protocol):
    def set_header(self, header: bytes) -> None: ...

    def drain(self, counters: list[int], leap_bits: int, rounds: int) -> None: ...


def make_engine(
    listener: Listener, io: str, batch: int, send_batch: int, limiter: RateLimiter | None
) -> Engine:
    if io == "batch" and batchio.AVAILABLE:
        return batchio.BatchSocket(listener, batch, send_batch, limiter)
    return PlainSocket(listener, batch, limiter)


class Worker:
    def __init__(
        self,
        index: int,
        listeners: list[Listener],
        shared: SharedState,
        policy: SyncPolicy,
        parent_pid: int,
        io: str = "batch",
        batch: int = batchio.DEFAULT_BATCH,
        send_batch: int = batchio.DEFAULT_SEND_BATCH,
        limiter: RateLimiter | None = None,
        spread_over: int = 0,
    ) -> None:
        self.index = index
        # Which sockets this worker reads: all of them (shared), or with spread_over=N workers
        # every N-th one (one SO_REUSEPORT socket per worker), kept with its position for the
        # counters.
        self.positions = [
            (position, listener)
            for position, listener in enumerate(listeners)
            if not spread_over or len(listeners) < spread_over
            or position % spread_over == index
        ]
        self.shared = shared
        self.policy = policy
        self.parent_pid = parent_pid
        self.stopping = False
        self.engines = {
            listener.sock.fileno(): make_engine(listener, io, batch, send_batch, limiter)
            for _, listener in self.positions
        }
        # One counter list per socket, continuing the totals of a dead predecessor.
        self.counters = {
            listener.sock.fileno(): shared.load_counters(index, position)
            for position, listener in self.positions
        }
        self.header = b""
        self.leap_bits = 0
        self._next_refresh = 0.0

    def _on_signal(self, signum: int, frame: object) -> None:
        self.stopping = True  # finish the packets in hand, then exit

    def run(self) -> int:
        become_child(f"pyresponder-w{self.index}")
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        signal.set_wakeup_fd(-1)
        poller = select.epoll()
        for fd in self.engines:
            poller.register(fd, select.EPOLLIN | select.EPOLLEXCLUSIVE)
        self._refresh(time.monotonic())
        engines, counters = self.engines, self.counters
        try:
            while not self.stopping:
                for fd, _events in poller.poll(REFRESH_INTERVAL):
                    engines[fd].drain(counters[fd], self.leap_bits, DRAIN_ROUNDS)
                now = time.monotonic()
                if now >= self._next_refresh:
                    self._refresh(now)
        finally:
            self._store_counters()
            poller.close()
        return 0

    def _refresh(self, now: float) -> None:
        header = evaluate(self.shared.latest(), now, self.policy).header
        if header != self.header:
            self.header = header
            self.leap_bits = header[0] & 0xC0
            for engine in self.engines.values():
                engine.set_header(header)
        self._store_counters()
        self._next_refresh = now + REFRESH_INTERVAL
        if os.getppid() != self.parent_pid:
            log.error("worker %d: supervisor is gone, exiting", self.index)
            self.stopping = True


    def _store_counters(self) -> None:
        for position, listener in self.positions:
            counters = self.counters[listener.sock.fileno()]
            self.shared.store_counters(self.index, counters, position)


class PlainSocket:
    """One datagram per system call (recvmsg_into/sendmsg): the portable fallback."""

    def __init__(self, listener: Listener, batch: int, limiter: RateLimiter | None) -> None:
        self.limiter = limiter
        self.sock = listener.sock
        self.name = listener.name
        self.wildcard = listener.wildcard
        self.batch = batch
        self.header = bytes(24)
        # Preallocated once: the loop reuses them for every packet.
        self._request = bytearray(batchio.RECEIVE_SIZE)
        self._request_buffers = [self._request]
        self._reply = bytearray(wire.PACKET_LEN)
        self._reply_buffers = [self._reply]

    def set_header(self, header: bytes) -> None:
        self.header = header

    def drain(self, counters: list[int], leap_bits: int, rounds: int) -> None:
        sock, wildcard, header = self.sock, self.wildcard, self.header
        buffer, buffers, reply = self._request, self._request_buffers, self._reply
        time_ns = time.time_ns
        for _ in range(rounds * self.batch):
            try:
                length, ancillary, flags, address = sock.recvmsg_into(buffers, _ANCILLARY_SIZE)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as error:
                log.warning("receive on %s failed: %s", self.name, error)
                return
            counters[RECEIVED] += 1
            mode = wire.reply_mode(buffer[0], length, address[1]) if length else wire.DROP_LENGTH
            if flags & socket.MSG_TRUNC:
                mode = wire.DROP_LENGTH
            if mode < 0:
                counters[DROP_BASE - mode] += 1
                continue
            receive_ns = 0
            pktinfo = None
            for level, kind, data in ancillary:
                if kind == SCM_TIMESTAMPNS and level == socket.SOL_SOCKET:
                    seconds, nanos = _TIMESPEC.unpack(data)
                    receive_ns = seconds * _NS_PER_S + nanos
                elif wildcard:
                    pktinfo = _reply_pktinfo(level, kind, data)
            if not receive_ns:
                receive_ns = time_ns()
            kiss = False
            if self.limiter is not None and not self.limiter.admit(
                _client_key(address[0]), receive_ns / _NS_PER_S
            ):
                counters[RATE_LIMITED] += 1
                fate = self.limiter.over_limit()
                if fate == DROP:
                    continue
                kiss = fate == KISS_OF_DEATH
            wire.write_reply(reply, buffer, mode, header, wire.ntp_from_unix_ns(receive_ns), 0)
            if kiss:  # RFC 5905 kiss-o'-death: LI 3, stratum 0, refid "RATE"
                reply[0] = 0xC0 | (reply[0] & 0x3F)
                reply[1] = 0
                reply[12:16] = b"RATE"
                counters[KOD_SENT] += 1
            # The transmit timestamp is read last, as close to the send as Python allows.
            _U64.pack_into(reply, 40, wire.ntp_from_unix_ns(time_ns()))
            try:
                if pktinfo is None:
                    sock.sendto(reply, address)
                else:
                    sock.sendmsg(self._reply_buffers, [pktinfo], 0, address)
            except OSError:
                counters[SEND_ERRORS] += 1
                continue
            counters[ANSWERED] += 1


def _client_key(host: str) -> int:
    """The rate limiter's key for a source address, the same as the batch engine computes."""
    address = int(ipaddress.ip_address(host.partition("%")[0]))
    if ":" in host:
        return ipv6_key(address >> 64, address & ((1 << 64) - 1))
    return address


def _reply_pktinfo(level: int, kind: int, data: bytes) -> tuple[int, int, bytes] | None:
    """Ancillary data that makes a reply leave from the address the request was sent to."""
    if level == socket.IPPROTO_IP and kind == IP_PKTINFO and len(data) >= 12:
        # struct in_pktinfo {ifindex, spec_dst, addr}: set spec_dst to the request's destination.
        return (socket.IPPROTO_IP, IP_PKTINFO, bytes(4) + data[8:12] + bytes(4))
    if level == socket.IPPROTO_IPV6 and kind == IPV6_PKTINFO and len(data) >= 20:
        # struct in6_pktinfo {addr, ifindex}: the same address, on the interface it came in on.
        return (socket.IPPROTO_IPV6, IPV6_PKTINFO, bytes(data[:20]))
    return None


def become_child(name: str) -> None:
    """Name this forked process (ps, top, /proc/PID/comm show it) and tie it to the supervisor.

    The kernel sends SIGTERM if the supervisor dies, SIGKILL included; where prctl is missing,
    the parent-pid checks in the loops still notice.
    """
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        libc.prctl(_PR_SET_NAME, name.encode()[:15], 0, 0, 0)
    except (OSError, AttributeError):
        pass


def counter_summary(totals: dict[str, int]) -> str:
    return ", ".join(f"{name} {totals[name]}" for name in COUNTER_NAMES)
