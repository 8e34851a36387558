"""Run one of the repository's playbooks the way the molecule tests need it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def run_playbook(
    inventory: Path, playbook: str, *extra: str, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    """``ansible-playbook -i INVENTORY REPO/PLAYBOOK EXTRA...`` with the repository's ansible.cfg,
    pipelining on and no colour; never raises on a failed play (callers assert on it)."""
    ansible = shutil.which("ansible-playbook") or str(
        Path(sys.executable).parent / "ansible-playbook"
    )
    env = dict(
        os.environ,
        ANSIBLE_PIPELINING="true",
        ANSIBLE_NOCOLOR="1",
        ANSIBLE_CONFIG=str(REPO / "ansible.cfg"),
    )
    env.pop("ANSIBLE_INVENTORY", None)  # the inventory given here, not molecule's
    return subprocess.run(
        [ansible, "-i", str(inventory), str(REPO / playbook), *extra],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
        env=env,
        check=False,
    )
