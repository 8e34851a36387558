"""Listening sockets: inherited from systemd (LISTEN_FDS) or bound here, and their options."""

from __future__ import annotations

import errno
import logging
import os
import socket
from collections.abc import Iterable, MutableMapping
from dataclasses import dataclass
from typing import Final

from .endpoints import Endpoint

log = logging.getLogger(__name__)

# Linux values the socket module does not export.
SO_TIMESTAMPNS: Final = 35
SCM_TIMESTAMPNS: Final = SO_TIMESTAMPNS
SO_RCVBUFFORCE: Final = 33
IP_PKTINFO: Final = 8
IPV6_RECVPKTINFO: Final = socket.IPV6_RECVPKTINFO
IPV6_PKTINFO: Final = socket.IPV6_PKTINFO
SD_LISTEN_FDS_START: Final = 3

DEFAULT_RECEIVE_BUFFER: Final = 8 << 20
MAX_RECEIVE_BUFFER: Final = 1 << 30  # SO_RCVBUF is a C int that the kernel doubles


@dataclass(slots=True)
class Listener:
    sock: socket.socket
    name: str  # how logs and metrics refer to it
    wildcard: bool  # bound to 0.0.0.0 or [::]: replies need an explicit source address

    @property
    def family(self) -> int:
        return self.sock.family


def systemd_sockets(environ: MutableMapping[str, str] | None = None) -> list[socket.socket]:
    """The sockets passed by systemd socket activation; empty when not activated.

    Follows sd_listen_fds(3): fds start at 3, LISTEN_PID must be this process. The variables are
    removed so that forked workers and children do not mistake them for their own.
    """
    env = os.environ if environ is None else environ
    pid, count = env.get("LISTEN_PID", ""), env.get("LISTEN_FDS", "")
    for key in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        env.pop(key, None)
    if not count:
        return []
    if pid and pid != str(os.getpid()):
        log.warning("LISTEN_FDS is set for pid %s, not for this process: ignored", pid)
        return []
    if not count.isdigit():
        raise ValueError(f"LISTEN_FDS={count!r} is not a number")
    sockets = []
    for fd in range(SD_LISTEN_FDS_START, SD_LISTEN_FDS_START + int(count)):
        os.set_inheritable(fd, False)
        sock = socket.socket(fileno=fd)
        if sock.type != socket.SOCK_DGRAM:
            raise ValueError(f"inherited fd {fd} is not a datagram socket")
        sockets.append(sock)
    return sockets


def bind_endpoint(endpoint: Endpoint, reuse_port: bool = False) -> socket.socket:
    """A UDP socket bound to ``endpoint``; ``[::]`` is dual-stack.

    Without ``reuse_port`` a second process binding the same address fails (EADDRINUSE) instead
    of silently taking half of the traffic, as an SO_REUSEPORT group would.
    """
    sock = socket.socket(endpoint.family, socket.SOCK_DGRAM)
    try:
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if endpoint.family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind((endpoint.host, endpoint.port))
    except OSError as error:
        sock.close()
        hint = ""
        if error.errno == errno.EADDRINUSE:
            hint = " (another program, or another pyresponder, holds it" + (
                "" if reuse_port else "; --reuse-port shares it on purpose") + ")"
        raise OSError(error.errno, f"cannot listen on {endpoint}: {error.strerror}{hint}")\
            from None
    return sock


def prepare(sock: socket.socket, receive_buffer: int, kernel_timestamps: bool = True) -> Listener:
    """Switch on what the worker loop relies on and describe the socket."""
    sock.setblocking(False)  # the socket is shared by every worker (and both colours)
    sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, int(kernel_timestamps))
    host, port = sock.getsockname()[:2]
    wildcard = host in ("0.0.0.0", "::")
    # The destination address only matters where it is not the socket's own.
    if sock.family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, IPV6_RECVPKTINFO, int(wildcard))
    else:
        sock.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, int(wildcard))
    if receive_buffer:
        _grow_receive_buffer(sock, receive_buffer)
    name = f"[{host}]:{port}" if sock.family == socket.AF_INET6 else f"{host}:{port}"
    return Listener(sock, name, wildcard)


def _grow_receive_buffer(sock: socket.socket, size: int) -> None:
    """Raise SO_RCVBUF: a few ms of stall at pool load overflows the default buffer."""
    current = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
    if current >= size:  # the kernel reports twice what was set; never shrink a tuned socket
        return
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, size)  # needs CAP_NET_ADMIN
    except PermissionError:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)  # capped by rmem_max
    granted = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) // 2
    if granted < size:
        log.warning(
            "receive buffer of %s is %d bytes, less than the %d asked for: "
            "raise net.core.rmem_max",
            sock.getsockname()[:2],
            granted,
            size,
        )


def open_listeners(
    inherited: Iterable[socket.socket],
    endpoints: Iterable[Endpoint],
    receive_buffer: int,
    kernel_timestamps: bool = True,
    reuse_port: bool = False,
) -> list[Listener]:
    """Prepare inherited sockets and bind the extra endpoints; all or nothing."""
    listeners: list[Listener] = []
    try:
        for sock in inherited:
            listeners.append(prepare(sock, receive_buffer, kernel_timestamps))
        for endpoint in endpoints:
            sock = bind_endpoint(endpoint, reuse_port)
            listeners.append(prepare(sock, receive_buffer, kernel_timestamps))
    except OSError:
        for listener in listeners:
            listener.sock.close()
        raise
    return listeners
