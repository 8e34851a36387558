"""Per-client rate limiting with memory that no flood can grow.

A fixed table of slots in shared memory, shared by all workers (the kernel spreads one client's
packets over the workers, so per-worker tables would multiply the limit). Each slot holds a client
key, a "theoretical arrival time" (the generic cell rate algorithm, a token bucket kept in one
number) and how many of that client's requests were over the limit. A request is admitted while
that time is at most ``burst`` intervals ahead of now, and each admitted request pushes it one
interval further. What happens to a request over the limit (answered anyway, kiss-o'-death, or
dropped) depends only on that client's own count, never on what other clients send.

A client is an IPv4 address or an IPv6 /64 (one subscriber's prefix: a /128 key would let a
single host rotate through 2**64 addresses to evade the limit and evict everybody else).

A flood from spoofed addresses can only evict other clients' slots (which then start afresh, so
the limiter fails open), never allocate memory. Updates from two workers to one slot may race and
lose an update: the limit is approximate by design, never a crash.
"""

from __future__ import annotations

import math
import mmap
import struct
from dataclasses import dataclass
from typing import Final

_SLOT: Final = struct.Struct("=QdI4x")  # key, theoretical arrival time (s), over-limit count
_COUNT: Final = struct.Struct("=I")
_COUNT_AT: Final = struct.calcsize("=Qd")
_MIX: Final = 0x9E37_79B9_7F4A_7C15  # Fibonacci hashing: spreads nearby addresses
_MASK64: Final = (1 << 64) - 1
_MAPPED_IPV4: Final = 0xFFFF  # ::ffff:a.b.c.d, an IPv4 client on a dual-stack socket

# The pool monitor's pattern (see docs/operations.md): a check is three requests 2 s apart, and
# one monitor address checks a server a few times an hour; assume at most once a minute.
MONITOR_REQUESTS: Final = 3
MONITOR_SPACING: Final = 2.0
MONITOR_CHECK_INTERVAL: Final = 60.0
MAX_SLOTS: Final = 1 << 24  # 384 MiB of table: more is a typo


@dataclass(frozen=True, slots=True)
class RateLimitPolicy:
    """Raises ValueError (one line naming the setting) for settings that would refuse or kiss
    the pool monitor, or that make no sense."""

    interval: float = 1.0  # sustained: one reply per interval per client
    burst: int = 16  # replies a client may get at once before the interval applies
    leak: int = 4  # answer 1 in ``leak`` of a client's limited requests anyway (0: never)
    kod: int = 8  # of the client's other limited requests, 1 in ``kod`` gets KoD RATE (0: never)
    slots: int = 65536  # table size, rounded up to a power of two

    def __post_init__(self) -> None:
        if not (math.isfinite(self.interval) and self.interval > 0):
            raise ValueError(f"rate limit interval must be a positive number, not {self.interval}")
        if self.burst < 1:
            raise ValueError(f"rate limit burst must be at least 1, not {self.burst}")
        if self.leak < 0 or self.kod < 0:
            raise ValueError("rate limit leak and kod must not be negative")
        if not 1 <= self.slots <= MAX_SLOTS:
            raise ValueError(f"rate limit slots must be between 1 and {MAX_SLOTS}")
        if not admits_pool_monitor(self.interval, self.burst):
            raise ValueError(
                f"rate limit interval {self.interval:g} s with burst {self.burst} would refuse "
                f"the pool monitor ({MONITOR_REQUESTS} requests {MONITOR_SPACING:g} s apart "
                f"every {MONITOR_CHECK_INTERVAL:g} s): use a shorter interval or a larger burst"
            )


def admits_pool_monitor(interval: float, burst: int) -> bool:
    """Whether every request of the pool monitor's pattern is admitted, whatever happened before.

    With the generic cell rate algorithm, a check that starts with an empty bucket is admitted
    when its last request is at most ``burst - 1`` intervals ahead: (3 - burst) * interval <= 4 s.
    The bucket is empty again before the next check when the three intervals it added have run
    out: 3 * interval <= 60 s. Other clients cannot change this: they only ever evict the
    monitor's slot, which starts it afresh.
    """
    span = (MONITOR_REQUESTS - 1) * MONITOR_SPACING
    return (
        (MONITOR_REQUESTS - burst) * interval <= span
        and MONITOR_REQUESTS * interval <= MONITOR_CHECK_INTERVAL
    )


# What to do with a request, from RateLimiter.check.
ADMIT: Final = 0  # within the limit: answer
LEAK: Final = 1  # over the limit, answered anyway (so a limited client still syncs, slowly)
KISS_OF_DEATH: Final = 2  # over the limit: answer with KoD RATE
DROP: Final = 3  # over the limit: no answer


class RateLimiter:
    def __init__(self, policy: RateLimitPolicy) -> None:
        bits = max(1, (policy.slots - 1).bit_length())
        self.policy = policy
        self._shift = 64 - bits
        self._table = mmap.mmap(-1, (1 << bits) * _SLOT.size)
        self._window = (policy.burst - 1) * policy.interval
        self._reset_after = self._window + policy.interval

    @property
    def slots(self) -> int:
        return len(self._table) // _SLOT.size

    @property
    def table_bytes(self) -> int:
        """The memory the table uses: fixed when the limiter is made."""
        return len(self._table)

    def check(self, key: int, now: float) -> int:
        """ADMIT, LEAK, KISS_OF_DEATH or DROP for a request of client ``key`` at ``now`` (s)."""
        at = (((key * _MIX) & _MASK64) >> self._shift) * _SLOT.size
        stored, arrival, limited = _SLOT.unpack_from(self._table, at)
        ahead = arrival - now
        if stored != key or ahead < 0 or ahead > self._reset_after:
            # New or idle client, or the clock was stepped back: start a fresh bucket.
            arrival, ahead, limited = now, 0.0, 0
        if ahead <= self._window:
            _SLOT.pack_into(self._table, at, key, arrival + self.policy.interval, limited)
            return ADMIT
        limited = (limited + 1) & 0xFFFF_FFFF
        # Only the count: rewriting the arrival time read above could undo another worker's
        # admission made meanwhile, and let a flood through.
        _COUNT.pack_into(self._table, at + _COUNT_AT, limited)
        policy = self.policy
        if policy.leak and limited % policy.leak == 0:
            return LEAK
        if policy.kod:
            refused = limited - (limited // policy.leak if policy.leak else 0)
            if refused % policy.kod == 0:
                return KISS_OF_DEATH
        return DROP

    def admit(self, key: int, now: float) -> bool:
        """True when the request is within the limit (a LEAK or worse counts as over it)."""
        return self.check(key, now) == ADMIT


def ipv6_key(high: int, low: int = 0) -> int:
    """The key of an IPv6 client: its /64 (``high``, the first 64 bits), mixed and kept away
    from the IPv4 range (an IPv4 address is its own key). An IPv4-mapped address (a dual-stack
    socket's IPv4 client) gets the IPv4 key, so IPv4 clients do not all share ::ffff:0:0/64."""
    if high == 0 and low >> 32 == _MAPPED_IPV4:
        return low & 0xFFFF_FFFF
    return ((high * _MIX) & _MASK64) | (1 << 63)
