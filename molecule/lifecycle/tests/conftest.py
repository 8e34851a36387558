"""Helpers of the lifecycle tests: colours as systemd sees them, probes, waits."""

import json
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from tests.support.molecule import docker_exec

SCENARIO = Path(__file__).resolve().parents[1]
REPO = SCENARIO.parents[1]
COLOURS = ("blue", "green")


def colours(name: str) -> dict:
    """What systemd runs, as the role sees it (roles/ntp_frontend/files/colour-state)."""
    script = REPO / "roles" / "ntp_frontend" / "files" / "colour-state"
    r = subprocess.run(
        ["docker", "exec", "-i", name, "python3", "-", "/opt/pyresponder", *COLOURS],
        input=script.read_text(),
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return json.loads(r.stdout)


def serving(name: str) -> list[str]:
    return [c for c, s in colours(name).items() if s["active"] == "active"]


def enabled(name: str) -> list[str]:
    return [c for c, s in colours(name).items() if s["enabled"] == "enabled"]


def probe_123(name: str) -> dict | None:
    now = serving(name)
    if not now:
        return None
    binary = f"/opt/pyresponder/colours/{now[0]}/bin/pyresponder"
    r = docker_exec(name, binary, "probe", "127.0.0.1:123", "--json", check=False)
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


def wait_synchronized(name: str, seconds: float = 40) -> bool:
    def synced() -> bool:
        reply = probe_123(name)
        return bool(reply and reply["synchronized"])

    return wait_for(synced, seconds)
