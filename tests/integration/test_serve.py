"""pyresponder against a real chronyd, queried with ntplib and raw sockets on loopback."""

from __future__ import annotations

import os
import signal
import socket
import struct
import time

import ntplib
import pytest

from pyresponder import wire
from pyresponder.sockets import IP_PKTINFO, SO_TIMESTAMPNS
from tests.integration.conftest import StartResponder
from tests.integration.test_metrics import scrape, value
from tests.support.chronyd import Chronyd, free_udp_port
from tests.support.prometheus import free_tcp_port
from tests.support.responder import ntp_request, query, stream_during


def serve_args(port: int, backend_port: int, *extra: str) -> list[str]:
    return ["--listen", f"127.0.0.1:{port}", "--backend", f"127.0.0.1:{backend_port}", *extra]


def ntplib_query(port: int, version: int = 4, host: str = "127.0.0.1") -> ntplib.NTPStats:
    return ntplib.NTPClient().request(host, port=port, version=version, timeout=2)


def wait_for(predicate: object, timeout: float, what: str) -> None:
    assert callable(predicate)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def is_synchronized(port: int) -> bool:
    answer = query(("127.0.0.1", port), ntp_request(), timeout=0.3)
    return answer is not None and answer[0][0] >> 6 != 3 and answer[0][1] != 0


def is_unsynchronized(port: int) -> bool:
    answer = query(("127.0.0.1", port), ntp_request(), timeout=0.3)
    if answer is None:
        return False
    data = answer[0]
    return data[0] >> 6 == 3 and data[1] == 0 and data[12:16] == bytes(4)


IO_MODES = pytest.mark.parametrize("io", ["batch", "plain"])


@IO_MODES
def test_fields_are_copied_from_chronyd(chronyd: Chronyd, start_responder: StartResponder,
                                        port: int, io: str) -> None:
    metrics_port = free_tcp_port()
    responder = start_responder(*serve_args(port, chronyd.port, "--workers", "2", "--io", io,
                                            "--metrics", f"127.0.0.1:{metrics_port}"))
    responder.wait_answering(("127.0.0.1", port))
    for _ in range(20):
        # Both queries between two scrapes that show the same backend sample, old enough that
        # every worker serves it (they refresh every 0.1 s): then the expected root dispersion
        # is exact.
        before = scrape(metrics_port)
        ours, theirs = ntplib_query(port), ntplib_query(chronyd.port)
        after = scrape(metrics_port)
        polls = "pyresponder_backend_polls_total"
        age = value(before, "pyresponder_backend_last_reply_age_seconds")
        if value(before, polls) == value(after, polls) and 0.15 < age < 0.8:
            break
        time.sleep(0.1)
    else:
        raise AssertionError("no quiet moment between two backend polls")
    delay = value(before, "pyresponder_backend_delay_seconds")
    offset = value(before, "pyresponder_backend_offset_seconds")
    # chronyd's own dispersion plus half the loopback round trip plus the measured offset,
    # give or take 0.8 s of 15 ppm/s growth and the 16.16 format's rounding of both values.
    expected = theirs.root_dispersion + delay / 2 + abs(offset)
    assert expected - 5e-5 <= ours.root_dispersion <= expected + 5e-5
    assert ours.leap == theirs.leap == 0
    assert ours.stratum == theirs.stratum == 9
    assert ours.mode == 4
    assert ours.precision == theirs.precision
    assert ours.ref_id == theirs.ref_id
    assert ours.ref_timestamp == pytest.approx(theirs.ref_timestamp, abs=1e-6)
    assert ours.root_delay == pytest.approx(theirs.root_delay, abs=1e-4)
    assert abs(ours.offset) < 0.01  # the same clock chronyd disciplines
    assert ours.recv_timestamp <= ours.tx_timestamp


@pytest.mark.parametrize("version", [3, 4])
def test_version_is_echoed(chronyd: Chronyd, start_responder: StartResponder, port: int,
                           version: int) -> None:
    start_responder(*serve_args(port, chronyd.port, "--workers", "1")).wait_answering(
        ("127.0.0.1", port)
    )
    assert ntplib_query(port, version=version).version == version


def test_origin_echo_and_data_minimized_request(chronyd: Chronyd,
                                                start_responder: StartResponder,
                                                port: int) -> None:
    start_responder(*serve_args(port, chronyd.port, "--workers", "1")).wait_answering(
        ("127.0.0.1", port)
    )
    transmit = os.urandom(8)
    answer = query(("127.0.0.1", port), bytes([0x23]) + bytes(39) + transmit)
    assert answer is not None
    reply, source = answer
    assert len(reply) == 48
    assert reply[24:32] == transmit
    assert source == ("127.0.0.1", port)


@IO_MODES
def test_ntpv1_and_symmetric_active(chronyd: Chronyd, start_responder: StartResponder,
                                    port: int, io: str) -> None:
    start_responder(*serve_args(port, chronyd.port, "--workers", "1", "--io", io)).wait_answering(
        ("127.0.0.1", port)
    )
    v1 = query(("127.0.0.1", port), ntp_request(version=1, mode=0))
    assert v1 is not None
    assert v1[0][0] & 0x3F == (1 << 3) | 4
    active = query(("127.0.0.1", port), ntp_request(version=4, mode=1))
    assert active is not None
    assert active[0][0] & 7 == 2


@IO_MODES
def test_drops_what_must_not_be_answered_and_counts_it(chronyd: Chronyd,
                                                       start_responder: StartResponder,
                                                       port: int, io: str) -> None:
    responder = start_responder(*serve_args(port, chronyd.port, "--workers", "1", "--io", io))
    responder.wait_answering(("127.0.0.1", port))
    bad = [
        ntp_request(mode=6),  # control: the amplification vector
        ntp_request(mode=7),  # private (monlist)
        ntp_request(mode=2),
        ntp_request(mode=4),
        ntp_request(mode=5),
        ntp_request()[:47],  # short
        ntp_request() + b"\0\0",  # not a multiple of 4
        ntp_request(version=0),
        ntp_request(version=5),
        b"",
    ]
    for packet in bad:
        assert query(("127.0.0.1", port), packet, timeout=0.3) is None, packet.hex()
    assert query(("127.0.0.1", port), ntp_request()) is not None  # still serving
    assert responder.stop() == 0
    log = responder.log()
    assert "dropped_mode 5" in log
    assert "dropped_length 3" in log
    assert "dropped_version 2" in log


def test_reply_is_never_larger_than_the_request(chronyd: Chronyd,
                                                start_responder: StartResponder,
                                                port: int) -> None:
    start_responder(*serve_args(port, chronyd.port, "--workers", "1")).wait_answering(
        ("127.0.0.1", port)
    )
    with_mac = ntp_request() + struct.pack("!I", 1) + os.urandom(16)  # 68 bytes: key id + MD5
    answer = query(("127.0.0.1", port), with_mac)
    assert answer is not None
    assert len(answer[0]) == 48
    assert answer[0][24:32] == with_mac[40:48]


@IO_MODES
def test_garbage_never_kills_a_worker(chronyd: Chronyd, start_responder: StartResponder,
                                      port: int, io: str) -> None:
    responder = start_responder(*serve_args(port, chronyd.port, "--workers", "2", "--io", io))
    responder.wait_answering(("127.0.0.1", port))
    workers = responder.wait_workers(2)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for size in range(0, 1500, 7):
            sock.sendto(os.urandom(size), ("127.0.0.1", port))
        sock.sendto(os.urandom(3000), ("127.0.0.1", port))  # larger than the receive buffer
    assert query(("127.0.0.1", port), ntp_request()) is not None
    assert responder.workers() == workers
    assert "Traceback" not in responder.log()


def test_unsynchronized_until_the_backend_answers_then_recovers(
    start_responder: StartResponder, port: int
) -> None:
    backend_port = free_udp_port()
    start_responder(*serve_args(port, backend_port, "--workers", "1", "--ready-timeout", "0.5"))
    wait_for(lambda: is_unsynchronized(port), 10, "an unsynchronized reply")
    reply = ntplib_query(port)
    assert (reply.leap, reply.stratum) == (3, 0)
    with Chronyd(port=backend_port, stratum=7):
        wait_for(lambda: is_synchronized(port), 10, "recovery once chronyd answers")
        assert ntplib_query(port).stratum == 7


def test_unsynchronized_after_the_backend_dies_and_recovers_after_restart(
    start_responder: StartResponder, port: int
) -> None:
    backend = Chronyd(stratum=8).start()
    try:
        start_responder(
            *serve_args(port, backend.port, "--workers", "2", "--backend-timeout", "2",
                        "--holdover", "0")
        ).wait_answering(("127.0.0.1", port))
        assert is_synchronized(port)
        backend.stop(signal.SIGKILL)
        wait_for(lambda: is_unsynchronized(port), 10, "unsynchronized after the backend died")
        backend.start()
        wait_for(lambda: is_synchronized(port), 10, "recovery after the backend restarted")
        assert ntplib_query(port).stratum == 8
    finally:
        backend.cleanup()


def test_backend_leap_3_makes_replies_unsynchronized(start_responder: StartResponder,
                                                     port: int) -> None:
    with Chronyd(stratum=None) as unsynchronized_backend:  # no reference: it answers LI=3
        responder = start_responder(
            *serve_args(port, unsynchronized_backend.port, "--workers", "1",
                        "--ready-timeout", "0.5")
        )
        wait_for(lambda: is_unsynchronized(port), 10, "an unsynchronized reply")
        time.sleep(1.5)  # more polls, each answered by the unsynchronized chronyd
        assert is_unsynchronized(port)
        assert "backend is not synchronized (leap 3)" in responder.log()


def test_killed_worker_comes_back(chronyd: Chronyd, start_responder: StartResponder,
                                  port: int) -> None:
    responder = start_responder(*serve_args(port, chronyd.port, "--workers", "2"))
    responder.wait_answering(("127.0.0.1", port))
    before = responder.wait_workers(2)
    os.kill(before[0], signal.SIGKILL)
    wait_for(
        lambda: len(responder.workers()) == 2 and before[0] not in responder.workers(),
        10,
        "a replacement worker",
    )
    assert before[1] in responder.workers()
    for _ in range(20):
        assert query(("127.0.0.1", port), ntp_request()) is not None
    assert "was killed by SIGKILL" in responder.log()


def test_ipv6(chronyd: Chronyd, start_responder: StartResponder) -> None:
    port = free_udp_port("::1")
    responder = start_responder(
        "--listen", f"[::1]:{port}", "--backend", f"127.0.0.1:{chronyd.port}", "--workers", "1"
    )
    responder.wait_answering(("::1", port))
    reply = ntplib_query(port, host="::1")
    assert (reply.leap, reply.stratum, reply.mode) == (0, 9, 4)


def test_dual_stack_wildcard_answers_ipv4_and_ipv6(chronyd: Chronyd,
                                                   start_responder: StartResponder) -> None:
    port = free_udp_port("::")
    responder = start_responder(
        "--listen", f"[::]:{port}", "--backend", f"127.0.0.1:{chronyd.port}", "--workers", "1"
    )
    responder.wait_answering(("::1", port))
    assert ntplib_query(port, host="127.0.0.1").stratum == 9
    assert ntplib_query(port, host="::1").stratum == 9


@IO_MODES
@pytest.mark.parametrize("listen", ["0.0.0.0", "[::]"])
def test_reply_comes_from_the_address_the_request_was_sent_to(
    chronyd: Chronyd, start_responder: StartResponder, listen: str, io: str
) -> None:
    port = free_udp_port("0.0.0.0")
    start_responder(
        "--listen", f"{listen}:{port}", "--backend", f"127.0.0.1:{chronyd.port}",
        "--workers", "1", "--io", io,
    ).wait_answering(("127.0.0.1", port))
    # 127.0.0.2 is a local address too; without IP_PKTINFO the kernel would answer from 127.0.0.1.
    answer = query(("127.0.0.2", port), ntp_request())
    assert answer is not None
    assert answer[1] == ("127.0.0.2", port)


def test_socket_activation(chronyd: Chronyd, start_responder: StartResponder) -> None:
    held = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # what PID 1 would hold
    held.bind(("127.0.0.1", 0))
    port = held.getsockname()[1]
    try:
        responder = start_responder(
            "--backend", f"127.0.0.1:{chronyd.port}", "--workers", "2", pass_fd=held.fileno()
        )
        responder.wait_answering(("127.0.0.1", port))
        assert ntplib_query(port).stratum == 9
        assert f"listening on 127.0.0.1:{port}" in responder.log()
    finally:
        held.close()


QUEUED = 3  # requests sent before the responder starts


@IO_MODES
@pytest.mark.parametrize("unit_options", [False, True], ids=["bare-socket", "unit-options"])
def test_requests_queued_before_the_responder_runs_are_answered(
    chronyd: Chronyd, start_responder: StartResponder, io: str, unit_options: bool
) -> None:
    """At boot PID 1 opens the socket and requests queue before any colour runs. Those came in
    before the responder switched on IP_PKTINFO (in_pktinfo's local address then reads 0.0.0.0)
    and were dropped as unreachable; with the socket unit's Timestamping=ns and
    PassPacketInfo=yes they also carry their real arrival time as T2."""
    held = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # a wildcard socket, as at boot
    held.bind(("0.0.0.0", 0))
    port = held.getsockname()[1]
    if unit_options:
        held.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)  # Timestamping=ns
        held.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)  # PassPacketInfo=yes
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        client.connect(("127.0.0.1", port))
        client.settimeout(10)
        sent_at = []
        for n in range(QUEUED):
            sent_at.append(time.time())
            client.send(ntp_request(transmit=struct.pack("!II", 0x51554555, n)))
        time.sleep(0.5)  # queued well before the responder reads them
        start_responder(
            "--backend", f"127.0.0.1:{chronyd.port}", "--workers", "1", "--io", io,
            pass_fd=held.fileno(),
        )
        for _ in range(QUEUED):
            reply = client.recv(512)
            n = struct.unpack_from("!II", reply, 24)[1]
            receive_ns = wire.unix_ns_from_ntp(struct.unpack_from("!Q", reply, 32)[0],
                                               time.time_ns())
            if unit_options:  # T2 is the kernel's arrival time, not when a worker got to it
                waited = receive_ns / 1e9 - sent_at[n]
                assert -0.001 < waited < 0.1, (n, waited)
    finally:
        client.close()
        held.close()


def test_notify_ready_after_backend_and_stopping(chronyd: Chronyd,
                                                 start_responder: StartResponder,
                                                 port: int, tmp_path: object) -> None:
    path = f"{tmp_path}/notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener:
        listener.bind(path)
        listener.settimeout(10)
        env = dict(os.environ, NOTIFY_SOCKET=path, WATCHDOG_USEC="1000000")
        responder = start_responder(*serve_args(port, chronyd.port, "--workers", "1"), env=env)
        messages: list[str] = []
        while not any("READY=1" in m for m in messages):
            messages.append(listener.recv(4096).decode())
        ready = next(m for m in messages if "READY=1" in m)
        assert "STATUS=synchronized" in ready
        # READY means the workers are forked: a query queues until one reads it.
        answer = query(("127.0.0.1", port), ntp_request(), timeout=5)
        assert answer is not None and answer[0][0] >> 6 != 3 and answer[0][1] != 0
        watchdog = listener.recv(4096).decode()
        while "WATCHDOG=1" not in watchdog:
            watchdog = listener.recv(4096).decode()
        responder.process.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
        tail = ""
        while "STOPPING=1" not in tail:
            tail = listener.recv(4096).decode()
        assert responder.stop() == 0


def test_ready_timeout_serves_unsynchronized(start_responder: StartResponder, port: int,
                                             tmp_path: object) -> None:
    path = f"{tmp_path}/notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener:
        listener.bind(path)
        listener.settimeout(10)
        env = dict(os.environ, NOTIFY_SOCKET=path)
        started = time.monotonic()
        start_responder(
            *serve_args(port, free_udp_port(), "--workers", "1", "--ready-timeout", "1"), env=env
        )
        message = ""
        while "READY=1" not in message:
            message = listener.recv(4096).decode()
        assert time.monotonic() - started >= 0.9
        assert "unsynchronized" in message
        assert is_unsynchronized(port)


def test_no_reply_is_lost_when_a_second_instance_takes_over(
    chronyd: Chronyd, start_responder: StartResponder
) -> None:
    """The systemd blue/green swap in miniature: one held socket, two instances overlapping."""
    held = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    held.bind(("127.0.0.1", 0))
    port = held.getsockname()[1]
    try:
        blue = start_responder(
            "--backend", f"127.0.0.1:{chronyd.port}", "--workers", "2", pass_fd=held.fileno()
        )
        blue.wait_answering(("127.0.0.1", port))
        sent, replies = stream_during(
            port,
            seconds=4.0,
            rate=1000,
            actions=[
                (1.0, lambda: start_responder(
                    "--backend", f"127.0.0.1:{chronyd.port}", "--workers", "2",
                    pass_fd=held.fileno(),
                ).wait_answering(("127.0.0.1", port))),
                (2.0, blue.stop),
            ],
        )
        assert sent > 3000
        assert replies == sent, f"{sent - replies} of {sent} requests got no reply"
    finally:
        held.close()


@IO_MODES
@pytest.mark.parametrize("listen", ["127.0.0.1", "0.0.0.0", "[::]"])
@pytest.mark.parametrize("mixed", [True, False], ids=["mixed", "plain"])
def test_queued_burst_is_answered_exactly_with_kernel_receive_timestamps(
    chronyd: Chronyd, start_responder: StartResponder, listen: str, io: str, mixed: bool
) -> None:
    """Stop the workers, queue a burst of good and bad requests, let them go: one batch path.

    Every good request gets exactly one reply, from the address it was sent to, whose receive
    timestamp is from when the kernel queued it (before the workers resumed), not when a worker
    read it. Bad requests in between get nothing. A burst of good requests only takes the
    whole-batch path, a mixed one the per-packet path.
    """
    port = free_udp_port("0.0.0.0")
    responder = start_responder(
        "--listen", f"{listen}:{port}", "--backend", f"127.0.0.1:{chronyd.port}",
        "--workers", "2", "--io", io, "--batch", "32", "--send-batch", "5",
    )
    responder.wait_answering(("127.0.0.1", port))
    target = "127.0.0.1" if listen == "127.0.0.1" else "127.0.0.2"
    workers = responder.wait_workers(2)
    good: set[bytes] = set()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        sock.settimeout(2)
        for pid in workers:
            os.kill(pid, signal.SIGSTOP)
        wait_for(lambda: all(_process_state(pid) == "T" for pid in workers), 5,
                 "the workers to stop")  # SIGSTOP takes effect asynchronously
        try:
            for n in range(150):
                transmit = struct.pack("!Q", n + 1)
                if mixed and n % 4 == 3:
                    sock.sendto(ntp_request(mode=6, transmit=transmit), (target, port))
                elif mixed and n % 7 == 5:
                    sock.sendto(ntp_request(transmit=transmit)[:44], (target, port))
                else:
                    good.add(transmit)
                    sock.sendto(ntp_request(version=3 + n % 2, transmit=transmit), (target, port))
            time.sleep(0.05)
            resumed_ns = time.time_ns()
        finally:
            for pid in workers:
                os.kill(pid, signal.SIGCONT)
        answered: list[bytes] = []

        def check(data: bytes, source: tuple[str, int]) -> None:
            assert source == (target, port)
            assert len(data) == 48
            answered.append(data[24:32])
            receive_ns = wire.unix_ns_from_ntp(struct.unpack("!Q", data[32:40])[0], resumed_ns)
            transmit_ns = wire.unix_ns_from_ntp(struct.unpack("!Q", data[40:48])[0], resumed_ns)
            assert receive_ns < resumed_ns <= transmit_ns + 1000
            assert (data[0] >> 3) & 7 == (3 + (struct.unpack("!Q", data[24:32])[0] - 1) % 2)

        while len(answered) < len(good):  # each reply wakes us; a missing one times out (2 s)
            check(*sock.recvfrom(512))
        # By now the whole burst has been read; a second reply to one of its requests would be
        # sent before (or, from the other worker, about when) a request sent now is answered.
        marker = struct.pack("!Q", 10_000)
        sock.sendto(ntp_request(transmit=marker), (target, port))
        while (data := sock.recvfrom(512))[0][24:32] != marker:
            check(*data)
    assert sorted(answered) == sorted(good)


def _process_state(pid: int) -> str:
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().rsplit(")", 1)[1].split()[0]


def test_spread_gives_each_worker_its_own_reuseport_socket(
    chronyd: Chronyd, start_responder: StartResponder
) -> None:
    port = free_udp_port()
    responder = start_responder(
        "--listen", f"127.0.0.1:{port}", "--listen", f"127.0.0.1:{port}",
        "--backend", f"127.0.0.1:{chronyd.port}", "--workers", "2",
        "--worker-sockets", "spread", "--reuse-port",
    )
    responder.wait_answering(("127.0.0.1", port))
    for source_port in range(40):  # different source ports hash to both sockets
        assert query(("127.0.0.1", port), ntp_request()) is not None, source_port
    assert responder.stop() == 0


def test_user_space_timestamps_are_later_than_kernel_ones(
    chronyd: Chronyd, start_responder: StartResponder
) -> None:
    """With --timestamps user a queued request is stamped when a worker reads it, not before."""
    port = free_udp_port()
    responder = start_responder(
        *serve_args(port, chronyd.port, "--workers", "1", "--timestamps", "user")
    )
    responder.wait_answering(("127.0.0.1", port))
    worker = responder.wait_workers(1)[0]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(2)
        os.kill(worker, signal.SIGSTOP)
        wait_for(lambda: _process_state(worker) == "T", 5, "the worker to stop")
        sock.sendto(ntp_request(), ("127.0.0.1", port))
        time.sleep(0.05)
        resumed_ns = time.time_ns()
        os.kill(worker, signal.SIGCONT)
        data = sock.recv(512)
    receive_ns = wire.unix_ns_from_ntp(struct.unpack("!Q", data[32:40])[0], resumed_ns)
    assert receive_ns >= resumed_ns


def test_require_sync_exits_instead_of_serving_unsynchronized(
    start_responder: StartResponder, port: int
) -> None:
    responder = start_responder(
        *serve_args(port, free_udp_port(), "--workers", "1", "--ready-timeout", "1",
                    "--require-sync")
    )
    assert responder.process is not None
    # Only once the socket is bound can an unanswered query show that nobody serves it.
    wait_for(lambda: "listening on" in responder.log(), 10, "the socket to be bound")
    queries = 0
    children: set[int] = set()
    while responder.process.poll() is None:
        children.update(pid for pid, _ in responder.children())
        assert query(("127.0.0.1", port), ntp_request(), timeout=0.2) is None  # never LI=3
        queries += 1
    assert queries >= 2
    assert responder.process.wait(10) == 1
    log = responder.log()
    assert "--require-sync: exiting without serving" in log
    assert not children  # no worker was ever forked
    assert "ready:" not in log and "READY" not in log
