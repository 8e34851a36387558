"""Per-client rate limiting with memory that no flood can grow.

A fixed table of slots in shared memory, shared by all workers (the kernel spreads one client's
packets over the workers, so per-worker tables would multiply the limit). Each slot holds a client
key and a "theoretical arrival time" (the generic cell rate algorithm, a token bucket kept in one
number): a request is admitted while that time is at most ``burst`` intervals ahead of now, and
each admitted request pushes it one interval further.

A flood from spoofed addresses can only evict other clients' slots (which then start afresh, so
the limiter fails open), never allocate memory. Updates from two workers to one slot may race and
lose an update: the limit is approximate by design, never a crash.
"""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass
from typing import Final

_SLOT: Final = struct.Struct("=Qd")  # key, theoretical arrival time (seconds)
_MIX: Final = 0x9E37_79B9_7F4A_7C15  # Fibonacci hashing: spreads nearby addresses
_MASK64: Final = (1 << 64) - 1


@dataclass(frozen=True, slots=True)
class RateLimitPolicy:
    interval: float = 1.0  # sustained: one reply per interval per client
    burst: int = 16  # replies a client may get at once before the interval applies
    leak: int = 4  # answer 1 in ``leak`` limited requests normally anyway (0: never)
    kod: int = 8  # of the other limited requests, answer 1 in ``kod`` with KoD RATE (0: never)
    slots: int = 65536  # table size, rounded up to a power of two


# What to do with a request over the limit.
DROP: Final = 0
ANSWER: Final = 1
KISS_OF_DEATH: Final = 2


class RateLimiter:
    def __init__(self, policy: RateLimitPolicy) -> None:
        bits = max(1, (policy.slots - 1).bit_length())
        self.policy = policy
        self._shift = 64 - bits
        self._table = mmap.mmap(-1, (1 << bits) * _SLOT.size)
        self._window = (policy.burst - 1) * policy.interval
        self._reset_after = self._window + policy.interval
        self._limited = 0  # per process: requests refused by admit()
        self._refused = 0  # per process: of those, the ones not leaked

    @property
    def slots(self) -> int:
        return len(self._table) // _SLOT.size

    def admit(self, key: int, now: float) -> bool:
        """True when the client with ``key`` may get a reply at time ``now`` (seconds)."""
        at = (((key * _MIX) & _MASK64) >> self._shift) * _SLOT.size
        stored, arrival = _SLOT.unpack_from(self._table, at)
        ahead = arrival - now
        if stored != key or ahead < 0 or ahead > self._reset_after:
            # New or idle client, or the clock was stepped back: start a fresh bucket.
            arrival, ahead = now, 0.0
        if ahead > self._window:
            return False
        _SLOT.pack_into(self._table, at, key, arrival + self.policy.interval)
        return True

    def over_limit(self) -> int:
        """The fate of a request that ``admit`` refused: DROP, ANSWER (leak) or KISS_OF_DEATH."""
        self._limited += 1
        policy = self.policy
        if policy.leak and self._limited % policy.leak == 0:
            return ANSWER
        self._refused += 1
        if policy.kod and self._refused % policy.kod == 0:
            return KISS_OF_DEATH
        return DROP


def ipv6_key(high: int, low: int) -> int:
    """One 64-bit key for a 128-bit address (collisions only cost a shared bucket).

    IPv4 addresses are their own keys; this mix keeps IPv6 keys away from that small range.
    """
    return (high ^ ((low * _MIX) & _MASK64)) | (1 << 63)
