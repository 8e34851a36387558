"""Memory shared between the supervisor and its forked workers.

One anonymous shared mapping, created before the workers are forked, holds:
- the latest valid backend sample, written only by the supervisor's poller and read by every
  worker under a sequence lock (readers never write, so a worker killed mid-read cannot block
  anybody, which a mutex could);
- the poller's and the supervisor's own statistics;
- one slot of packet counters per worker and listening socket, each written only by its worker.
"""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass
from typing import Final

from .syncstate import BackendSample

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

_SEQ: Final = struct.Struct("=Q")
_SAMPLE: Final = struct.Struct("=BBBb4sQddddd")
_POLLER: Final = struct.Struct("=QQ")
_SAMPLE_AT: Final = 8
_POLLER_AT: Final = 64
_SUPERVISOR: Final = struct.Struct("=QQ")  # workers running, worker restarts
_SUPERVISOR_AT: Final = 80
_COUNTERS_AT: Final = 128
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

    # --- backend sample (one writer: the supervisor) ---

    def publish(self, sample: BackendSample) -> None:
        self._seq += 1  # odd: readers retry
        _SEQ.pack_into(self._map, 0, self._seq)
        _SAMPLE.pack_into(
            self._map,
            _SAMPLE_AT,
            1,
            sample.leap,
            sample.stratum,
            sample.precision,
            sample.refid,
            sample.reference_ts,
            sample.root_delay,
            sample.root_dispersion,
            sample.offset,
            sample.delay,
            sample.received_at,
        )
        self._seq += 1
        _SEQ.pack_into(self._map, 0, self._seq)

    def sequence(self) -> int:
        seq: int = _SEQ.unpack_from(self._map, 0)[0]
        return seq

    def latest(self) -> BackendSample | None:
        while True:
            before = self.sequence()
            if before & 1:
                continue
            fields = _SAMPLE.unpack_from(self._map, _SAMPLE_AT)
            if self.sequence() == before:
                break
        present, leap, stratum, precision, refid, ref_ts, delay, disp, offset, rtt, at = fields
        if not present:
            return None
        return BackendSample(leap, stratum, precision, refid, ref_ts, delay, disp, offset, rtt, at)

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
