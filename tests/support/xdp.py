"""A complete XDP test bed: veth pair in two namespaces, chronyd and ``pyresponder xdp`` on the
server side, and (for native mode) the pass program the client veth needs.

Every piece is removed by ``close()``: processes stopped by pid, the XDP links closed, the
namespaces deleted (which also detaches anything still attached to the veth pair).
"""

from __future__ import annotations

import contextlib
import json
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Self

from pyresponder.xdp import daemon
from pyresponder.xdp.libbpf import BpfError, BpfObject, XdpLink
from tests.support.chronyd import Chronyd, find_chronyd
from tests.support.netns import Process, Side, VethPair, entered, unavailable_reason
from tests.support.scoped import Scoped


def skip_reason() -> str | None:
    """Why the XDP tests cannot run on this machine, or None."""
    reason = unavailable_reason()
    if reason is not None:
        return reason
    if daemon.kernel_version() < daemon.MIN_KERNEL:
        return "kernel older than 6.1 (bpf_ktime_get_tai_ns)"
    if not daemon.OBJECT_PATH.is_file():
        return f"{daemon.OBJECT_PATH.name} not built (scripts/build-bpf needs clang)"
    if find_chronyd() is None:
        return "chronyd not installed (scripts/install-chrony)"
    return None


class PeerPass:
    """The XDP_PASS program on the client veth: native XDP_TX on veth needs one on the peer."""

    def __init__(self, side: Side) -> None:
        self.bpf = BpfObject(daemon.OBJECT_PATH)
        try:
            with entered(side.ns):
                ifindex = socket.if_nametoindex(side.dev)
                self.link = XdpLink(self.bpf.program_fd("pyresponder_xdp_pass"), ifindex,
                                    "native")
        except BaseException:
            self.bpf.close()
            raise

    def close(self) -> None:
        self.link.close()
        self.bpf.close()


class XdpBed(Scoped):
    def __init__(self, mode: str, tag: str, xdp_args: tuple[str, ...] = (),
                 chronyd: bool = True, stratum: int | None = 9) -> None:
        self.mode = mode
        self.pair = VethPair(tag)
        self.workdir = Path(tempfile.mkdtemp(prefix="pyr11-xdp-"))
        self.counters_file = self.workdir / "counters.json"
        self.xdp_args = xdp_args
        self.want_chronyd = chronyd
        self.stratum = stratum  # None: a chronyd without a reference, answering LI=3
        self.chronyd: Chronyd | None = None
        self.xdp: Process | None = None
        self.peer: PeerPass | None = None
        self.others: list[Process] = []

    @property
    def server(self) -> Side:
        return self.pair.server

    @property
    def client(self) -> Side:
        return self.pair.client

    def start(self) -> Self:
        try:
            self.pair.start()
            if self.mode == "native":
                self.peer = PeerPass(self.client)
            if self.want_chronyd:
                with entered(self.server.ns):
                    self.chronyd = Chronyd(stratum=self.stratum).start()
            self.start_xdp()
        except BaseException:
            self.cleanup()
            raise
        return self

    def backend_port(self) -> int:
        return self.chronyd.port if self.chronyd is not None else 9  # 9: nothing listens

    def start_xdp(self, *extra: str) -> Process:
        command = [
            sys.executable, "-m", "pyresponder", "xdp",
            "--interface", self.server.dev,
            "--xdp-mode", self.mode,
            "--backend", f"127.0.0.1:{self.backend_port()}",
            "--counters-file", str(self.counters_file),
            *self.xdp_args, *extra,
        ]  # fmt: skip
        self.xdp = Process(self.server, command, self.workdir / "xdp.log")
        self.wait_log("XDP program attached")
        return self.xdp

    def start_server_process(self, command: list[str], name: str,
                             env: dict[str, str] | None = None) -> Process:
        process = Process(self.server, command, self.workdir / f"{name}.log", env)
        self.others.append(process)
        return process

    def wait_log(self, text: str, timeout: float = 10.0) -> None:
        assert self.xdp is not None
        deadline = time.monotonic() + timeout
        while text not in self.xdp.log():
            if not self.xdp.running():
                raise RuntimeError(f"pyresponder xdp exited:\n{self.xdp.log()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"no {text!r} in the xdp log:\n{self.xdp.log()}")
            time.sleep(0.05)

    def counters(self, timeout: float = 5.0) -> dict[str, int]:
        """The counters of the next snapshot written after now."""
        start = time.time()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError, ValueError):
                data = json.loads(self.counters_file.read_text())
                if data["written_at"] > start:
                    return {str(k): int(v) for k, v in data["counters"].items()}
            time.sleep(0.1)
        raise TimeoutError("no fresh counters snapshot")

    def cleanup(self) -> None:
        for process in [*self.others, *([self.xdp] if self.xdp else [])]:
            with contextlib.suppress(OSError):
                process.stop()
        if self.peer is not None:
            with contextlib.suppress(BpfError, OSError):
                self.peer.close()
            self.peer = None
        if self.chronyd is not None:
            self.chronyd.cleanup()
            self.chronyd = None
        self.pair.cleanup()
