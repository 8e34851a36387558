"""--check on a fresh container (nothing installed): site.yml passes and changes nothing;
check.yml (in check mode) reports that nothing answers, without crashing."""

import subprocess

import pytest
from conftest import SCENARIO, flat, wait_for

from tests.support.ansible import run_playbook
from tests.support.molecule import write_inventory


@pytest.fixture
def fresh(container, tmp_path):
    name = f"{container}-fresh"
    image = subprocess.run(
        ["docker", "inspect", "-f", "{{.Config.Image}}", container],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    subprocess.run(["docker", "rm", "-f", name], capture_output=True, check=False)
    subprocess.run(
        [
            "docker",
            "run",
            "-d",
            "--name",
            name,
            "--hostname",
            name,
            "--cgroupns=host",
            "-v",
            "/sys/fs/cgroup:/sys/fs/cgroup:rw",
            "--tmpfs",
            "/run",
            "--tmpfs",
            "/run/lock",
            "--stop-signal",
            "SIGRTMIN+3",
            "--cap-add",
            "NET_ADMIN",
            image,
            "/lib/systemd/systemd",
        ],
        capture_output=True,
        check=True,
    )
    try:

        def up() -> bool:
            r = subprocess.run(
                ["docker", "exec", name, "systemctl", "is-system-running"],
                capture_output=True,
                text=True,
                check=False,
            )
            return r.stdout.strip() in ("running", "degraded")

        assert wait_for(up, 60)
        group_vars = SCENARIO / "inventory" / "group_vars"
        yield name, write_inventory(tmp_path / "inventory", name, group_vars)
    finally:
        subprocess.run(["docker", "rm", "-f", name], capture_output=True, check=False)


@pytest.mark.timeout(600)
def test_check_mode_on_a_fresh_host(fresh):
    name, inv = fresh
    r = run_playbook(inv, "site.yml", "--check", timeout=500)
    assert r.returncode == 0, r.stdout[-3000:]
    assert "failed=0" in r.stdout
    assert "no colour is serving" in flat(r.stdout), r.stdout[-3000:]
    assert (
        subprocess.run(
            ["docker", "exec", name, "test", "-e", "/opt/pyresponder"], check=False
        ).returncode
        != 0
    ), "check mode installed something"
    c = run_playbook(inv, "playbooks/check.yml", "--check", "-e", "ntp_check_from_control=false")
    out = flat(c.stdout + c.stderr)
    assert c.returncode != 0, out[-3000:]
    assert "on host: NO ANSWER" in out, out[-3000:]
    assert "from_json" not in out and "is not serving good time" in out, out[-3000:]
