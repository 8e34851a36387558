"""What the XDP program's maps hold, as bytes: pure functions, no I/O and no clock reads.

The layouts mirror the structs in ``bpf/xdp_ntp.c`` (which pins their sizes with _Static_assert).
Every reply rule comes from the code the socket path uses: the answerable first bytes from
``wire.reply_mode``, the header and the moment the state stops being servable from
``syncstate.evaluate``. The kernel only adds the dispersion growth since the write and switches
to the unsynchronized header at the moment computed here.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from .. import request, syncstate, wire
from ..ratelimit import RateLimitPolicy
from ..syncstate import BackendSample, ServerState, SyncPolicy

CONTROL: Final = struct.Struct("=I2sH256sQQQII")  # struct pyr_control (port in network order)
SLOT: Final = struct.Struct("=24s24sQQQQQq")  # struct pyr_slot
COUNTERS: Final = struct.Struct("=10Q")  # struct pyr_counters
U64_MAX: Final = (1 << 64) - 1
NS_PER_S: Final = 1_000_000_000
SECONDS_PER_DAY: Final = 86_400

# Root dispersion growth in the kernel: short-format units (2**-16 s) = ns * mul >> 48.
DISPERSION_SHIFT: Final = 48
DISPERSION_MUL: Final = round(
    syncstate.DISPERSION_RATE * 65536 / NS_PER_S * (1 << DISPERSION_SHIFT)
)

# Requests arriving this close to a leap second (either side) go to the socket path.
LEAP_PASS_SECONDS: Final = 5
# How far ahead the control plane looks for the moment the state stops being servable; it
# rewrites the state every poll, so this only has to outlast a stalled control process.
VALID_HORIZON_S: Final = 86_400.0
VALID_RESOLUTION_S: Final = 0.001

# Index of each counter in struct pyr_counters (enum pyr_counter).
COUNTER_NAMES: Final = (
    "received",
    "answered",
    "answered_unsynchronized",
    "passed_shape",
    "passed_ip",
    "passed_no_state",
    "passed_leap",
    "reserved",
    "rate_limited",
    "kod_sent",
)


def answer_table() -> bytes:
    """One byte per possible first byte of a 48-byte request: 1 where the kernel may answer.

    The kernel answers only mode 3 (with mode 4); everything else ``request.reply_mode`` would
    answer (mode 1, NTPv1 mode 0, which depends on the source port) stays with the socket path.
    """
    return bytes(
        1
        if first & 7 == wire.MODE_CLIENT
        and request.reply_mode(first, wire.PACKET_LEN, wire.NTP_PORT + 1) == wire.MODE_SERVER
        else 0
        for first in range(256)
    )


def control_value(active: int, port: int, rate_limit: RateLimitPolicy | None = None) -> bytes:
    """The control entry: which slot is current (0 = none yet, 1 or 2), what to answer, and the
    per-client rate limit with the socket path's parameters (see ratelimit.RateLimiter)."""
    interval = window = reset = leak = kod = 0
    if rate_limit is not None:
        interval = max(int(rate_limit.interval * NS_PER_S), 1)
        window = (rate_limit.burst - 1) * interval
        reset = window + interval
        leak, kod = rate_limit.leak, rate_limit.kod
    return CONTROL.pack(
        active, port.to_bytes(2, "big"), 0, answer_table(), interval, window, reset, leak, kod
    )


def valid_until(
    sample: BackendSample, now: float, policy: SyncPolicy,
    evaluate: Callable[[BackendSample | None, float, SyncPolicy], ServerState] = syncstate.evaluate,
) -> float:
    """The first monotonic time after ``now`` at which ``evaluate`` stops serving ``sample``.

    Found by bisection over the same function the socket path calls, so timeout, holdover and
    every other rule of syncstate apply to the kernel without a second copy of them.
    """
    low, high = now, now + VALID_HORIZON_S
    if evaluate(sample, high, policy).synchronized:
        return high
    while high - low > VALID_RESOLUTION_S:
        middle = (low + high) / 2
        if evaluate(sample, middle, policy).synchronized:
            low = middle
        else:
            high = middle
    return low


def leap_window(leap: int, now_unix_ns: int) -> tuple[int, int]:
    """UTC ns bounds around the next midnight when a leap second is announced, else (0, 0)."""
    if leap not in (wire.LEAP_ADD_SECOND, wire.LEAP_DELETE_SECOND):
        return 0, 0
    day = SECONDS_PER_DAY * NS_PER_S
    midnight = (now_unix_ns // day + 1) * day
    # Just after midnight the previous day's flag may still be set: keep passing then too.
    if now_unix_ns - (midnight - day) < LEAP_PASS_SECONDS * NS_PER_S:
        midnight -= day
    margin = LEAP_PASS_SECONDS * NS_PER_S
    return midnight - margin, midnight + margin


@dataclass(frozen=True, slots=True)
class SlotInput:
    """Everything one state write needs, read by the caller at one moment."""

    state: ServerState  # syncstate.evaluate(sample, now, policy)
    valid_until_mono_ns: int  # from valid_until(); ignored when the state is unsynchronized
    written_mono_ns: int
    now_unix_ns: int
    tai_offset_ns: int  # CLOCK_TAI - CLOCK_REALTIME, whole seconds


def slot_value(data: SlotInput) -> bytes:
    state = data.state
    if state.synchronized:
        until, mul = data.valid_until_mono_ns, DISPERSION_MUL
        leap_from, leap_until = leap_window(state.leap, data.now_unix_ns)
    else:
        # Serve the unsynchronized header as it is, without growth, until the next write.
        until, mul = U64_MAX, 0
        leap_from, leap_until = 0, 0
    return SLOT.pack(
        state.header,
        syncstate.UNSYNCHRONIZED_HEADER,
        data.written_mono_ns,
        max(until, 1),
        mul,
        leap_from,
        leap_until,
        data.tai_offset_ns,
    )


def sum_counters(per_cpu: list[bytes]) -> dict[str, int]:
    totals = [0] * len(COUNTER_NAMES)
    for value in per_cpu:
        for index, count in enumerate(COUNTERS.unpack(value)):
            totals[index] += count
    return dict(zip(COUNTER_NAMES, totals, strict=True))
