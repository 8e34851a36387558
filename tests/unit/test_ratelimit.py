"""The rate limiter's rules, with a fake clock (pure logic)."""

from __future__ import annotations

import pytest

from pyresponder.ratelimit import (
    ANSWER,
    DROP,
    KISS_OF_DEATH,
    RateLimiter,
    RateLimitPolicy,
    ipv6_key,
)


def test_burst_then_one_per_interval() -> None:
    limiter = RateLimiter(RateLimitPolicy(interval=2.0, burst=4))
    assert [limiter.admit(1, 100.0) for _ in range(6)] == [True] * 4 + [False] * 2
    assert not limiter.admit(1, 101.9)
    assert limiter.admit(1, 102.0)
    assert not limiter.admit(1, 102.5)
    assert limiter.admit(1, 104.0)


def test_idle_client_gets_a_full_burst_again() -> None:
    limiter = RateLimiter(RateLimitPolicy(interval=1.0, burst=3))
    assert [limiter.admit(7, 10.0) for _ in range(4)] == [True, True, True, False]
    assert [limiter.admit(7, 20.0) for _ in range(4)] == [True, True, True, False]


def test_clients_are_independent() -> None:
    limiter = RateLimiter(RateLimitPolicy(interval=1.0, burst=2))
    assert [limiter.admit(0x7F000001, 5.0) for _ in range(3)] == [True, True, False]
    assert limiter.admit(0x7F000002, 5.0)


def test_clock_stepped_back_does_not_lock_a_client_out() -> None:
    limiter = RateLimiter(RateLimitPolicy(interval=1.0, burst=2))
    limiter.admit(3, 1000.0)
    limiter.admit(3, 1000.0)
    assert limiter.admit(3, 500.0)


def test_over_limit_leaks_and_kisses_in_turn() -> None:
    limiter = RateLimiter(RateLimitPolicy(leak=4, kod=3))
    fates = [limiter.over_limit() for _ in range(16)]
    assert fates.count(ANSWER) == 4
    assert fates[3] == fates[7] == ANSWER
    assert fates.count(KISS_OF_DEATH) == 4  # every 3rd of the 12 not leaked
    assert fates.count(DROP) == 8


def test_no_leak_and_no_kod_means_drop() -> None:
    limiter = RateLimiter(RateLimitPolicy(leak=0, kod=0))
    assert {limiter.over_limit() for _ in range(50)} == {DROP}


@pytest.mark.parametrize("slots", [1, 1000, 65536])
def test_memory_is_fixed_whatever_the_number_of_clients(slots: int) -> None:
    limiter = RateLimiter(RateLimitPolicy(slots=slots, burst=1, interval=60))
    size = limiter.slots
    assert size >= slots
    for key in range(50_000):  # a spoofed flood: every request from another address
        limiter.admit(key, 1.0)
    assert limiter.slots == size
    assert limiter.admit(10**9, 1.0)  # a newcomer still gets its first reply


def test_ipv6_keys_do_not_collide_with_ipv4() -> None:
    assert ipv6_key(0, 0x7F000001) >= 1 << 32
    assert ipv6_key(1, 2) != ipv6_key(2, 1)
