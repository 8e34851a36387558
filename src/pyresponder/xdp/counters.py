"""The XDP path's counters snapshot: a small JSON file the metrics endpoint reads.

Only ``pyresponder xdp`` (CAP_BPF) can read the per-CPU counter map; the serving colours and their
metrics process have no capabilities. So the xdp process writes the summed counters once a second
to a file (write to a temporary name, then rename: a reader sees the old or the new file, never a
half-written one), and the colours' metrics endpoint reads it at scrape time when it is fresh.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Final

DEFAULT_PATH: Final = Path("/run/pyresponder-xdp/counters.json")
# The metrics endpoint of serve reads DEFAULT_PATH unless this names another file (tests do).
PATH_ENV: Final = "PYRESPONDER_XDP_COUNTERS"
# Older than this, the writer is gone (stopped or dead, its program detached): ignore the file.
STALE_AFTER: Final = 10.0


@dataclass(frozen=True, slots=True)
class Snapshot:
    interface: str
    mode: str  # native or generic
    synchronized: bool
    counters: dict[str, int]
    written_at: float  # Unix time


def write(path: Path, snapshot: Snapshot) -> None:
    temporary = path.with_name(f".{path.name}.{os.getpid()}")
    try:
        temporary.write_text(json.dumps(asdict(snapshot), sort_keys=True))
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            temporary.unlink()


def default_path() -> Path:
    return Path(os.environ.get(PATH_ENV) or DEFAULT_PATH)


def read(path: Path = DEFAULT_PATH, now: float | None = None) -> Snapshot | None:
    """The snapshot at ``path`` if it exists, parses and is fresh; otherwise None."""
    try:
        data = json.loads(path.read_text())
        snapshot = Snapshot(
            interface=str(data["interface"]),
            mode=str(data["mode"]),
            synchronized=bool(data["synchronized"]),
            counters={str(key): int(value) for key, value in dict(data["counters"]).items()},
            written_at=float(data["written_at"]),
        )
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    current = time.time() if now is None else now
    if abs(current - snapshot.written_at) > STALE_AFTER:
        return None
    return snapshot
