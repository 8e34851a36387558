"""The rules that decide what a reply says about synchronization. Pure logic, no I/O.

A reply either carries the backend's state (with root dispersion grown for the time since the
backend was last heard) or says "unsynchronized": LI=3, stratum 0, refid 0, as chronyd does.
Never LI=0 with stratum 0.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from . import wire

# RFC 5905's PHI: how fast the error bound of an undisciplined clock grows, in s/s.
DISPERSION_RATE: Final = 15e-6
UNSYNCHRONIZED_PRECISION: Final = -20
MAX_STRATUM: Final = 15


@dataclass(frozen=True, slots=True)
class BackendSample:
    """What one valid reply of the backend said, and when it arrived (monotonic seconds)."""

    leap: int
    stratum: int
    precision: int
    refid: bytes
    reference_ts: int
    root_delay: float
    root_dispersion: float
    offset: float  # backend time minus local time, seconds
    delay: float  # round trip to the backend, seconds
    received_at: float  # time.monotonic() when the reply arrived


@dataclass(frozen=True, slots=True)
class SyncPolicy:
    backend_timeout: float = 10.0
    max_offset: float = 0.1


@dataclass(frozen=True, slots=True)
class ServerState:
    synchronized: bool
    reason: str  # why not synchronized, or a short description of the source when it is
    header: bytes  # the 24 leading reply bytes (see wire.server_header)
    stratum: int
    leap: int


UNSYNCHRONIZED_HEADER: Final = wire.server_header(
    wire.LEAP_UNSYNCHRONIZED, 0, UNSYNCHRONIZED_PRECISION, 0.0, 0.0, bytes(4), 0
)


def unsynchronized(reason: str) -> ServerState:
    return ServerState(False, reason, UNSYNCHRONIZED_HEADER, 0, wire.LEAP_UNSYNCHRONIZED)


def evaluate(sample: BackendSample | None, now: float, policy: SyncPolicy) -> ServerState:
    """The state to serve at monotonic time ``now`` given the latest valid backend sample."""
    if sample is None:
        return unsynchronized("no reply from the backend yet")
    age = now - sample.received_at
    if age > policy.backend_timeout:
        return unsynchronized(f"backend silent for {age:.1f} s")
    if sample.leap == wire.LEAP_UNSYNCHRONIZED:
        return unsynchronized("backend is not synchronized (leap 3)")
    if not 1 <= sample.stratum <= MAX_STRATUM:
        return unsynchronized(f"backend stratum {sample.stratum} is not servable")
    if abs(sample.offset) > policy.max_offset:
        return unsynchronized(
            f"local clock is {sample.offset:+.6f} s from the backend (limit {policy.max_offset} s)"
        )
    dispersion = sample.root_dispersion + max(age, 0.0) * DISPERSION_RATE
    header = wire.server_header(
        sample.leap,
        sample.stratum,
        sample.precision,
        sample.root_delay,
        dispersion,
        sample.refid,
        sample.reference_ts,
    )
    refid = wire.refid_text(sample.refid, sample.stratum)
    return ServerState(
        True, f"stratum {sample.stratum} refid {refid}", header, sample.stratum, sample.leap
    )
