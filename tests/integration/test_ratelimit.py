"""Rate limiting against a real flood of requests on loopback."""

from __future__ import annotations

import socket
import time

from tests.integration.conftest import StartResponder
from tests.integration.test_metrics import scrape, value
from tests.support.chronyd import Chronyd, free_udp_port
from tests.support.prometheus import free_tcp_port
from tests.support.responder import ntp_request, query


def flood(source: str, port: int, count: int) -> list[bytes]:
    """Send ``count`` requests from ``source`` as fast as possible; return every reply."""
    replies = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((source, 0))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        for _ in range(count):
            sock.sendto(ntp_request(), ("127.0.0.1", port))
        sock.settimeout(0.5)
        try:
            while True:
                replies.append(sock.recv(512))
        except TimeoutError:
            pass
    return replies


def test_flooding_client_gets_its_burst_then_rare_kiss_of_death(
    chronyd: Chronyd, start_responder: StartResponder
) -> None:
    port, metrics_port = free_udp_port(), free_tcp_port()
    start_responder(
        "--listen", f"127.0.0.1:{port}", "--backend", f"127.0.0.1:{chronyd.port}",
        "--workers", "2", "--rate-limit", "--rate-limit-interval", "10",
        "--rate-limit-burst", "10", "--rate-limit-leak", "0", "--rate-limit-kod", "5",
        "--metrics", f"127.0.0.1:{metrics_port}",
    ).wait_answering(("127.0.0.1", port))  # from 127.0.0.1: the flooder below is 127.0.0.3
    replies = flood("127.0.0.3", port, 300)
    normal = [r for r in replies if r[1] != 0]
    kisses = [r for r in replies if r[1] == 0]
    assert 10 <= len(normal) <= 11  # the burst (two workers may race once on the slot)
    assert all(r[0] >> 6 == 3 and r[12:16] == b"RATE" for r in kisses)
    assert 290 // 5 - 4 <= len(kisses) <= 290 // 5 + 2  # 1 in 5 of the refused, per worker
    assert len(replies) < 300 // 4  # a flood gets far fewer replies than it sends: no reflector

    # Another client is not affected by the flooder.
    other = query(("127.0.0.1", port), ntp_request())
    assert other is not None
    assert other[0][1] == 9

    time.sleep(0.3)
    samples = scrape(metrics_port)
    address = f"127.0.0.1:{port}"
    assert value(samples, "ntp_server_rate_limited_packets_total",
                 listen_address=address, path="socket") >= 285
    assert value(samples, "pyresponder_kod_sent_total", listen_address=address) == len(kisses)


def test_spoofed_flood_from_many_addresses_does_not_hurt_real_clients(
    chronyd: Chronyd, start_responder: StartResponder
) -> None:
    port = free_udp_port()
    responder = start_responder(
        "--listen", f"127.0.0.1:{port}", "--backend", f"127.0.0.1:{chronyd.port}",
        "--workers", "1", "--rate-limit", "--rate-limit-slots", "256",
    )
    responder.wait_answering(("127.0.0.1", port))
    # The table's memory is fixed by construction (tests/unit/test_ratelimit.py measures it);
    # here: real clients keep their replies while the flood churns the 256 slots.
    for n in range(3000):  # 3000 source addresses in 127/8, far more than the 256 slots
        source = f"127.{1 + n // 65536}.{(n // 256) % 256}.{n % 256 or 1}"
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.bind((source, 0))
            sock.sendto(ntp_request(), ("127.0.0.1", port))
    for _ in range(5):
        assert query(("127.0.0.1", port), ntp_request()) is not None


def test_rate_limiting_is_off_by_default(chronyd: Chronyd,
                                         start_responder: StartResponder) -> None:
    port = free_udp_port()
    start_responder(
        "--listen", f"127.0.0.1:{port}", "--backend", f"127.0.0.1:{chronyd.port}",
        "--workers", "1",
    ).wait_answering(("127.0.0.1", port))
    replies = flood("127.0.0.4", port, 200)
    assert len(replies) == 200
    assert all(r[1] == 9 for r in replies)
