"""Drive the worker's I/O engines in this process, over real sockets on loopback.

An engine is given a real listening socket; requests are sent to it from real client sockets
first, so that they wait in its receive queue as a burst, then one ``drain`` answers them and the
replies are read back with the client's kernel receive timestamps (SO_TIMESTAMPNS).
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from pyresponder import batchio, plainio, wire
from pyresponder.ratelimit import RateLimiter
from pyresponder.shared import COUNTER_NAMES
from pyresponder.sockets import SO_TIMESTAMPNS, Listener, prepare
from pyresponder.worker import Engine

HEADER = wire.server_header(0, 2, -24, 0.012, 0.034, bytes([192, 0, 2, 1]), 0xE000_0000_8000_0000)
_TIMESPEC = struct.Struct("@qq")

EngineFactory = Callable[[Listener], Engine]


def whole_batch(batch: int = 64, send_batch: int = 16,
                limiter: RateLimiter | None = None) -> EngineFactory:
    return lambda listener: batchio.BatchSocket(listener, batch, send_batch, limiter)


def per_packet(batch: int = 64, send_batch: int = 16,
               limiter: RateLimiter | None = None) -> EngineFactory:
    return lambda listener: batchio.BatchSocket(listener, batch, send_batch, limiter,
                                                whole_batches=False)


def plain(batch: int = 64, limiter: RateLimiter | None = None) -> EngineFactory:
    return lambda listener: plainio.PlainSocket(listener, batch, limiter)


ENGINES: dict[str, Callable[[], EngineFactory]] = {
    "whole-batch": whole_batch, "per-packet": per_packet, "plain": plain,
}


@dataclass
class Reply:
    data: bytes
    source: tuple[str, int]
    client_receive_ns: int  # the client's kernel receive time


@contextmanager
def listening(host: str) -> Iterator[Listener]:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind((host, 0))
        yield prepare(sock, 4 << 20)
    finally:
        sock.close()


def client(family: int = socket.AF_INET, host: str = "127.0.0.1") -> socket.socket:
    sock = socket.socket(family, socket.SOCK_DGRAM)
    sock.bind((host, 0))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 21)
    sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
    sock.setblocking(False)
    return sock


def replies(sock: socket.socket) -> list[Reply]:
    """Everything queued on a client socket, with its kernel receive times."""
    found: list[Reply] = []
    while True:
        try:
            data, ancillary, _flags, source = sock.recvmsg(512, socket.CMSG_SPACE(16))
        except BlockingIOError:
            return found
        stamp = 0
        for level, kind, payload in ancillary:
            if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS:
                seconds, nanos = _TIMESPEC.unpack(payload)
                stamp = seconds * wire.NS_PER_S + nanos
        found.append(Reply(data, source[:2], stamp))


def drain(engine: Engine, header: bytes = HEADER, rounds: int = 1000,
          set_header: bool = True) -> list[int]:
    """Answer what is queued; ``set_header=False`` keeps whatever the engine was left with."""
    counters = [0] * len(COUNTER_NAMES)
    if set_header:
        engine.set_header(header)
    engine.drain(counters, header[0] & 0xC0, rounds)
    return counters


def counted(counters: list[int]) -> dict[str, int]:
    return dict(zip(COUNTER_NAMES, counters, strict=True))


def exchange(
    factory: EngineFactory, host: str, sends: Iterable[tuple[bytes, str]],
    header: bytes = HEADER,
) -> tuple[Engine, list[Reply], dict[str, int]]:
    """Queue ``sends`` (payload, destination address) from one client, then drain once."""
    with listening(host) as listener:
        port = listener.sock.getsockname()[1]
        engine = factory(listener)
        clients: dict[int, socket.socket] = {}
        try:
            for payload, destination in sends:
                family = socket.AF_INET6 if ":" in destination else socket.AF_INET
                if family not in clients:
                    clients[family] = client(family, "::1" if family == socket.AF_INET6
                                             else "127.0.0.1")
                clients[family].sendto(payload, (destination, port))
            counters = drain(engine, header)
            received = [reply for sock in clients.values() for reply in replies(sock)]
        finally:
            for sock in clients.values():
                sock.close()
    return engine, received, counted(counters)
