"""The Prometheus endpoint, scraped over HTTP from a running pyresponder."""

from __future__ import annotations

import os
import signal
import socket
import time
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from tests.integration.conftest import StartResponder
from tests.support.chronyd import Chronyd, free_udp_port
from tests.support.prometheus import free_tcp_port
from tests.support.responder import ntp_request, query


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str,
          **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def test_counters_backend_state_and_workers(chronyd: Chronyd,
                                            start_responder: StartResponder) -> None:
    port, metrics_port = free_udp_port(), free_tcp_port()
    responder = start_responder(
        "--listen", f"127.0.0.1:{port}", "--backend", f"127.0.0.1:{chronyd.port}",
        "--workers", "2", "--metrics", f"127.0.0.1:{metrics_port}",
    )
    responder.wait_answering(("127.0.0.1", port))
    for _ in range(20):
        assert query(("127.0.0.1", port), ntp_request()) is not None
    bad_requests = (ntp_request(mode=6), ntp_request(mode=7), ntp_request()[:40],
                    ntp_request(version=6))
    for bad in bad_requests:
        assert query(("127.0.0.1", port), bad, timeout=0.2) is None
    time.sleep(0.3)  # workers publish their counters ten times a second
    samples = scrape(metrics_port)
    address = f"127.0.0.1:{port}"
    assert value(samples, "ntp_server_accepted_packets_total", listen_address=address,
                 path="socket") >= 21
    assert value(samples, "ntp_server_ignored_packets_total", listen_address=address,
                 path="socket") == 4
    assert value(samples, "pyresponder_dropped_packets_total", listen_address=address,
                 reason="mode") == 2
    assert value(samples, "pyresponder_dropped_packets_total", listen_address=address,
                 reason="length") == 1
    assert value(samples, "pyresponder_dropped_packets_total", listen_address=address,
                 reason="version") == 1
    assert value(samples, "pyresponder_synchronized") == 1
    assert value(samples, "ntp_system_stratum") == 9
    assert value(samples, "ntp_system_leap_indicator") == 0
    assert value(samples, "pyresponder_backend_stratum") == 9
    assert abs(value(samples, "pyresponder_backend_offset_seconds")) < 0.01
    assert value(samples, "pyresponder_backend_last_reply_age_seconds") < 3
    assert value(samples, "pyresponder_backend_polls_total") >= 1
    assert value(samples, "pyresponder_workers") == 2
    assert value(samples, "pyresponder_workers_configured") == 2

    os.kill(responder.wait_workers(2)[0], signal.SIGKILL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        samples = scrape(metrics_port)
        if value(samples, "pyresponder_worker_restarts_total") == 1:
            break
        time.sleep(0.1)
    assert value(samples, "pyresponder_worker_restarts_total") == 1
    assert value(samples, "pyresponder_workers") == 2


def test_kernel_receive_buffer_drops_are_counted(chronyd: Chronyd,
                                                 start_responder: StartResponder) -> None:
    port, metrics_port = free_udp_port(), free_tcp_port()
    responder = start_responder(
        "--listen", f"127.0.0.1:{port}", "--backend", f"127.0.0.1:{chronyd.port}",
        "--workers", "1", "--receive-buffer", "0", "--metrics", f"127.0.0.1:{metrics_port}",
    )
    responder.wait_answering(("127.0.0.1", port))
    worker = responder.wait_workers(1)[0]
    os.kill(worker, signal.SIGSTOP)  # nobody reads: the default buffer fills and overflows
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            for _ in range(20000):
                sock.sendto(ntp_request(), ("127.0.0.1", port))
        samples = scrape(metrics_port)
        address = f"127.0.0.1:{port}"
        assert value(samples, "pyresponder_socket_receive_drops_total",
                     listen_address=address) > 0
        assert value(samples, "pyresponder_socket_receive_queue_bytes",
                     listen_address=address) > 0
    finally:
        os.kill(worker, signal.SIGCONT)


def test_metrics_port_in_use_fails_with_a_clear_message(chronyd: Chronyd,
                                                        start_responder: StartResponder) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        metrics_port = taken.getsockname()[1]
        responder = start_responder(
            "--listen", f"127.0.0.1:{free_udp_port()}", "--backend",
            f"127.0.0.1:{chronyd.port}", "--metrics", f"127.0.0.1:{metrics_port}",
        )
        assert responder.process is not None
        assert responder.process.wait(10) == 1
        assert f"cannot serve metrics on 127.0.0.1:{metrics_port}" in responder.log()


def test_dead_metrics_process_is_restarted(chronyd: Chronyd,
                                           start_responder: StartResponder) -> None:
    port, metrics_port = free_udp_port(), free_tcp_port()
    responder = start_responder(
        "--listen", f"127.0.0.1:{port}", "--backend", f"127.0.0.1:{chronyd.port}",
        "--workers", "1", "--metrics", f"127.0.0.1:{metrics_port}",
    )
    responder.wait_answering(("127.0.0.1", port))
    metrics_pids = [pid for pid, name in responder.children() if name == "pyresponder-m"]
    assert len(metrics_pids) == 1
    os.kill(metrics_pids[0], signal.SIGKILL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            assert value(scrape(metrics_port), "pyresponder_synchronized") == 1
            break
        except OSError:
            time.sleep(0.2)
    else:
        raise AssertionError("the metrics endpoint did not come back")
    assert query(("127.0.0.1", port), ntp_request()) is not None


def test_two_instances_share_the_metrics_port_like_the_ntp_sockets(
    chronyd: Chronyd, start_responder: StartResponder
) -> None:
    """During a colour swap both instances hold the port; the survivor keeps it."""
    metrics_port = free_tcp_port()
    ports = [free_udp_port(), free_udp_port()]
    first, second = (
        start_responder(
            "--listen", f"127.0.0.1:{port}", "--backend", f"127.0.0.1:{chronyd.port}",
            "--workers", "1", "--metrics", f"127.0.0.1:{metrics_port}",
        )
        for port in ports
    )
    for responder, port in zip((first, second), ports, strict=True):
        responder.wait_answering(("127.0.0.1", port))
    assert value(scrape(metrics_port), "pyresponder_synchronized") == 1
    assert first.stop() == 0
    for _ in range(10):  # every scrape now reaches the second instance
        assert value(scrape(metrics_port), "pyresponder_synchronized") == 1
    assert "cannot serve metrics" not in second.log()
