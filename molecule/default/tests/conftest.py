"""Fixtures: the container, docker exec, playbook runs with this scenario's group vars, and the
test tools in the container (all from tests/support/molecule.py)."""

import sys
from pathlib import Path

import pytest

SCENARIO = Path(__file__).resolve().parents[1]
REPO = SCENARIO.parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tests.support.molecule import (  # noqa: E402, F401 (fixtures, found by pytest by name)
    container,
    dexec,
    playbook,
    tools_in_container,
)


@pytest.fixture(scope="module")
def group_vars() -> Path:
    return SCENARIO / "inventory" / "group_vars"
