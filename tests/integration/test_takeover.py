"""Socket handoff without systemd: --control and --takeover, under load."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from pyresponder import handoff
from tests.integration.conftest import StartResponder
from tests.integration.test_metrics import scrape, value
from tests.support.chronyd import Chronyd, free_udp_port
from tests.support.prometheus import free_tcp_port
from tests.support.responder import Responder, ntp_request, query, stream_during


def serving_with_control(
    chronyd: Chronyd, start_responder: StartResponder, tmp_path: Path
) -> tuple[Responder, int, str]:
    """One worker answering a fresh port, with a control socket: (responder, port, control)."""
    port = free_udp_port()
    control = str(tmp_path / "control")
    responder = start_responder(
        "--listen", f"127.0.0.1:{port}", "--backend", f"127.0.0.1:{chronyd.port}",
        "--workers", "1", "--control", control,
    )
    responder.wait_answering(("127.0.0.1", port))
    return responder, port, control


def test_takeover_under_load_loses_nothing_twice_in_a_row(
    chronyd: Chronyd, start_responder: StartResponder, tmp_path: Path
) -> None:
    port, metrics_port = free_udp_port(), free_tcp_port()
    control = str(tmp_path / "control")
    backend = f"127.0.0.1:{chronyd.port}"
    first = start_responder(
        "--listen", f"127.0.0.1:{port}", "--backend", backend, "--workers", "2",
        "--control", control, "--metrics", f"127.0.0.1:{metrics_port}",
    )
    first.wait_answering(("127.0.0.1", port))
    status = handoff.query_status(control)
    assert status["pid"] == first.pid
    assert status["synchronized"] is True

    successors: list[Responder] = []

    def take_over() -> None:
        successor = start_responder(
            "--backend", backend, "--workers", "2", "--takeover", control,
            "--metrics", f"127.0.0.1:{metrics_port}",
        )
        successors.append(successor)

    sent, replies = stream_during(port, seconds=6.0, rate=1000,
                                   actions=[(1.0, take_over), (3.5, take_over)])
    assert sent > 5000
    assert replies == sent, f"{sent - replies} of {sent} requests got no reply"

    assert first.process is not None
    assert first.process.wait(10) == 0
    assert "a new instance took over: finishing" in first.log()
    second, third = successors
    assert second.process is not None
    assert second.process.wait(10) == 0
    assert "took over" in second.log()
    assert handoff.query_status(control)["pid"] == third.pid
    assert query(("127.0.0.1", port), ntp_request()) is not None
    assert value(scrape(metrics_port), "pyresponder_synchronized") == 1  # the port moved on too
    assert Path(control).exists()
    third.stop()
    assert not Path(control).exists()  # the last one cleans up after itself


def test_takeover_without_a_running_instance_fails_clearly(
    chronyd: Chronyd, start_responder: StartResponder, tmp_path: Path
) -> None:
    responder = start_responder(
        "--backend", f"127.0.0.1:{chronyd.port}", "--takeover", str(tmp_path / "nobody"),
    )
    assert responder.process is not None
    assert responder.process.wait(10) == 1
    assert "nothing to take over" in responder.log()


def test_failed_successor_leaves_the_old_instance_serving(
    start_responder: StartResponder, chronyd: Chronyd, tmp_path: Path
) -> None:
    old, port, control = serving_with_control(chronyd, start_responder, tmp_path)
    # The successor cannot start: its metrics address is not an address of this machine.
    failing = start_responder(
        "--backend", f"127.0.0.1:{chronyd.port}", "--takeover", control,
        "--listen", "192.0.2.1:9", "--workers", "1",
    )
    assert failing.process is not None
    assert failing.process.wait(10) == 1
    assert "cannot listen on 192.0.2.1:9" in failing.log()
    assert old.process is not None and old.process.poll() is None
    assert query(("127.0.0.1", port), ntp_request()) is not None
    assert handoff.query_status(control)["pid"] == old.pid


def test_control_socket_is_private(chronyd: Chronyd, start_responder: StartResponder,
                                   tmp_path: Path) -> None:
    _, _, control = serving_with_control(chronyd, start_responder, tmp_path)
    assert os.stat(control).st_mode & 0o077 == 0  # it hands out sockets: owner only


def test_successor_keeps_serving_when_the_predecessor_cannot_be_told_to_finish(
    chronyd: Chronyd, start_responder: StartResponder, tmp_path: Path
) -> None:
    old, port, control = serving_with_control(chronyd, start_responder, tmp_path)
    # The successor waits 2 s for a backend that never answers; meanwhile its predecessor dies
    # without a word, so "finish" finds nobody at the control socket.
    successor = start_responder(
        "--backend", f"127.0.0.1:{free_udp_port()}", "--takeover", control,
        "--workers", "1", "--ready-timeout", "2",
    )
    deadline = time.monotonic() + 10
    while "took over 1 listening sockets" not in successor.log():
        assert time.monotonic() < deadline, successor.log()
        time.sleep(0.05)
    os.kill(old.pid, signal.SIGKILL)
    assert old.process is not None
    old.process.wait(5)
    successor.wait_workers(1)
    assert "was not told to finish" in successor.log()
    assert successor.process is not None and successor.process.poll() is None
    assert query(("127.0.0.1", port), ntp_request(), timeout=2) is not None
    assert handoff.query_status(control)["pid"] == successor.pid  # it owns the path now
