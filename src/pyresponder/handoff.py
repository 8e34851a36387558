"""Socket handoff without systemd: ``serve --control PATH`` and ``serve --takeover PATH``.

The running instance listens on a Unix stream socket. A new instance connects, asks for the
listening sockets and receives them as file descriptors (SCM_RIGHTS): from then on both read the
same kernel sockets, so nothing queued is lost. Once the new instance is ready it tells the old one
to finish; the old one answers what its workers hold and exits. One command per connection:

    sockets  -> one JSON line {"listeners": [names]} with the descriptors attached
    finish   -> "ok", then the instance shuts down gracefully
    status   -> one JSON line describing the instance
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Final

log = logging.getLogger(__name__)

MAX_FDS: Final = 64
TIMEOUT: Final = 5.0


class ControlServer:
    """The listening side, driven by the supervisor's select loop."""

    def __init__(self, path: str, provide: Callable[[], tuple[list[str], list[int]]],
                 status: Callable[[], dict[str, object]], finish: Callable[[], None]) -> None:
        self.path = path
        self._provide, self._status, self._finish = provide, status, finish
        # Bind beside the final path and rename over it: an old instance may still listen
        # there, and a client must always find one instance or the other, never nothing.
        staging = f"{path}.{os.getpid()}"
        with contextlib.suppress(FileNotFoundError):
            os.unlink(staging)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        old_umask = os.umask(0o077)  # the socket hands out listening sockets: owner only
        try:
            self.sock.bind(staging)
        finally:
            os.umask(old_umask)
        self.sock.listen(4)
        self.sock.setblocking(False)
        self._staging = staging
        self._inode = os.stat(staging).st_ino
        self.published = False

    def publish(self) -> None:
        """Move the socket to its final path (after any old instance there has been told)."""
        os.rename(self._staging, self.path)
        self.published = True

    def fileno(self) -> int:
        return self.sock.fileno()

    def handle(self) -> None:
        try:
            conn, _ = self.sock.accept()
        except (BlockingIOError, InterruptedError):
            return
        with conn:
            conn.settimeout(TIMEOUT)
            try:
                command = _read_line(conn)
                if command == "sockets":
                    names, fds = self._provide()
                    payload = json.dumps({"listeners": names}).encode() + b"\n"
                    socket.send_fds(conn, [payload], fds)
                    log.info("handed %d listening sockets to a new instance", len(fds))
                elif command == "status":
                    conn.sendall(json.dumps(self._status()).encode() + b"\n")
                elif command == "finish":
                    conn.sendall(b"ok\n")
                    log.info("a new instance took over: finishing")
                    self._finish()
                else:
                    conn.sendall(b"error: unknown command\n")
            except OSError as error:
                log.warning("control connection failed: %s", error)

    def close(self) -> None:
        self.sock.close()
        path = self.path if self.published else self._staging
        # Remove the path only while it is still ours: a successor may have renamed its own
        # socket over it already.
        with contextlib.suppress(OSError):
            if os.stat(path).st_ino == self._inode:
                os.unlink(path)


def _read_line(conn: socket.socket, limit: int = 256) -> str:
    data = b""
    while not data.endswith(b"\n") and len(data) < limit:
        chunk = conn.recv(limit)
        if not chunk:
            break
        data += chunk
    return data.decode(errors="replace").strip()


def _request(path: str, command: str) -> socket.socket:
    if not Path(path).exists():
        raise OSError(f"nothing to take over: no control socket at {path}")
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    conn.settimeout(TIMEOUT)
    try:
        conn.connect(path)
        conn.sendall(command.encode() + b"\n")
    except OSError as error:
        conn.close()
        raise OSError(f"cannot reach the instance at {path}: {error.strerror or error}") from None
    return conn


def fetch_sockets(path: str) -> list[socket.socket]:
    """Ask the instance at ``path`` for its listening sockets."""
    with _request(path, "sockets") as conn:
        message, fds, _, _ = socket.recv_fds(conn, 4096, MAX_FDS)
    if not fds:
        raise OSError(f"the instance at {path} sent no sockets: {message.decode(errors='replace')}")
    names = json.loads(message.decode()).get("listeners", [])
    log.info("took over %d listening sockets from %s: %s", len(fds), path, ", ".join(names))
    return [socket.socket(fileno=fd) for fd in fds]


def tell_to_finish(path: str) -> None:
    with _request(path, "finish") as conn:
        answer = _read_line(conn)
    if answer != "ok":
        raise OSError(f"the instance at {path} did not agree to finish: {answer!r}")


def query_status(path: str) -> dict[str, object]:
    with _request(path, "status") as conn:
        status: dict[str, object] = json.loads(_read_line(conn, 65536))
    return status


def replace_predecessor(path: str, control: ControlServer) -> bool:
    """Once serving: tell the instance at ``path`` to finish and take its control path.

    Never raises: the successor already serves, and stopping it now would leave fewer instances
    serving than before. When the predecessor cannot be told, both keep serving the same sockets
    until someone stops the old one; the log says so. True when the predecessor agreed.
    """
    agreed = True
    try:
        tell_to_finish(path)
    except (OSError, ValueError) as error:
        agreed = False
        log.error("serving, but the instance at %s was not told to finish (%s): it may still "
                  "be running beside this one; stop it by its pid", path, error)
    try:
        control.publish()
    except OSError as error:
        log.error("cannot take over the control path %s: %s", path, error)
    else:
        if agreed:
            log.info("took over from the instance at %s", path)
    return agreed
