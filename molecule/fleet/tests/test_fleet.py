"""playbooks/upgrade.yml on a two-host fleet: a bad release fails the first batch (one canary host)
and never reaches the second host; a good release then reaches both, batch by batch."""

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from tests.support.ansible import run_playbook
from tests.support.molecule import REPO, docker_exec

PREFIX = os.environ.get("PYR_MOLECULE_PREFIX", "pyresponder")
HOSTS = [f"{PREFIX}-fleet-a", f"{PREFIX}-fleet-b"]  # inventory order = batch order


def _dexec(name: str, *argv: str) -> str:
    return docker_exec(name, *argv).stdout


def _ip(name: str) -> str:
    fmt = "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}"
    return subprocess.run(
        ["docker", "inspect", "-f", fmt, name], capture_output=True, text=True, check=True
    ).stdout.strip()


def _serving(name: str) -> tuple[str, str]:
    colour = _dexec(name, "cat", "/var/lib/pyresponder/active").strip()
    env = _dexec(name, "cat", f"/etc/pyresponder/{colour}.env")
    release = next(
        ln.split("=", 1)[1] for ln in env.splitlines() if ln.startswith("PYRESPONDER_RELEASE=")
    )
    return colour, release


def _sources(tmp: Path, name: str, append: str) -> Path:
    src = Path(os.environ.get("PYRESPONDER_SOURCE_DIR") or REPO)
    dest = tmp / name
    dest.mkdir()
    for f in ("pyproject.toml", "README.md"):
        shutil.copy2(src / f, dest)
    shutil.copytree(
        src / "src", dest / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info")
    )
    with (dest / "src/pyresponder/__init__.py").open("a") as f:
        f.write(append)
    return dest


def _upgrade(inv: Path, source: Path) -> subprocess.CompletedProcess[str]:
    return run_playbook(
        inv, "playbooks/upgrade.yml", "-e", f"ntp_frontend_source_dir={source}", timeout=400
    )


@pytest.mark.timeout(600)
def test_bad_release_stops_at_the_canary_good_one_reaches_all(host, tmp_path):
    if host.backend.get_hostname() != HOSTS[0]:
        pytest.skip("one fleet test, run once")
    inv = tmp_path / "inventory"
    inv.mkdir()
    lines = ["all:", "  children:", "    ntp_servers:", "      hosts:"]
    for h in HOSTS:
        lines += [
            f"        {h}:",
            "          ansible_connection: community.docker.docker",
            f"          ntp_check_address: {_ip(h)}",
        ]
    (inv / "hosts.yml").write_text("\n".join(lines) + "\n")
    shutil.copytree(REPO / "molecule/default/inventory/group_vars", inv / "group_vars")
    before = {h: _serving(h) for h in HOSTS}

    bad = _sources(
        tmp_path,
        "bad",
        f"# {time.time_ns()}\nimport os as _os\n"
        "if _os.environ.get('INVOCATION_ID'):\n"
        "    raise SystemExit('a release that cannot start')\n",
    )
    r = _upgrade(inv, bad)
    out = r.stdout + r.stderr
    print(out[-1500:])
    assert r.returncode != 0
    assert f"ROLLOUT FAILED on {HOSTS[0]}" in out
    assert {h: _serving(h) for h in HOSTS} == before
    # The second host was never touched: no task ran on it, and the bad release is not there.
    assert f"[{HOSTS[1]}]" not in r.stdout
    assert _dexec(HOSTS[1], "ls", "/opt/pyresponder/releases").split() == [before[HOSTS[1]][1]]

    good = _sources(tmp_path, "good", f"# a new release {time.time_ns()}\n")
    r = _upgrade(inv, good)
    print(r.stdout[-1500:])
    assert r.returncode == 0, r.stdout[-3000:]
    after = {h: _serving(h) for h in HOSTS}
    releases = {rel for _, rel in after.values()}
    assert len(releases) == 1 and releases != {before[HOSTS[0]][1]}
    assert all(after[h][0] != before[h][0] for h in HOSTS)  # each rolled to its other colour
    assert r.stdout.count("on host: offset") == len(HOSTS)  # every host passed the gate
