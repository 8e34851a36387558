"""Fixtures for the chrony scenario: molecule/default's helpers, with this scenario's group vars."""

import importlib.util
import shutil
import subprocess
from pathlib import Path

import pytest

SCENARIO = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location(
    "default_conftest", SCENARIO.parent / "default" / "tests" / "conftest.py"
)
assert _spec is not None and _spec.loader is not None
_default = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_default)

# The same container, docker exec and tools-in-container fixtures as molecule/default.
container = _default.container
dexec = _default.dexec
tools_in_container = _default.tools_in_container


@pytest.fixture(scope="module")
def playbook(container, tmp_path_factory):
    """Run one of the repository's playbooks against the container with this scenario's vars."""
    inv = tmp_path_factory.mktemp("inventory")
    (inv / "hosts.yml").write_text(
        "all:\n  children:\n    ntp_servers:\n      hosts:\n"
        f"        {container}:\n          ansible_connection: community.docker.docker\n"
    )
    shutil.copytree(SCENARIO / "inventory" / "group_vars", inv / "group_vars")

    def run(path: str, *extra: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return _default.run_playbook(inv, path, *extra, timeout=timeout)

    return run
