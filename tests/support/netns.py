"""A server and a client network namespace joined by a veth pair, for the XDP tests and bench.

Everything lives in namespaces created here (names carry this process's pid), so no traffic
touches the host's interfaces. Deleting the namespaces removes the veth pair and every XDP program
attached to it; ``close()`` does that and is safe to call twice.

``entered(ns)`` switches the calling thread into a namespace for a moment (setns): sockets
created and processes started meanwhile stay there.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import subprocess
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Self

from tests.support.scoped import Scoped

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def unavailable_reason() -> str | None:
    """Why namespace tests cannot run here, or None."""
    if os.geteuid() != 0:
        return "needs root (network namespaces, XDP)"
    for tool in ("ip", "ethtool"):
        if shutil.which(tool) is None:
            return f"{tool} not installed (scripts/install-bpf-toolchain)"
    return None


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        error = ctypes.get_errno()
        raise OSError(error, f"setns: {os.strerror(error)}")


@contextlib.contextmanager
def entered(name: str) -> Iterator[None]:
    original = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    target = os.open(f"/run/netns/{name}", os.O_RDONLY)
    try:
        _setns(target)
        try:
            yield
        finally:
            _setns(original)
    finally:
        os.close(target)
        os.close(original)


def run(*command: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, check=check, capture_output=True, text=True, timeout=30)


@dataclass(frozen=True)
class Side:
    ns: str
    dev: str
    ipv4: str
    ipv6: str

    def exec(self, *command: str) -> list[str]:
        """``command`` prefixed to run inside this side's namespace."""
        return ["ip", "netns", "exec", self.ns, *command]

    def mac(self) -> str:
        text = run("ip", "-n", self.ns, "-br", "link", "show", "dev", self.dev).stdout
        return text.split()[2]


class VethPair(Scoped):
    """``server`` and ``client`` sides: 10.211.<n>.1/.2 and fd11:<n>::1/::2 over one veth pair."""

    def __init__(self, tag: str = "x", subnet: int | None = None) -> None:
        suffix = f"{os.getpid() % 100000}{tag}"
        n = subnet if subnet is not None else os.getpid() % 250 + 1
        self.server = Side(f"pyr11s{suffix}", "pyr11s0", f"10.211.{n}.1", f"fd11:{n}::1")
        self.client = Side(f"pyr11c{suffix}", "pyr11c0", f"10.211.{n}.2", f"fd11:{n}::2")
        self._created: list[str] = []

    def start(self) -> Self:
        try:
            for side in (self.server, self.client):
                run("ip", "netns", "add", side.ns)
                self._created.append(side.ns)
                run("ip", "-n", side.ns, "link", "set", "lo", "up")
            run("ip", "-n", self.server.ns, "link", "add", self.server.dev, "type", "veth",
                "peer", "name", self.client.dev, "netns", self.client.ns)
            for side in (self.server, self.client):
                run("ip", "-n", side.ns, "addr", "add", f"{side.ipv4}/24", "dev", side.dev)
                run("ip", "-n", side.ns, "-6", "addr", "add", f"{side.ipv6}/64", "dev", side.dev,
                    "nodad")
                run("ip", "-n", side.ns, "link", "set", side.dev, "up")
            # Native XDP_TX replies would otherwise carry partial checksums (tx offload).
            run(*self.client.exec("ethtool", "-K", self.client.dev, "tx", "off"))
            run(*self.server.exec("ethtool", "-K", self.server.dev, "tx", "off"))
            # Neighbour entries up front: the first probe should not wait for ARP/ND.
            for side, other in ((self.server, self.client), (self.client, self.server)):
                mac = other.mac()
                run("ip", "-n", side.ns, "neigh", "replace", other.ipv4, "lladdr", mac, "dev",
                    side.dev, "nud", "permanent")
                run("ip", "-n", side.ns, "-6", "neigh", "replace", other.ipv6, "lladdr", mac,
                    "dev", side.dev, "nud", "permanent")
        except BaseException:
            self.cleanup()
            raise
        return self

    def cleanup(self) -> None:
        for ns in reversed(self._created):
            run("ip", "netns", "del", ns, check=False)
        self._created.clear()


def snmp_counter(side: Side, table: str, name: str) -> int:
    """One counter of /proc/net/snmp (or snmp6) inside a namespace, e.g. ("Udp", "InCsumErrors")."""
    with entered(side.ns):
        text = Path("/proc/self/net/snmp").read_text()
        text6 = Path("/proc/self/net/snmp6").read_text()
    lines = [line.split() for line in text.splitlines()]
    for header, values in zip(lines[::2], lines[1::2], strict=False):
        if header[0] == f"{table}:" and name in header:
            return int(values[header.index(name)])
    for line in text6.splitlines():
        key, _, value = line.partition(" ")
        if key == f"{table}{name}":
            return int(value.strip())
    raise KeyError(f"{table} {name}")


class Process:
    """A command started inside a namespace, output to a log file, stopped by pid."""

    def __init__(self, side: Side, command: Sequence[str], logfile: Path,
                 env: dict[str, str] | None = None) -> None:
        self.logfile = logfile
        with entered(side.ns), logfile.open("wb") as log:
            self.process = subprocess.Popen(list(command), stdout=log, stderr=subprocess.STDOUT,
                                            env=env)

    @property
    def pid(self) -> int:
        return self.process.pid

    def running(self) -> bool:
        return self.process.poll() is None

    def log(self) -> str:
        return self.logfile.read_text(errors="replace") if self.logfile.exists() else ""

    def stop(self, sig: int = 15, timeout: float = 10.0) -> int | None:
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        return self.process.returncode
