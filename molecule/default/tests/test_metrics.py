"""Prometheus metrics of the serving colour on 127.0.0.1:9123 agree with chronyd and the role."""

import re
import time
from pathlib import Path

import yaml

GROUP_VARS = yaml.safe_load(
    (Path(__file__).resolve().parents[1] / "inventory/group_vars/ntp_servers.yml").read_text()
)
SCRAPE = (
    "import urllib.request; "
    "print(urllib.request.urlopen('http://127.0.0.1:9123/metrics', timeout=5).read().decode())"
)
QUERIES = 20


def _scrape(dexec) -> dict[str, float]:
    """Samples by name and labels, e.g. 'pyresponder_workers' or 'x{a="b"}'."""
    text = dexec("python3", "-c", SCRAPE).stdout
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            samples[name] = float(value)
    return samples


def _accepted_on_123(samples: dict[str, float]) -> float:
    return sum(
        v
        for k, v in samples.items()
        if k.startswith("ntp_server_accepted_packets_total{") and ':123"' in k
    )


def test_metrics_agree_with_chrony_and_role(dexec):
    samples = _scrape(dexec)
    assert samples["pyresponder_synchronized"] == 1
    tracking = dexec("chronyc", "-n", "tracking").stdout
    stratum = int(re.search(r"^Stratum\s*:\s*(\d+)", tracking, re.MULTILINE).group(1))
    assert samples["ntp_system_stratum"] == stratum
    assert samples["pyresponder_workers"] == GROUP_VARS["ntp_frontend_workers"]
    assert samples["pyresponder_workers_configured"] == GROUP_VARS["ntp_frontend_workers"]


def test_accepted_packets_grow_with_queries(dexec):
    active = dexec("cat", "/var/lib/pyresponder/active").stdout.strip()
    probe = f"/opt/pyresponder/colours/{active}/bin/pyresponder"
    before = _accepted_on_123(_scrape(dexec))
    for _ in range(QUERIES):
        dexec(probe, "probe", "127.0.0.1:123", "--json")
    deadline = time.monotonic() + 10
    after = before
    while time.monotonic() < deadline:
        after = _accepted_on_123(_scrape(dexec))
        if after >= before + QUERIES:
            break
        time.sleep(0.5)
    print(f"accepted on :123 before {before}, after {after}")
    assert after >= before + QUERIES
