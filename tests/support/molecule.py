"""What every molecule scenario's tests share: the container under test, docker exec into it, an
inventory for running the repository's playbooks against it, and the test tools copied in."""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ntplib  # the real client library; copied into the container (one module)
import pytest

from tests.support.ansible import run_playbook

REPO = Path(__file__).resolve().parents[2]
STREAM = REPO / "molecule" / "default" / "files" / "ntp_stream.py"
TOOLS_DIR = "/tmp/pyr-test"

Exec = Callable[..., subprocess.CompletedProcess[str]]


def container_name(host: Any) -> str:
    """The container under test: molecule's instance (testinfra's host), or MOLECULE_CONTAINER."""
    return os.environ.get("MOLECULE_CONTAINER") or str(host.backend.get_hostname())


def docker_exec(
    container: str, *argv: str, timeout: float = 60, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """Run a command in the container (fast, and independent of testinfra)."""
    return subprocess.run(
        ["docker", "exec", container, *argv],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=check,
    )


def executor(container: str) -> Exec:
    """``docker_exec`` bound to one container: the scenarios' ``dexec`` fixture."""
    return functools.partial(docker_exec, container)


def write_inventory(path: Path, container: str, group_vars: Path) -> Path:
    """An inventory at ``path`` with the container in ntp_servers and a scenario's group_vars."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "hosts.yml").write_text(
        "all:\n  children:\n    ntp_servers:\n      hosts:\n"
        f"        {container}:\n          ansible_connection: community.docker.docker\n"
    )
    shutil.copytree(group_vars, path / "group_vars", dirs_exist_ok=True)
    return path


def copy_tools(container: str) -> None:
    """The load client (molecule/default/files/ntp_stream.py) and ntplib into TOOLS_DIR."""
    subprocess.run(["docker", "exec", container, "mkdir", "-p", TOOLS_DIR], check=True)
    for src in (STREAM, Path(ntplib.__file__)):
        subprocess.run(
            ["docker", "cp", str(src), f"{container}:{TOOLS_DIR}/{src.name}"], check=True
        )


def start_stream(
    dexec: Exec,
    rate: int,
    max_seconds: int,
    name: str = "stream",
    port: int = 123,
    extra: tuple[str, ...] = (),
) -> None:
    """Start the load client (copy_tools) in the container against 127.0.0.1:``port``, bounded
    by ``max_seconds``; its files are TOOLS_DIR/``name``.*. Returns once it is sending."""
    base = f"{TOOLS_DIR}/{name}"
    dexec("rm", "-f", f"{base}.started", f"{base}.stop", f"{base}.json")
    dexec(
        "sh",
        "-c",
        f"nohup python3 {TOOLS_DIR}/ntp_stream.py --host 127.0.0.1 --port {port}"
        f" --rate {rate} --max-seconds {max_seconds} {' '.join(extra)}"
        f" --started-file {base}.started --stop-file {base}.stop"
        f" --out {base}.json >{base}.log 2>&1 &",
    )
    for _ in range(50):
        if dexec("test", "-e", f"{base}.started", check=False).returncode == 0:
            return
        time.sleep(0.1)
    raise AssertionError(f"stream {name} did not start: {dexec('cat', f'{base}.log').stdout}")


def stop_stream(dexec: Exec, name: str = "stream", wait: float = 10.0) -> dict[str, Any]:
    """Stop a stream started by start_stream and return its summary (ntp_stream.py --out)."""
    base = f"{TOOLS_DIR}/{name}"
    dexec("touch", f"{base}.stop")
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        r = dexec("cat", f"{base}.json", check=False)
        if r.returncode == 0:
            summary: dict[str, Any] = json.loads(r.stdout)
            return summary
        time.sleep(0.1)
    log = dexec("cat", f"{base}.log", check=False).stdout
    raise AssertionError(f"stream {name} wrote no summary: {log}")


# ---- fixtures: a scenario's conftest imports these and defines ``group_vars`` -----------------


@pytest.fixture(scope="module")
def container(host: Any) -> str:
    return container_name(host)


@pytest.fixture(scope="module")
def dexec(container: str) -> Exec:
    return executor(container)


@pytest.fixture(scope="module")
def playbook(
    container: str, group_vars: Path, tmp_path_factory: pytest.TempPathFactory
) -> Callable[..., subprocess.CompletedProcess[str]]:
    """Run one of the repository's playbooks against the container with the scenario's vars."""
    inventory = write_inventory(tmp_path_factory.mktemp("inventory"), container, group_vars)

    def run(path: str, *extra: str, timeout: float = 400) -> subprocess.CompletedProcess[str]:
        return run_playbook(inventory, path, *extra, timeout=timeout)

    return run


@pytest.fixture(scope="module")
def tools_in_container(container: str) -> None:
    copy_tools(container)
