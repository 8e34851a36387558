"""The shipped rules and dashboard against a real Prometheus scraping a real pyresponder.

Prometheus (Debian's binary, on loopback, 1 s scrape and evaluation interval) loads
monitoring/pyresponder-rules.yml unchanged. Every dashboard query and every recording rule must
return data, every metric they or the alerts name must exist in a live scrape (so a renamed metric
fails here instead of blanking a panel), no alert may be active on the healthy host, and stopping
chronyd must turn PyresponderBackendSilent pending.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import socket
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from functools import partial
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.conftest import StartResponder
from tests.support.chronyd import Chronyd, free_udp_port
from tests.support.dashboard import (
    PROMETHEUS_BUILTINS,
    RULES,
    expand,
    load_dashboard,
    metric_names,
    queries,
    recording_rules,
)
from tests.support.prometheus import Prometheus, find_prometheus, free_tcp_port
from tests.support.responder import ntp_request

pytestmark = pytest.mark.timeout(150)


def scraped_names(port: int) -> set[str]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return {sample.name for family in text_string_to_metric_families(text)
            for sample in family.samples}


def alert_rule_exprs() -> dict[str, str]:
    """alert name -> expression, from the shipped rules."""
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return {str(rule["alert"]): str(rule["expr"])
            for group in groups for rule in group["rules"] if "alert" in rule}


def wait_for(condition: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        time.sleep(0.5)


@pytest.fixture
def traffic() -> Iterator[Callable[[tuple[str, int]], None]]:
    """Steady light client traffic (20 requests/s, a malformed one in ten), bounded in time."""
    stop = threading.Event()
    threads: list[threading.Thread] = []

    def run(address: tuple[str, int]) -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.settimeout(0.05)
            for count in range(2400):  # at most 120 s
                if stop.is_set():
                    return
                packet = ntp_request(mode=6) if count % 10 == 9 else ntp_request()
                sock.sendto(packet, address)
                with contextlib.suppress(OSError):
                    sock.recv(1024)
                stop.wait(0.05)

    def start(address: tuple[str, int]) -> None:
        thread = threading.Thread(target=run, args=(address,), daemon=True)
        thread.start()
        threads.append(thread)

    yield start
    stop.set()
    for thread in threads:
        thread.join(5)


def test_dashboard_rules_and_alerts_on_a_live_responder(
    start_responder: StartResponder, traffic: Callable[[tuple[str, int]], None]
) -> None:
    if find_prometheus() is None:
        pytest.fail("prometheus is needed: run scripts/install-prometheus")
    dashboard = load_dashboard()
    recorded = recording_rules()
    with Chronyd(stratum=9) as chronyd:
        port, metrics_port = free_udp_port(), free_tcp_port()
        responder = start_responder(
            "--listen", f"127.0.0.1:{port}", "--backend", f"127.0.0.1:{chronyd.port}",
            "--workers", "2", "--metrics", f"127.0.0.1:{metrics_port}",
            env={**os.environ, "PYRESPONDER_COLOUR": "blue",
                 "PYRESPONDER_RELEASE": "test-release"},
        )
        responder.wait_answering(("127.0.0.1", port))
        traffic(("127.0.0.1", port))

        # PyresponderBothColoursRunning relies on each scrape being a new connection (the kernel
        # picks a colour per connection): the endpoint must not keep connections alive.
        connection = http.client.HTTPConnection("127.0.0.1", metrics_port, timeout=5)
        connection.request("GET", "/metrics")
        response = connection.getresponse()
        response.read()
        assert response.will_close
        connection.close()

        # Every metric a panel, a recording rule or an alert names is scraped or recorded.
        live = scraped_names(metrics_port)
        named: dict[str, set[str]] = {}
        for query in queries(dashboard):
            for name in metric_names(query.expr):
                named.setdefault(name, set()).add(f"panel {query.panel!r}")
        for record, expr in recorded.items():
            for name in metric_names(expr):
                named.setdefault(name, set()).add(f"recording rule {record}")
        for expr in alert_rule_exprs().values():
            for name in metric_names(expr):
                named.setdefault(name, set()).add("an alert")
        unknown = {name: users for name, users in named.items()
                   if name not in live | set(recorded) | PROMETHEUS_BUILTINS}
        assert unknown == {}, f"metrics neither scraped nor recorded: {unknown}"

        with Prometheus([f"127.0.0.1:{metrics_port}"], rule_files=[RULES]) as prometheus:
            # rate() needs two scrapes in its window, a ratio of recorded rates one more round.
            for record in recorded:
                wait_for(partial(prometheus.query, record), 30,
                         f"recording rule {record} returns data")
            for query in queries(dashboard):
                expr = expand(query.expr)
                wait_for(partial(prometheus.query, expr), 15,
                         f"panel {query.panel!r}: {expr} returns data")
            host = dashboard["templating"]["list"][1]
            assert host["name"] == "host"
            assert prometheus.query("pyresponder_build_info")  # label_values() of the variable
            colours = prometheus.query(
                "max by (colour, release) (last_over_time(pyresponder_instance_info[5m]))"
            )
            assert [entry["metric"] for entry in colours] == [
                {"colour": "blue", "release": "test-release"}
            ]
            replies = float(prometheus.query("job:ntp_server_accepted_packets:rate1m")[0]
                            ["value"][1])
            # rate() divides by the whole 1-minute window, of which only seconds hold samples yet.
            assert replies > 0
            assert prometheus.alerts() == [], "an alert is active on a healthy host"

            chronyd.stop()
            stopped = time.monotonic()

            def backend_silent_pending() -> list[dict[str, Any]]:
                return [alert for alert in prometheus.alerts()
                        if alert["labels"]["alertname"] == "PyresponderBackendSilent"]

            alerts = wait_for(backend_silent_pending, 40, "PyresponderBackendSilent pending")
            waited = time.monotonic() - stopped
            assert alerts[0]["state"] == "pending"  # for: 1m has not passed yet
            assert alerts[0]["labels"]["severity"] == "warning"
            assert alerts[0]["annotations"]["runbook_url"].startswith("docs/operations.md#")
            # The gauge crosses 10 s about 10 s after the last reply; scrape + evaluation add ~2 s.
            assert 9 < waited < 30, waited


def test_both_colours_are_seen_while_they_share_the_metrics_port(
    chronyd: Chronyd, start_responder: StartResponder
) -> None:
    """The signal of PyresponderBothColoursRunning on real sockets: two instances bind the metrics
    port with SO_REUSEPORT, the kernel hands each scrape to one of them, and within a few scrapes
    Prometheus has seen both colours; the alert's expression (without its `for:`) then holds."""
    if find_prometheus() is None:
        pytest.fail("prometheus is needed: run scripts/install-prometheus")
    metrics_port = free_tcp_port()
    for colour in ("blue", "green"):
        port = free_udp_port()
        responder = start_responder(
            "--listen", f"127.0.0.1:{port}", "--backend", f"127.0.0.1:{chronyd.port}",
            "--workers", "1", "--metrics", f"127.0.0.1:{metrics_port}",
            env={**os.environ, "PYRESPONDER_COLOUR": colour, "PYRESPONDER_RELEASE": colour},
        )
        responder.wait_answering(("127.0.0.1", port))
    expr = alert_rule_exprs()["PyresponderBothColoursRunning"]
    with Prometheus([f"127.0.0.1:{metrics_port}"], interval=0.5) as prometheus:
        # With a fair choice, 40 scrapes all reaching one colour has a chance of 2 in 10^12.
        result = wait_for(partial(prometheus.query, expr), 20, "both colours seen")
        assert float(result[0]["value"][1]) == 2
