"""Memory shared between the supervisor and its forked workers.

One anonymous shared mapping, created before the workers are forked, holds:
- what the backend monitor knows of the backend (a ``BackendView``: the latest reply and the last
  synchronized one), written only by the supervisor and read by every worker without a lock;
- the poller's and the supervisor's own statistics;
- one slot of packet counters per worker and listening socket, each written only by its worker.

The backend view is double-buffered: the writer fills the slot readers are not directed to, with
its sequence number and a CRC-32 of the record, and only then stores the sequence number in the
index word that points readers at it. A reader copies the slot the index names and accepts the
copy only if the slot's own sequence number matches and the checksum is right. Python has no
memory fences, so on weakly ordered CPUs (arm64) a reader may see the new index before the new
slot, or half of either: the checksum turns every such torn read into a retry, never into a wrong
value. A writer killed mid-publish leaves the index on the previous complete slot. Readers retry a
bounded number of times and then return the last good view they read, so no reader ever spins.
"""

from __future__ import annotations

import mmap
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from .syncstate import NO_BACKEND, BackendSample, BackendView

COUNTER_NAMES: Final = (
    "received",
    "answered",
    "dropped_length",
    "dropped_version",
    "dropped_mode",
    "send_errors",
    "rate_limited",
    "kod_sent",
)
RECEIVED: Final = 0
ANSWERED: Final = 1
SEND_ERRORS: Final = 5
RATE_LIMITED: Final = 6
KOD_SENT: Final = 7
# wire.DROP_* reasons are -1, -2, -3: counter index = 1 - reason.
DROP_BASE: Final = 1

READ_ATTEMPTS: Final = 200  # torn reads in a row before a reader settles for its last good view

_SEQ: Final = struct.Struct("=Q")
_SAMPLE_FORMAT: Final = "BBBb4sQddddd"  # present flag, then the BackendSample fields
_SAMPLE_FIELDS: Final = 11
_RECORD: Final = struct.Struct(f"=Q{_SAMPLE_FORMAT}{_SAMPLE_FORMAT}")  # sequence, latest, anchor
_CRC: Final = struct.Struct("=I")
_SLOT_SIZE: Final = 128
_SLOTS_AT: Final = 64  # two slots; the index word at 0 says which one is complete
_POLLER: Final = struct.Struct("=QQ")
_POLLER_AT: Final = _SLOTS_AT + 2 * _SLOT_SIZE
_SUPERVISOR: Final = struct.Struct("=QQ")  # workers running, worker restarts
_SUPERVISOR_AT: Final = _POLLER_AT + 16
_COUNTERS_AT: Final = _SUPERVISOR_AT + 48
assert _RECORD.size + _CRC.size <= _SLOT_SIZE
_COUNTERS: Final = struct.Struct(f"={len(COUNTER_NAMES)}Q")


@dataclass(frozen=True, slots=True)
class PollerStats:
    polls: int
    failures: int


@dataclass(frozen=True, slots=True)
class SupervisorStats:
    workers_running: int
    worker_restarts: int


class SharedState:
    def __init__(self, workers: int, listeners: int = 1) -> None:
        self.workers = workers
        self.listeners = listeners
        self._map = mmap.mmap(-1, _COUNTERS_AT + workers * listeners * _COUNTERS.size)
        self._seq = 0
        self._last_good: BackendView = NO_BACKEND  # per process: what this reader last verified
        # Tests only: called between the two halves of a slot write, to kill a writer there.
        self.publish_hook: Callable[[], None] | None = None

    # --- backend view (one writer: the supervisor) ---

    def publish(self, view: BackendView | BackendSample) -> None:
        """Make ``view`` the one readers get (a bare sample: a view without holdover anchor)."""
        if isinstance(view, BackendSample):
            view = BackendView(view, None)
        seq = self._seq + 1
        record = bytearray(_SLOT_SIZE)
        _RECORD.pack_into(record, 0, seq, *_sample_fields(view.latest),
                          *_sample_fields(view.last_synchronized))
        _CRC.pack_into(record, _RECORD.size, zlib.crc32(record[: _RECORD.size]))
        at = _SLOTS_AT + (seq & 1) * _SLOT_SIZE  # the slot the index does not point to
        half = _SLOT_SIZE // 2
        self._map[at : at + half] = record[:half]
        if self.publish_hook is not None:
            self.publish_hook()
        self._map[at + half : at + _SLOT_SIZE] = record[half:]
        _SEQ.pack_into(self._map, 0, seq)  # last: readers are directed to a complete slot
        self._seq = seq

    def sequence(self) -> int:
        seq: int = _SEQ.unpack_from(self._map, 0)[0]
        return seq

    def latest(self) -> BackendView:
        """The backend view last published; bounded: never waits for a writer."""
        for _ in range(READ_ATTEMPTS):
            seq = self.sequence()
            if seq == 0:
                return NO_BACKEND
            at = _SLOTS_AT + (seq & 1) * _SLOT_SIZE
            record = self._map[at : at + _SLOT_SIZE]  # a private copy, checked below
            (crc,) = _CRC.unpack_from(record, _RECORD.size)
            if zlib.crc32(record[: _RECORD.size]) != crc:
                continue  # torn: written meanwhile, or seen out of order
            fields = _RECORD.unpack_from(record)
            if fields[0] != seq:
                continue  # an older or newer publish than the index named
            latest = _sample(fields[1 : 1 + _SAMPLE_FIELDS])
            anchor = _sample(fields[1 + _SAMPLE_FIELDS :])
            self._last_good = BackendView(latest, anchor)
            break
        return self._last_good

    def record_poll(self, ok: bool) -> None:
        polls, failures = _POLLER.unpack_from(self._map, _POLLER_AT)
        _POLLER.pack_into(self._map, _POLLER_AT, polls + 1, failures + (not ok))

    def poller_stats(self) -> PollerStats:
        return PollerStats(*_POLLER.unpack_from(self._map, _POLLER_AT))

    def record_workers(self, running: int, restarts: int) -> None:
        _SUPERVISOR.pack_into(self._map, _SUPERVISOR_AT, running, restarts)

    def supervisor_stats(self) -> SupervisorStats:
        return SupervisorStats(*_SUPERVISOR.unpack_from(self._map, _SUPERVISOR_AT))

    # --- packet counters (one writer per slot: that worker) ---

    def _slot(self, worker: int, listener: int) -> int:
        return _COUNTERS_AT + (worker * self.listeners + listener) * _COUNTERS.size

    def store_counters(self, worker: int, counters: list[int], listener: int = 0) -> None:
        _COUNTERS.pack_into(self._map, self._slot(worker, listener), *counters)

    def load_counters(self, worker: int, listener: int = 0) -> list[int]:
        return list(_COUNTERS.unpack_from(self._map, self._slot(worker, listener)))

    def listener_totals(self, listener: int) -> dict[str, int]:
        """Counters of one listening socket, summed over the workers."""
        sums = [0] * len(COUNTER_NAMES)
        for worker in range(self.workers):
            for index, value in enumerate(self.load_counters(worker, listener)):
                sums[index] += value
        return dict(zip(COUNTER_NAMES, sums, strict=True))

    def totals(self) -> dict[str, int]:
        sums = dict.fromkeys(COUNTER_NAMES, 0)
        for listener in range(self.listeners):
            for name, value in self.listener_totals(listener).items():
                sums[name] += value
        return sums


def _sample_fields(sample: BackendSample | None) -> tuple[object, ...]:
    if sample is None:
        return (0, 0, 0, 0, bytes(4), 0, 0.0, 0.0, 0.0, 0.0, 0.0)
    return (
        1, sample.leap, sample.stratum, sample.precision, sample.refid, sample.reference_ts,
        sample.root_delay, sample.root_dispersion, sample.offset, sample.delay,
        sample.received_at,
    )


def _sample(fields: tuple[object, ...]) -> BackendSample | None:
    present, *values = fields
    return BackendSample(*values) if present else None  # type: ignore[arg-type]
