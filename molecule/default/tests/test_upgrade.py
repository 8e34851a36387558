"""playbooks/upgrade.yml: a changed release rolls out behind the probe gate; a bad one stops the
run with the old colour serving."""

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from test_rollout import _active, _running, _start_stream

from tests.support.molecule import stop_stream

REPO = Path(__file__).resolve().parents[3]
RATE = 500


def _container_ip(container: str) -> str:
    fmt = "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}"
    return subprocess.run(
        ["docker", "inspect", "-f", fmt, container], capture_output=True, text=True, check=True
    ).stdout.strip()


def _source_copy(tmp_path: Path, name: str, append: str) -> Path:
    """A copy of the package sources with one line appended to pyresponder/__init__.py."""
    src = Path(os.environ.get("PYRESPONDER_SOURCE_DIR") or REPO)
    dest = tmp_path / name
    dest.mkdir()
    shutil.copy2(src / "pyproject.toml", dest)
    shutil.copy2(src / "README.md", dest)
    shutil.copytree(
        src / "src", dest / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info")
    )
    with (dest / "src/pyresponder/__init__.py").open("a") as f:
        f.write(append)
    return dest


def _release(dexec, colour: str) -> str:
    env = dexec("cat", f"/etc/pyresponder/{colour}.env").stdout
    return next(
        ln.split("=", 1)[1] for ln in env.splitlines() if ln.startswith("PYRESPONDER_RELEASE=")
    )


@pytest.mark.timeout(400)
def test_upgrade_rolls_a_new_release_then_stops_at_a_bad_one(
    container, dexec, playbook, tools_in_container, tmp_path
):
    addr = ["-e", f"ntp_check_address={_container_ip(container)}"]
    first = _active(dexec)
    old_release = _release(dexec, first)

    # A changed release: rolled out, gated, no request lost on the way.
    good = _source_copy(tmp_path, "good", f"# upgrade test: new release {time.time_ns()}\n")
    _start_stream(dexec, RATE)
    r = playbook("playbooks/upgrade.yml", "-e", f"ntp_frontend_source_dir={good}", *addr)
    stream = stop_stream(dexec)
    assert r.returncode == 0, r.stdout[-3000:]
    second = _active(dexec)
    new_release = _release(dexec, second)
    print(f"upgrade {old_release} ({first}) -> {new_release} ({second}), stream {stream}")
    assert second != first and not _running(dexec, first)
    assert new_release != old_release
    # The gate probed the host from itself and from the control node.
    assert "on host: offset" in r.stdout and "from control node: offset" in r.stdout
    assert "stratum 10, leap 0" in r.stdout
    assert stream["lost"] == 0 and stream["unsynchronized"] == 0 and stream["bad"] == 0, stream

    # Unchanged release: nothing to roll.
    r = playbook("playbooks/upgrade.yml", "-e", f"ntp_frontend_source_dir={good}", *addr)
    assert r.returncode == 0, r.stdout[-3000:]
    assert _active(dexec) == second and "changed=0" in r.stdout, r.stdout[-2000:]

    # A bad release: passes --check-config, dies when started under systemd.
    bad = _source_copy(
        tmp_path,
        "bad",
        f"# {time.time_ns()}\nimport os as _os\nif _os.environ.get('INVOCATION_ID'):\n"
        "    raise SystemExit('upgrade test: a release that cannot start')\n",
    )
    t0 = time.monotonic()
    r = playbook("playbooks/upgrade.yml", "-e", f"ntp_frontend_source_dir={bad}", *addr)
    out = r.stdout + r.stderr
    print(f"bad release: failed after {time.monotonic() - t0:.1f} s")
    assert r.returncode != 0, out[-3000:]
    assert "ROLLOUT FAILED" in out and f"Colour {second} keeps serving" in out, out[-3000:]
    # The gate never ran for the failed host.
    assert "on host: offset" not in out
    assert _active(dexec) == second and _running(dexec, second)
    assert not _running(dexec, first)
    assert _release(dexec, second) == new_release
    probe = f"/opt/pyresponder/colours/{second}/bin/pyresponder"
    reply = json.loads(dexec(probe, "probe", "127.0.0.1:123", "--json").stdout)
    assert reply["synchronized"], reply
