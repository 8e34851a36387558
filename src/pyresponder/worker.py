"""A worker process: reads requests from the shared sockets and answers them.

Every worker reads every listening socket (non-blocking, woken by epoll with EPOLLEXCLUSIVE so one
datagram wakes one worker). The reply's first 24 bytes come from a header that is refreshed from
shared memory ten times a second, never per packet. The I/O itself is done by an engine per
socket: ``batchio.BatchSocket`` (recvmmsg/sendmmsg) or, where that is missing,
``plainio.PlainSocket``. An announced leap indicator is cleared at the leap itself (``leap``).
"""

from __future__ import annotations

import ctypes
import logging
import os
import select
import signal
import time
from typing import Final, Protocol

from . import batchio
from .leap import LeapWatch
from .plainio import PlainSocket
from .ratelimit import RateLimiter
from .shared import COUNTER_NAMES, SharedState
from .sockets import Listener
from .syncstate import SyncPolicy, evaluate

log = logging.getLogger(__name__)

REFRESH_INTERVAL: Final = 0.1  # seconds between reads of the shared backend state
DRAIN_ROUNDS: Final = 4  # batches read from one socket before the next socket gets a turn
_PR_SET_PDEATHSIG: Final = 1
_PR_SET_NAME: Final = 15


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
        self.leap = LeapWatch()
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
                events = poller.poll(REFRESH_INTERVAL)
                now = time.monotonic()
                if now >= self._next_refresh or now >= self.leap.clears_at:
                    self._refresh(now)
                for fd, _events in events:
                    engines[fd].drain(counters[fd], self.leap_bits, DRAIN_ROUNDS)
        finally:
            self._store_counters()
            poller.close()
        return 0

    def _refresh(self, now: float) -> None:
        header = evaluate(self.shared.latest(), now, self.policy).header
        header = self.leap.apply(header, time.time_ns(), now)
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
