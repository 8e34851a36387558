"""Start a real pyresponder process for integration tests and wait until it answers."""

from __future__ import annotations

import os
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Self

from tests.support.scoped import Scoped


def ntp_request(version: int = 4, mode: int = 3, transmit: bytes | None = None) -> bytes:
    return bytes([(version << 3) | mode]) + bytes(39) + (transmit or os.urandom(8))


def query(
    address: tuple[str, int],
    packet: bytes,
    timeout: float = 1.0,
    family: int = socket.AF_INET,
    source_port: int = 0,
) -> tuple[bytes, tuple[str, int]] | None:
    """Send ``packet`` and return the first datagram that comes back with its source, or None."""
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        if source_port:
            sock.bind(("127.0.0.1" if family == socket.AF_INET else "::1", source_port))
        sock.settimeout(timeout)
        sock.sendto(packet, address)
        try:
            data, source = sock.recvfrom(4096)
        except TimeoutError:
            return None
        return data, source


class Responder(Scoped):
    """``python -m pyresponder serve ...`` with its log captured to a file."""

    def __init__(
        self,
        args: Sequence[str],
        env: dict[str, str] | None = None,
        pass_fd: int | None = None,
    ) -> None:
        self.args = list(args)
        self.env = dict(os.environ if env is None else env)
        self.pass_fd = pass_fd
        self.logfile = Path(tempfile.mkstemp(prefix="pyresponder-", suffix=".log")[1])
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> Self:
        command = [sys.executable, "-m", "pyresponder", "serve", *self.args]
        pass_fds: tuple[int, ...] = ()
        if self.pass_fd is not None:
            # Socket activation as systemd does it: the socket at fd 3, LISTEN_PID = the server
            # (a trampoline moves the fd, then execs the server, which keeps its pid).
            fd = self.pass_fd
            pass_fds = (fd,)
            trampoline = (
                "import os, sys; "
                f"os.dup2({fd}, 3); os.close({fd}); "
                "os.environ['LISTEN_PID'] = str(os.getpid()); "
                "os.execv(sys.executable, sys.argv[1:])"
            )
            command = [sys.executable, "-c", trampoline, *command]
            self.env["LISTEN_FDS"] = "1"
        with self.logfile.open("wb") as log:
            self.process = subprocess.Popen(
                command, env=self.env, stdout=log, stderr=subprocess.STDOUT, pass_fds=pass_fds
            )
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def wait_answering(self, address: tuple[str, int], timeout: float = 10.0) -> bytes:
        deadline = time.monotonic() + timeout
        family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"pyresponder exited early:\n{self.log()}")
            answer = query(address, ntp_request(), timeout=0.2, family=family)
            if answer is not None:
                return answer[0]
        raise TimeoutError(f"pyresponder did not answer on {address}:\n{self.log()}")

    def workers(self) -> list[int]:
        """PIDs of the worker processes (the supervisor's children named pyresponder-wN)."""
        return [pid for pid, name in self.children() if name.startswith("pyresponder-w")]

    def wait_workers(self, count: int, timeout: float = 10.0) -> list[int]:
        """The worker PIDs once ``count`` of them run (a fresh worker names itself first)."""
        deadline = time.monotonic() + timeout
        while len(workers := self.workers()) != count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(workers)} workers, not {count}:\n{self.log()}")
            time.sleep(0.02)
        return workers

    def children(self) -> list[tuple[int, str]]:
        """(pid, process name) of every child of the supervisor."""
        try:
            children = Path(f"/proc/{self.pid}/task/{self.pid}/children").read_text().split()
        except (FileNotFoundError, ProcessLookupError):
            return []  # the supervisor has exited
        found = []
        for pid in map(int, children):
            try:
                found.append((pid, Path(f"/proc/{pid}/comm").read_text().strip()))
            except FileNotFoundError:
                continue  # exited meanwhile
        return found

    def log(self) -> str:
        return self.logfile.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int:
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
                raise
        return self.process.returncode

    def cleanup(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(5)
        self.logfile.unlink(missing_ok=True)


def stream_during(
    port: int, seconds: float, rate: int, actions: list[tuple[float, Callable[[], object]]]
) -> tuple[int, int]:
    """Send ``rate`` requests/s for ``seconds`` while running ``actions`` at their times."""
    origins: set[bytes] = set()
    answered: set[bytes] = set()
    done = threading.Event()
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
    sock.settimeout(0.2)

    def receive() -> None:
        while True:
            try:
                data = sock.recv(512)
            except TimeoutError:
                if done.is_set():
                    return
                continue
            answered.add(data[24:32])

    receiver = threading.Thread(target=receive)
    receiver.start()

    def run_actions() -> None:
        begin = time.monotonic()
        for at, action in actions:
            time.sleep(max(0.0, begin + at - time.monotonic()))
            action()

    actor = threading.Thread(target=run_actions)
    actor.start()
    start = time.monotonic()
    count = 0
    while (elapsed := time.monotonic() - start) < seconds:
        while count < elapsed * rate:
            transmit = struct.pack("!Q", count + 1)
            origins.add(transmit)
            sock.sendto(ntp_request(transmit=transmit), ("127.0.0.1", port))
            count += 1
        time.sleep(0.001)
    actor.join(30)
    time.sleep(1.0)  # the last replies
    done.set()
    receiver.join(5)
    sock.close()
    return len(origins), len(answered & origins)
