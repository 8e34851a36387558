"""Fixtures of the xdp scenario: molecule/default's group vars plus this scenario's host vars."""

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.support.ansible import run_playbook
from tests.support.molecule import write_inventory

SCENARIO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def playbook(container, tmp_path_factory):
    """site.yml against the container with this scenario's variables, plus -e overrides."""
    inv = write_inventory(tmp_path_factory.mktemp("inventory"), container,
                          SCENARIO.parent / "default" / "inventory" / "group_vars")
    shutil.copytree(SCENARIO / "inventory" / "host_vars", inv / "host_vars")

    def run(*extra: str) -> subprocess.CompletedProcess[str]:
        return run_playbook(inv, "site.yml", *extra, timeout=600)

    return run
