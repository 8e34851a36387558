"""Fixtures of the lifecycle tests (the default scenario's, with this scenario's group vars)."""

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import ntplib  # copied into the container (one module)
import pytest

SCENARIO = Path(__file__).resolve().parents[1]
REPO = SCENARIO.parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tests.support.ansible import run_playbook  # noqa: E402

COLOURS = ("blue", "green")


@pytest.fixture(scope="module")
def container(host) -> str:
    return os.environ.get("MOLECULE_CONTAINER") or host.backend.get_hostname()


@pytest.fixture(scope="module")
def dexec(container):
    def run(
        *argv: str, timeout: float = 60, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["docker", "exec", container, *argv],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=check,
        )

    return run


def make_inventory(path: Path, name: str) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "hosts.yml").write_text(
        "all:\n  children:\n    ntp_servers:\n      hosts:\n"
        f"        {name}:\n          ansible_connection: community.docker.docker\n"
    )
    shutil.copytree(SCENARIO / "inventory" / "group_vars", path / "group_vars", dirs_exist_ok=True)
    return path


@pytest.fixture(scope="module")
def playbook(container, tmp_path_factory):
    inv = make_inventory(tmp_path_factory.mktemp("inventory"), container)

    def run(path: str, *extra: str, timeout: float = 400) -> subprocess.CompletedProcess[str]:
        return run_playbook(inv, path, *extra, timeout=timeout)

    return run


@pytest.fixture(scope="module")
def tools_in_container(container) -> None:
    """The load client and ntplib (one module) in the container."""
    subprocess.run(["docker", "exec", container, "mkdir", "-p", "/tmp/pyr-test"], check=True)
    stream = REPO / "molecule" / "default" / "files" / "ntp_stream.py"
    for src in (stream, Path(ntplib.__file__)):
        subprocess.run(
            ["docker", "cp", str(src), f"{container}:/tmp/pyr-test/{src.name}"], check=True
        )


def _exec(container: str, *argv: str, check: bool = False) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["docker", "exec", container, *argv],
        capture_output=True,
        text=True,
        timeout=60,
        check=check,
    )


def colours(container: str) -> dict:
    """What systemd runs, as the role sees it (roles/ntp_frontend/files/colour-state)."""
    script = REPO / "roles" / "ntp_frontend" / "files" / "colour-state"
    r = subprocess.run(
        ["docker", "exec", "-i", container, "python3", "-", "/opt/pyresponder", *COLOURS],
        input=script.read_text(),
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return json.loads(r.stdout)


def serving(container: str) -> list[str]:
    return [c for c, s in colours(container).items() if s["active"] == "active"]


def enabled(container: str) -> list[str]:
    return [c for c, s in colours(container).items() if s["enabled"] == "enabled"]


def probe_123(container: str) -> dict | None:
    now = serving(container)
    if not now:
        return None
    binary = f"/opt/pyresponder/colours/{now[0]}/bin/pyresponder"
    r = _exec(container, binary, "probe", "127.0.0.1:123", "--json")
    return json.loads(r.stdout) if r.stdout.startswith("{") else None


def flat(text: str) -> str:
    """Output with every run of white space made one space (Ansible wraps long messages)."""
    return " ".join(text.split())


def wait_for(what: Callable[[], bool], seconds: float, step: float = 0.5) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if what():
            return True
        time.sleep(step)
    return what()


def wait_synchronized(container: str, seconds: float = 40) -> bool:
    def synced() -> bool:
        reply = probe_123(container)
        return bool(reply and reply["synchronized"])

    return wait_for(synced, seconds)
