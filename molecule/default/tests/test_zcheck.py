"""playbooks/check.yml: reports a good server, fails for one that serves unsynchronized time.

Named to run last: it stops chronyd for a while (and starts it again)."""

import json
import subprocess
import time

import pytest


def _container_ip(container: str) -> str:
    fmt = "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}"
    return subprocess.run(
        ["docker", "inspect", "-f", fmt, container], capture_output=True, text=True, check=True
    ).stdout.strip()


def _synchronized(dexec) -> bool:
    active = dexec("cat", "/var/lib/pyresponder/active").stdout.strip()
    r = dexec(
        f"/opt/pyresponder/colours/{active}/bin/pyresponder",
        "probe",
        "127.0.0.1:123",
        "--json",
        check=False,
    )
    return bool(json.loads(r.stdout)["synchronized"])


@pytest.mark.timeout(300)
def test_check_playbook_reports_and_fails_on_a_bad_server(container, dexec, playbook):
    addr = ["-e", f"ntp_check_address={_container_ip(container)}"]
    good = playbook("playbooks/check.yml", *addr)
    assert good.returncode == 0, good.stdout[-3000:]
    assert "on host: offset" in good.stdout
    assert "from control node: offset" in good.stdout
    assert "stratum 10, leap 0" in good.stdout

    dexec("systemctl", "stop", "chrony")
    try:
        # pyresponder keeps serving the last synchronized state for the holdover (the role's
        # default 60 s, counted from the last sample), then turns unsynchronized.
        deadline = time.monotonic() + 100
        while _synchronized(dexec) and time.monotonic() < deadline:
            time.sleep(1)
        bad = playbook("playbooks/check.yml", *addr)
        assert bad.returncode != 0, bad.stdout[-3000:]
        assert "UNSYNCHRONIZED" in bad.stdout
    finally:
        dexec("systemctl", "start", "chrony")
    deadline = time.monotonic() + 30
    while not _synchronized(dexec) and time.monotonic() < deadline:
        time.sleep(1)
    assert _synchronized(dexec)
