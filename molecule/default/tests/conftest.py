"""Helpers for the molecule tests: the container's name, docker exec, ansible-playbook runs."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import ntplib  # the real client library; copied into the container (one module)
import pytest

SCENARIO = Path(__file__).resolve().parents[1]
REPO = SCENARIO.parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tests.support.ansible import run_playbook  # noqa: E402


@pytest.fixture(scope="module")
def container(host) -> str:
    """Name of the container under test (molecule's instance, or --hosts=docker://NAME)."""
    return os.environ.get("MOLECULE_CONTAINER") or host.backend.get_hostname()


@pytest.fixture(scope="module")
def dexec(container):
    """Run a command in the container with docker exec (fast, and independent of testinfra)."""

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


@pytest.fixture(scope="module")
def playbook(container, tmp_path_factory):
    """Run one of the repository's playbooks against the container, with molecule's group vars."""
    inv = tmp_path_factory.mktemp("inventory")
    (inv / "hosts.yml").write_text(
        "all:\n  children:\n    ntp_servers:\n      hosts:\n"
        f"        {container}:\n          ansible_connection: community.docker.docker\n"
    )
    shutil.copytree(SCENARIO / "inventory" / "group_vars", inv / "group_vars")

    def run(path: str, *extra: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return run_playbook(inv, path, *extra, timeout=timeout)

    return run


@pytest.fixture(scope="module")
def tools_in_container(container) -> None:
    """Copy the load client and ntplib (a single pure-Python module) into the container."""
    subprocess.run(["docker", "exec", container, "mkdir", "-p", "/tmp/pyr-test"], check=True)
    for src in (SCENARIO / "files" / "ntp_stream.py", Path(ntplib.__file__)):
        dest = f"{container}:/tmp/pyr-test/{src.name}"
        subprocess.run(["docker", "cp", str(src), dest], check=True)
