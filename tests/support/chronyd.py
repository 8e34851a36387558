"""Run a real chronyd on loopback for tests and the benchmark, never touching the system clock.

chronyd is started with ``-x`` (no clock control), ``cmdport 0`` and a config of its own, as a
``local stratum`` server on a high port, so it answers NTP like a synchronized pool backend would.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Self

from tests.support.scoped import Scoped

CHRONYD_CANDIDATES = ("/usr/sbin/chronyd", "/usr/bin/chronyd")


def find_chronyd() -> str | None:
    found = shutil.which("chronyd")
    if found:
        return found
    for candidate in CHRONYD_CANDIDATES:
        if os.access(candidate, os.X_OK):
            return candidate
    return None


def free_udp_port(host: str = "127.0.0.1") -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


class Chronyd(Scoped):
    """A chronyd process serving NTP on ``127.0.0.1:port`` as a ``local stratum`` server.

    With ``stratum=None`` it has no reference at all and answers "unsynchronized" (LI=3).
    """

    def __init__(
        self,
        port: int | None = None,
        stratum: int | None = 10,
        extra_config: str = "",
        binary: str | None = None,
    ) -> None:
        self.port = port if port is not None else free_udp_port()
        self.stratum = stratum
        self.extra_config = extra_config
        self.binary = binary or find_chronyd()
        if self.binary is None:
            raise FileNotFoundError("chronyd not found: run scripts/install-chrony")
        self.workdir = Path(tempfile.mkdtemp(prefix="pyresponder-chronyd-"))
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> tuple[str, int]:
        return ("127.0.0.1", self.port)

    def config_text(self) -> str:
        return (
            f"port {self.port}\n"
            "bindaddress 127.0.0.1\n"
            "allow 127.0.0.1\n"
            "cmdport 0\n"
            + (f"local stratum {self.stratum}\n" if self.stratum is not None else "")
            + "noclientlog\n"
            + f"pidfile {self.workdir / 'chronyd.pid'}\n"
            + f"{self.extra_config}\n"
        )

    def start(self, wait: float = 10.0) -> Self:
        conf = self.workdir / "chrony.conf"
        conf.write_text(self.config_text())
        log = (self.workdir / "chronyd.log").open("wb")
        # -x: never adjust the system clock. -d: stay in the foreground, log to stderr.
        # -u root: the test workdir is not writable by the _chrony user.
        assert self.binary is not None
        self.process = subprocess.Popen(
            [self.binary, "-x", "-d", "-u", "root", "-f", str(conf)],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        self._wait_answering(wait)
        return self

    def _wait_answering(self, wait: float) -> None:
        """Poll until chronyd answers (synchronized, unless it was given no reference)."""
        deadline = time.monotonic() + wait
        request = bytes([0x23]) + bytes(39) + os.urandom(8)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.settimeout(0.2)
            while time.monotonic() < deadline:
                if self.process is not None and self.process.poll() is not None:
                    raise RuntimeError(f"chronyd exited early:\n{self.log()}")
                sock.sendto(request, self.address)
                try:
                    reply = sock.recv(1024)
                except OSError:
                    continue
                synchronized = reply[0] >> 6 != 3 and reply[1] != 0
                if len(reply) >= 48 and (synchronized or self.stratum is None):
                    return
                time.sleep(0.1)
        raise TimeoutError(f"chronyd did not answer on port {self.port}:\n{self.log()}")

    def log(self) -> str:
        path = self.workdir / "chronyd.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        self.process = None

    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)
