"""Holdover across backend restarts, against a real chronyd restarted under a client stream."""

from __future__ import annotations

import signal
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from tests.integration.conftest import StartResponder
from tests.integration.test_metrics import scrape, value
from tests.support.chronyd import Chronyd
from tests.support.prometheus import free_tcp_port
from tests.support.responder import ntp_request, query


@dataclass(frozen=True, slots=True)
class Reply:
    sent_at: float  # monotonic seconds since the stream began
    leap: int
    stratum: int


def stream(port: int, seconds: float, rate: int,
           actions: list[tuple[float, Callable[[], object]]]) -> tuple[int, list[Reply]]:
    """Send ``rate`` requests/s for ``seconds``, running ``actions`` at their times."""
    sent_at: dict[bytes, float] = {}
    replies: list[Reply] = []
    done = threading.Event()
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.settimeout(0.2)
    begin = time.monotonic()

    def receive() -> None:
        while not done.is_set():
            try:
                data = sock.recv(512)
            except TimeoutError:
                continue
            at = sent_at.get(data[24:32])
            if at is not None and len(data) >= 48:
                replies.append(Reply(at, data[0] >> 6, data[1]))

    def act() -> None:
        for at, action in actions:
            time.sleep(max(0.0, begin + at - time.monotonic()))
            action()

    receiver = threading.Thread(target=receive)
    actor = threading.Thread(target=act)
    receiver.start()
    actor.start()
    count = 0
    try:
        while (elapsed := time.monotonic() - begin) < seconds:
            while count < elapsed * rate:
                transmit = struct.pack("!Q", count + 1)
                sent_at[transmit] = time.monotonic() - begin
                sock.sendto(ntp_request(transmit=transmit), ("127.0.0.1", port))
                count += 1
            time.sleep(0.005)
        actor.join(30)
        time.sleep(0.5)  # the last replies
    finally:
        done.set()
        receiver.join(5)
        sock.close()
    return count, sorted(replies, key=lambda reply: reply.sent_at)


def synchronized(port: int) -> bool:
    answer = query(("127.0.0.1", port), ntp_request(), timeout=0.5)
    return answer is not None and answer[0][0] >> 6 != 3 and answer[0][1] != 0


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def test_chronyd_restart_shows_clients_no_unsynchronized_reply(
    start_responder: StartResponder, port: int
) -> None:
    """chronyd restarts and answers LI=3 for a few seconds, as it does with real upstreams."""
    backend = Chronyd(stratum=8).start()
    try:
        metrics_port = free_tcp_port()
        responder = start_responder(
            "--listen", f"127.0.0.1:{port}", "--backend", f"127.0.0.1:{backend.port}",
            "--workers", "2", "--metrics", f"127.0.0.1:{metrics_port}",
        )
        responder.wait_answering(("127.0.0.1", port))
        wait_until(lambda: synchronized(port), 10, "synchronized replies")
        gauge: list[float] = []

        def restart_unsynchronized() -> None:
            backend.stop()
            backend.stratum = None  # no reference yet: LI=3 stratum 0, like chronyd at start
            backend.start()

        def check_gauge() -> None:
            gauge.append(value(scrape(metrics_port), "pyresponder_backend_holdover"))

        def synchronized_again() -> None:
            backend.stop()
            backend.stratum = 8
            backend.start()

        sent, replies = stream(port, seconds=9.0, rate=100, actions=[
            (1.0, restart_unsynchronized), (4.0, check_gauge), (5.0, synchronized_again),
        ])
        assert sent > 800
        assert len(replies) >= 0.99 * sent
        unsynchronized = [r for r in replies if r.leap == 3 or r.stratum == 0]
        assert not unsynchronized, f"{len(unsynchronized)} LI=3 replies, first {unsynchronized[0]}"
        assert {r.stratum for r in replies} == {8}
        assert gauge == [1.0]
        wait_until(lambda: value(scrape(metrics_port), "pyresponder_backend_holdover") == 0, 5,
                   "the holdover gauge to drop")
        log = responder.log()
        assert "backend is not synchronized (leap 3)" in log  # the backend really said LI=3
        assert "holdover started" in log
        assert "holdover ended: backend synchronized again" in log
    finally:
        backend.cleanup()


def test_backend_stopped_longer_than_the_holdover_gives_unsynchronized_after_it(
    start_responder: StartResponder, port: int
) -> None:
    backend = Chronyd(stratum=8).start()
    try:
        responder = start_responder(
            "--listen", f"127.0.0.1:{port}", "--backend", f"127.0.0.1:{backend.port}",
            "--workers", "1", "--holdover", "3", "--backend-timeout", "1",
        )
        responder.wait_answering(("127.0.0.1", port))
        wait_until(lambda: synchronized(port), 10, "synchronized replies")
        stopped_at: list[float] = []

        def kill_backend() -> None:
            backend.stop(signal.SIGKILL)
            stopped_at.append(time.monotonic())

        begin = time.monotonic()
        sent, replies = stream(port, seconds=7.0, rate=100, actions=[(1.0, kill_backend)])
        stop = stopped_at[0] - begin
        assert len(replies) >= 0.99 * sent
        first_unsynchronized = next(r.sent_at for r in replies if r.leap == 3)
        # The last sample came at most one poll (1 s) before the stop: holdover lasts until at
        # least 2 s after it, and at most 3 s (plus the workers' 0.1 s refresh, plus slack).
        assert first_unsynchronized >= stop + 2.0 - 0.05, (stop, first_unsynchronized)
        assert first_unsynchronized <= stop + 4.0, (stop, first_unsynchronized)
        before = [r for r in replies if r.sent_at < first_unsynchronized]
        after = [r for r in replies if r.sent_at >= first_unsynchronized]
        assert before and all(r.leap == 0 and r.stratum == 8 for r in before)
        assert after and all(r.leap == 3 and r.stratum == 0 for r in after)
        log = responder.log()
        assert "holdover started" in log
        assert "holdover of 3 s is over" in log
    finally:
        backend.cleanup()


def test_holdover_zero_turns_it_off(start_responder: StartResponder, port: int) -> None:
    backend = Chronyd(stratum=8).start()
    try:
        responder = start_responder(
            "--listen", f"127.0.0.1:{port}", "--backend", f"127.0.0.1:{backend.port}",
            "--workers", "1", "--holdover", "0",
        )
        responder.wait_answering(("127.0.0.1", port))
        wait_until(lambda: synchronized(port), 10, "synchronized replies")
        backend.stop()
        backend.stratum = None
        backend.start()
        wait_until(lambda: not synchronized(port), 5, "LI=3 at the first unsynchronized poll")
        assert "holdover" not in responder.log()
    finally:
        backend.cleanup()


