"""What every scenario's tests share (pytest finds this file above each scenario's tests/): the
repository on the import path and the fixtures of tests/support/molecule.py, with ``group_vars``
the scenario's own inventory/group_vars. A scenario's conftest.py overrides what differs."""

import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tests.support.molecule import (  # noqa: E402, F401 (fixtures, found by pytest by name)
    container,
    dexec,
    playbook,
    tools_in_container,
)


@pytest.fixture(scope="module")
def group_vars(request: pytest.FixtureRequest) -> Path:
    """molecule/<scenario>/inventory/group_vars of the scenario whose tests run."""
    return Path(request.path).resolve().parents[1] / "inventory" / "group_vars"
