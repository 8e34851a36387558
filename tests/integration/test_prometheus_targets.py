"""playbooks/prometheus-targets.yml writes file_sd targets that a real Prometheus scrapes.

The inventory's hosts all live on loopback (a real pyresponder's metrics port, and a port where
nothing listens), so the playbook runs locally and Prometheus sends no traffic elsewhere.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import StartResponder
from tests.support.chronyd import Chronyd, free_udp_port
from tests.support.prometheus import Prometheus, find_prometheus, free_tcp_port

ROOT = Path(__file__).resolve().parents[2]
PLAYBOOK = ROOT / "playbooks" / "prometheus-targets.yml"


def run_playbook(inventory: dict[str, Any], tmp: Path,
                 targets: Path) -> subprocess.CompletedProcess[str]:
    inventory_file = tmp / "hosts.json"
    inventory_file.write_text(json.dumps(inventory))
    ansible_playbook = Path(sys.executable).with_name("ansible-playbook")
    if not ansible_playbook.exists():
        pytest.fail("ansible-playbook is needed: bash scripts/setup-venv test,lint,ansible")
    env = {**os.environ, "ANSIBLE_NOCOLOR": "1", "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg")}
    return subprocess.run(
        [str(ansible_playbook), "-i", str(inventory_file), str(PLAYBOOK),
         "-e", f"prometheus_targets_file={targets}"],
        capture_output=True, text=True, timeout=120, env=env, check=False,
    )


def inventory(hosts: dict[str, dict[str, Any]]) -> dict[str, Any]:
    return {"all": {"children": {"ntp_servers": {
        "vars": {"ansible_connection": "local", "ansible_python_interpreter": sys.executable},
        "hosts": hosts,
    }}}}


def test_targets_file_is_scraped_by_prometheus(tmp_path: Path, chronyd: Chronyd,
                                                start_responder: StartResponder) -> None:
    if find_prometheus() is None:
        pytest.fail("prometheus is needed: run scripts/install-prometheus")
    metrics_port, idle_port = free_tcp_port(), free_tcp_port()
    port = free_udp_port()
    responder = start_responder(
        "--listen", f"127.0.0.1:{port}", "--backend", f"127.0.0.1:{chronyd.port}",
        "--workers", "1", "--metrics", f"127.0.0.1:{metrics_port}",
    )
    responder.wait_answering(("127.0.0.1", port))
    targets = tmp_path / "sd" / "pyresponder.json"
    result = run_playbook(inventory({
        # A wildcard listen address: the target is ansible_host.
        "ntp1.example.net": {"ansible_host": "127.0.0.1",
                             "ntp_frontend_metrics_listen": f"0.0.0.0:{metrics_port}",
                             "prometheus_target_labels": {"zone": "de"}},
        # Loopback-only metrics reached another way (a tunnel): named explicitly.
        "ntp2.example.net": {"ntp_frontend_metrics_listen": f"127.0.0.1:{idle_port}",
                             "prometheus_scrape_address": "::1"},
    }), tmp_path, targets)
    assert result.returncode == 0, result.stdout + result.stderr
    assert json.loads(targets.read_text()) == [
        {"targets": [f"127.0.0.1:{metrics_port}"],
         "labels": {"host": "ntp1.example.net", "zone": "de"}},
        {"targets": [f"[::1]:{idle_port}"], "labels": {"host": "ntp2.example.net"}},
    ]

    with Prometheus([], file_sd=targets) as prometheus:
        deadline = time.monotonic() + 20
        health: dict[str, str] = {}
        while time.monotonic() < deadline:
            health = {target["labels"]["host"]: target["health"]
                      for target in prometheus.active_targets()}
            if health == {"ntp1.example.net": "up", "ntp2.example.net": "down"}:
                break
            time.sleep(0.5)
        assert health == {"ntp1.example.net": "up", "ntp2.example.net": "down"}
        synchronized = prometheus.query('pyresponder_synchronized{host="ntp1.example.net"}')
        assert [entry["metric"]["job"] for entry in synchronized] == ["pyresponder"]


def test_host_with_loopback_only_metrics_fails_by_name(tmp_path: Path) -> None:
    targets = tmp_path / "pyresponder.json"
    result = run_playbook(inventory({
        "ntp1.example.net": {"ansible_host": "127.0.0.1",
                             "ntp_frontend_metrics_listen": "0.0.0.0:9123"},
        "ntp9.example.net": {},  # the role's default: 127.0.0.1:9123
    }), tmp_path, targets)
    assert result.returncode != 0
    assert "ntp9.example.net serves metrics on 127.0.0.1:9123 only" in result.stdout
    # The reachable host is still written; the failed one is left out.
    assert json.loads(targets.read_text()) == [
        {"targets": ["127.0.0.1:9123"], "labels": {"host": "ntp1.example.net"}}
    ]
