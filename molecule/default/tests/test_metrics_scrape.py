"""The metrics endpoint on a public address, guarded by the role's nftables table, and the
colour label that tells a scraper which colour answered."""

import json
import re
import subprocess
import urllib.request

import pytest


def _scrape_local(dexec) -> str:
    return dexec(
        "python3", "-c",
        "import urllib.request; print(urllib.request.urlopen("
        "'http://127.0.0.1:9123/metrics', timeout=5).read().decode())",
    ).stdout


def _reachable_from_docker_host(address: str) -> bool:
    try:
        with urllib.request.urlopen(f"http://{address}:9123/metrics", timeout=3) as response:
            return response.status == 200
    except OSError:
        return False


@pytest.fixture(scope="module")
def container_address(container) -> str:
    out = subprocess.run(["docker", "inspect", container], capture_output=True, text=True,
                         check=True).stdout
    networks = json.loads(out)[0]["NetworkSettings"]["Networks"]
    return next(iter(networks.values()))["IPAddress"]


def test_instance_info_names_the_active_colour_and_release(dexec):
    active = dexec("cat", "/var/lib/pyresponder/active").stdout.strip()
    env = dexec("cat", f"/etc/pyresponder/{active}.env").stdout
    release = re.search(r"^PYRESPONDER_RELEASE=(\S+)$", env, re.M).group(1)
    text = _scrape_local(dexec)
    info = re.findall(r"^pyresponder_instance_info\{(.*)\} 1\.0$", text, re.M)
    assert len(info) == 1
    labels = dict(re.findall(r'(\w+)="([^"]*)"', info[0]))
    assert labels == {"colour": active, "release": release}


def test_firewall_unit_loads_the_scrapers(dexec):
    assert dexec("systemctl", "is-active", "pyresponder-metrics-firewall.service").stdout.strip() \
        == "active"
    table = dexec("nft", "list", "table", "inet", "pyresponder_metrics").stdout
    assert "192.0.2.99" in table
    assert "2001:db8::99" in table
    assert "tcp dport 9123 drop" in table


def test_only_named_scrapers_get_in(dexec, container_address):
    """The Docker host is not named: dropped. Named for a moment: let in."""
    gateway = re.search(r"default via (\S+)", dexec("ip", "-4", "route").stdout).group(1)
    assert not _reachable_from_docker_host(container_address)
    dexec("nft", "add", "element", "inet", "pyresponder_metrics", "scrapers4", f"{{ {gateway} }}")
    try:
        assert _reachable_from_docker_host(container_address)
    finally:
        dexec("nft", "delete", "element", "inet", "pyresponder_metrics", "scrapers4",
              f"{{ {gateway} }}")
    assert not _reachable_from_docker_host(container_address)
    assert "pyresponder_synchronized 1.0" in _scrape_local(dexec)  # local users always get in


def test_table_survives_an_nftables_restart(dexec):
    """nftables.service starts with `flush ruleset`; PartOf= reloads our table after it."""
    dexec("systemctl", "restart", "nftables.service")
    try:
        table = dexec("nft", "list", "table", "inet", "pyresponder_metrics", check=False)
        assert table.returncode == 0, table.stderr
        assert "192.0.2.99" in table.stdout
    finally:
        # The flush also removed the NOTRACK table, whose unit does not follow nftables (yet).
        dexec("systemctl", "restart", "pyresponder-notrack.service", check=False)
