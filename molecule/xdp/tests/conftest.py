"""Fixtures of the xdp scenario: molecule/default's group vars plus this scenario's host vars."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SCENARIO = Path(__file__).resolve().parents[1]
REPO = SCENARIO.parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tests.support.ansible import run_playbook  # noqa: E402
from tests.support.molecule import (  # noqa: E402, F401 (fixtures, found by pytest by name)
    container,
    dexec,
    write_inventory,
)


@pytest.fixture(scope="module")
def playbook(container, tmp_path_factory):  # noqa: F811 (the fixture above)
    """site.yml against the container with this scenario's variables, plus -e overrides."""
    inv = write_inventory(tmp_path_factory.mktemp("inventory"), container,
                          SCENARIO.parent / "default" / "inventory" / "group_vars")
    shutil.copytree(SCENARIO / "inventory" / "host_vars", inv / "host_vars")

    def run(*extra: str) -> subprocess.CompletedProcess[str]:
        return run_playbook(inv, "site.yml", *extra, timeout=600)

    return run
