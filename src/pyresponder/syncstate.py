"""The rules that decide what a reply says about synchronization. Pure logic, no I/O.

A reply either carries the backend's state (with root dispersion grown for the time since the
sample it comes from) or says "unsynchronized": LI=3, stratum 0, refid 0, as chronyd does.
Never LI=0 with stratum 0.

Holdover: when the backend stops being servable (chronyd restarting answers LI=3 for a few
seconds, or does not answer at all), the last servable sample keeps being served for at most
``SyncPolicy.holdover`` seconds counted from that sample, its root dispersion growing at 15 ppm/s,
and only while the latest offset measurement keeps the local clock within ``max_offset`` of the
backend. Not while the held sample announces a leap second (the workers clear an announced leap
at the leap, which an old sample would undo).
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
class BackendView:
    """What the backend monitor knows: the latest reply and the last one that could be served."""

    latest: BackendSample | None = None  # the latest valid reply, synchronized or not
    last_synchronized: BackendSample | None = None  # the latest servable one (for holdover)


NO_BACKEND: Final = BackendView()


@dataclass(frozen=True, slots=True)
class SyncPolicy:
    backend_timeout: float = 10.0
    max_offset: float = 0.1
    holdover: float = 60.0  # seconds from the last synchronized sample; 0 = off


@dataclass(frozen=True, slots=True)
class ServerState:
    synchronized: bool
    reason: str  # why not synchronized, or a short description of the source when it is
    header: bytes  # the 24 leading reply bytes (see wire.server_header)
    stratum: int
    leap: int
    holdover: bool = False  # serving the last synchronized sample while the backend is not


UNSYNCHRONIZED_HEADER: Final = wire.server_header(
    wire.LEAP_UNSYNCHRONIZED, 0, UNSYNCHRONIZED_PRECISION, 0.0, 0.0, bytes(4), 0
)


def unsynchronized(reason: str) -> ServerState:
    return ServerState(False, reason, UNSYNCHRONIZED_HEADER, 0, wire.LEAP_UNSYNCHRONIZED)


def problem(sample: BackendSample, now: float, policy: SyncPolicy) -> str | None:
    """Why ``sample`` cannot be served at ``now``; None when it can."""
    age = now - sample.received_at
    if age > policy.backend_timeout:
        return f"backend silent for {age:.1f} s"
    if sample.leap == wire.LEAP_UNSYNCHRONIZED:
        return "backend is not synchronized (leap 3)"
    if not 1 <= sample.stratum <= MAX_STRATUM:
        return f"backend stratum {sample.stratum} is not servable"
    return _offset_problem(sample.offset, policy)


def _offset_problem(offset: float, policy: SyncPolicy) -> str | None:
    if abs(offset) > policy.max_offset:
        return f"local clock is {offset:+.6f} s from the backend (limit {policy.max_offset} s)"
    return None


def remember(view: BackendView, sample: BackendSample, policy: SyncPolicy) -> BackendView:
    """The view after a new valid reply: it is the latest, and the anchor if it is servable."""
    servable = problem(sample, sample.received_at, policy) is None
    return BackendView(sample, sample if servable else view.last_synchronized)


def root_dispersion(sample: BackendSample, now: float, offset: float | None = None) -> float:
    """The error bound we serve: the backend's, plus what the loopback measurement adds.

    As chrony does for a source: half the round trip (the offset's uncertainty) plus the local
    clock's measured distance from the backend (``offset``, default the sample's own), plus
    15 ppm of the time since the sample.
    """
    measured = abs(sample.offset if offset is None else offset)
    age = max(now - sample.received_at, 0.0)
    return sample.root_dispersion + sample.delay / 2 + measured + age * DISPERSION_RATE


def evaluate(
    backend: BackendView | BackendSample | None, now: float, policy: SyncPolicy
) -> ServerState:
    """The state to serve at monotonic time ``now`` given what is known of the backend.

    A bare sample is a view without history (no holdover to fall back on).
    """
    view = backend if isinstance(backend, BackendView) else BackendView(backend, None)
    latest = view.latest
    if latest is None:
        return unsynchronized("no reply from the backend yet")
    trouble = problem(latest, now, policy)
    if trouble is None:
        return _serve(latest, now, latest.offset, "", holdover=False)
    return _hold_over(latest, view.last_synchronized, trouble, now, policy)


def _hold_over(latest: BackendSample, anchor: BackendSample | None, trouble: str, now: float,
               policy: SyncPolicy) -> ServerState:
    """Serve ``anchor`` while the backend has ``trouble``, if holdover allows it."""
    if policy.holdover <= 0 or anchor is None:
        return unsynchronized(trouble)
    if anchor.leap != wire.LEAP_NONE:
        # The workers clear an announced leap at the leap; an old sample held over would bring
        # it back. Leap announcements last a day every few years: no holdover then.
        return unsynchronized(f"{trouble}; no holdover while a leap second is announced")
    held = now - anchor.received_at
    if held > policy.holdover:
        return unsynchronized(f"{trouble}; holdover of {policy.holdover:g} s is over")
    # The latest offset measurement counts even from an unsynchronized reply; when the backend
    # is silent it is the last one there is.
    far = _offset_problem(latest.offset, policy)
    if far is not None:
        return unsynchronized(far)
    offset = max(abs(anchor.offset), abs(latest.offset))
    left = policy.holdover - held
    return _serve(anchor, now, offset, f"holdover ({trouble}), {left:.0f} s left: ",
                  holdover=True)


def _serve(sample: BackendSample, now: float, offset: float, prefix: str,
           holdover: bool) -> ServerState:
    header = wire.server_header(
        sample.leap,
        sample.stratum,
        sample.precision,
        sample.root_delay,
        root_dispersion(sample, now, offset),
        sample.refid,
        sample.reference_ts,
    )
    refid = wire.refid_text(sample.refid, sample.stratum)
    reason = f"{prefix}stratum {sample.stratum} refid {refid}"
    return ServerState(True, reason, header, sample.stratum, sample.leap, holdover)
