"""The supervisor under failure: crash-looping workers, a second instance on the same address."""

from __future__ import annotations

import itertools
import os
import re
import socket
import time
from datetime import datetime
from pathlib import Path

from pyresponder.supervisor import CRASH_WORKERS_ENV
from tests.integration.conftest import StartResponder
from tests.support.chronyd import Chronyd
from tests.support.responder import ntp_request, query

_RESTART = re.compile(
    r"^(\S+ \S+) ERROR worker 0 \(pid \d+\) exited with status 7; restarting in ([\d.]+) s$"
)
_STAMP = "%Y-%m-%d %H:%M:%S,%f"


def test_crash_looping_worker_backs_off_exponentially_and_stops_the_watchdog(
    chronyd: Chronyd, start_responder: StartResponder, port: int, tmp_path: Path
) -> None:
    path = str(tmp_path / "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
        notify.bind(path)
        notify.settimeout(10)
        env = dict(os.environ, NOTIFY_SOCKET=path, WATCHDOG_USEC="400000",
                   **{CRASH_WORKERS_ENV: "7"})  # every worker exits with status 7 at once
        responder = start_responder(
            "--listen", f"127.0.0.1:{port}", "--backend", f"127.0.0.1:{chronyd.port}",
            "--workers", "1", env=env,
        )
        before_ready = []
        while "READY=1" not in (message := notify.recv(4096).decode()):
            before_ready.append(message)
        assert "WATCHDOG=1" in before_ready  # waiting for the backend is working as intended
        notify.settimeout(0.2)
        after_ready: list[str] = []
        watch_until = time.monotonic() + 5.0  # twelve watchdog intervals
        while time.monotonic() < watch_until:
            try:
                after_ready.append(notify.recv(4096).decode())
            except TimeoutError:
                continue
    assert not [m for m in after_ready if "WATCHDOG=1" in m], after_ready
    assert any("0/1 workers" in m for m in after_ready)  # STATUS tells why
    assert query(("127.0.0.1", port), ntp_request(), timeout=0.3) is None

    restarts = [_RESTART.match(line) for line in responder.log().splitlines()]
    found = [(datetime.strptime(m[1], _STAMP), float(m[2])) for m in restarts if m]
    delays = [delay for _, delay in found]
    assert delays[:5] == [0.1, 0.2, 0.4, 0.8, 1.6], responder.log()
    # The waits are really taken, and not rounded up to the loop's 1 s tick: the gap between
    # two deaths is the announced delay plus the short life of a worker. (A log line is stamped
    # a few ms after the loop's clock reading that scheduled the restart: 20 ms of slack below.)
    for (died, delay), (next_died, _) in itertools.pairwise(found):
        gap = (next_died - died).total_seconds()
        assert delay - 0.02 <= gap < delay + 0.5, (delay, gap)


def test_second_instance_on_the_same_address_fails_with_one_clear_line(
    chronyd: Chronyd, start_responder: StartResponder, port: int
) -> None:
    args = ["--listen", f"127.0.0.1:{port}", "--backend", f"127.0.0.1:{chronyd.port}",
            "--workers", "1"]
    first = start_responder(*args)
    first.wait_answering(("127.0.0.1", port))
    second = start_responder(*args)
    assert second.process is not None
    assert second.process.wait(10) == 1
    errors = [line for line in second.log().splitlines() if "ERROR" in line]
    assert len(errors) == 1, second.log()
    assert f"cannot listen on 127.0.0.1:{port}: Address already in use" in errors[0]
    assert "Traceback" not in second.log()
    assert first.process is not None and first.process.poll() is None


def test_reuse_port_shares_the_address_on_purpose(
    chronyd: Chronyd, start_responder: StartResponder, port: int
) -> None:
    args = ["--listen", f"127.0.0.1:{port}", "--backend", f"127.0.0.1:{chronyd.port}",
            "--workers", "1", "--reuse-port"]
    first = start_responder(*args)
    first.wait_answering(("127.0.0.1", port))
    second = start_responder(*args)
    second.wait_workers(1)
    assert "listening on" in second.log()
    assert second.process is not None and second.process.poll() is None
