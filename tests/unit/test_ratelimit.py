"""The rate limiter's rules, with explicit times (pure logic)."""

from __future__ import annotations

import tracemalloc

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pyresponder.ratelimit import (
    ADMIT,
    DROP,
    KISS_OF_DEATH,
    LEAK,
    MONITOR_CHECK_INTERVAL,
    RateLimiter,
    RateLimitPolicy,
    admits_pool_monitor,
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
    limiter = RateLimiter(RateLimitPolicy(interval=20.0, burst=3, leak=4, kod=3))
    assert [limiter.check(5, 0.0) for _ in range(3)] == [ADMIT] * 3
    fates = [limiter.check(5, 0.0) for _ in range(16)]
    assert fates.count(LEAK) == 4
    assert fates[3] == fates[7] == LEAK
    assert fates.count(KISS_OF_DEATH) == 4  # every 3rd of the 12 not leaked
    assert fates.count(DROP) == 8


def test_no_leak_and_no_kod_means_drop() -> None:
    limiter = RateLimiter(RateLimitPolicy(interval=20.0, burst=3, leak=0, kod=0))
    for _ in range(3):
        limiter.check(5, 0.0)
    assert {limiter.check(5, 0.0) for _ in range(50)} == {DROP}


def test_kiss_of_death_depends_only_on_the_clients_own_requests() -> None:
    """A client's fate over the limit follows its own count, not the traffic of strangers."""
    alone = RateLimiter(RateLimitPolicy(interval=20.0, burst=3, leak=3, kod=2))
    crowded = RateLimiter(RateLimitPolicy(interval=20.0, burst=3, leak=3, kod=2))
    mine = [alone.check(42, 1.0) for _ in range(20)]
    theirs = []
    for n in range(20):
        for stranger in range(1000 + n * 7, 1000 + n * 7 + 5):  # limited strangers in between
            for _ in range(3):
                crowded.check(stranger, 1.0)
        theirs.append(crowded.check(42, 1.0))
    assert theirs == mine


def test_memory_is_a_fixed_table_whatever_the_number_of_clients() -> None:
    limiter = RateLimiter(RateLimitPolicy(slots=1000, burst=3, interval=20))
    assert limiter.slots == 1024
    assert limiter.table_bytes == 1024 * 24
    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot()
        for key in range(50_000):  # a spoofed flood: every request from another address
            limiter.check(key, 1.0)
        grown = sum(stat.size_diff for stat in
                    tracemalloc.take_snapshot().compare_to(before, "filename"))
    finally:
        tracemalloc.stop()
    assert grown < 64 * 1024  # a per-client dict would be megabytes here
    assert limiter.admit(10**9, 1.0)  # a newcomer still gets its first reply


def test_ipv6_is_limited_per_64() -> None:
    limiter = RateLimiter(RateLimitPolicy(interval=10.0, burst=3))
    prefix = 0x2001_0DB8_0000_0001
    # One host rotating through its /64: one bucket.
    assert [limiter.admit(ipv6_key(prefix, host), 0.0) for host in range(1, 6)] == (
        [True] * 3 + [False] * 2
    )
    assert limiter.admit(ipv6_key(prefix + 1, 1), 0.0)  # the neighbouring /64 is another client
    assert ipv6_key(prefix, 1) == ipv6_key(prefix, 2**64 - 1)
    assert ipv6_key(prefix, 1) != ipv6_key(prefix + 1, 1)


def test_ipv6_keys_do_not_collide_with_ipv4() -> None:
    assert ipv6_key(0, 1) >= 1 << 32
    assert ipv6_key(1, 2) != ipv6_key(2, 1)


def test_ipv4_mapped_addresses_keep_their_ipv4_key() -> None:
    """On a dual-stack socket IPv4 clients are ::ffff:a.b.c.d: all in one /64, but each its
    own client."""
    assert ipv6_key(0, 0xFFFF_7F00_0001) == 0x7F00_0001
    assert ipv6_key(0, 0xFFFF_7F00_0002) == 0x7F00_0002


@pytest.mark.parametrize(("interval", "burst"), [(2.0, 1), (4.0, 2), (20.0, 3), (1.0, 16)])
def test_settings_that_admit_the_pool_monitor_are_accepted(interval: float, burst: int) -> None:
    RateLimitPolicy(interval=interval, burst=burst)


@pytest.mark.parametrize(("interval", "burst"), [(2.5, 1), (4.5, 2), (21.0, 16), (60.0, 3)])
def test_settings_that_refuse_the_pool_monitor_are_refused_in_one_line(
    interval: float, burst: int
) -> None:
    with pytest.raises(ValueError, match="pool monitor") as error:
        RateLimitPolicy(interval=interval, burst=burst)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("fields", [
    {"interval": 0.0}, {"interval": float("nan")}, {"interval": float("inf")},
    {"interval": -1.0}, {"burst": 0}, {"leak": -1}, {"kod": -1}, {"slots": 0},
    {"slots": 10**12},
])
def test_nonsense_settings_are_refused(fields: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        RateLimitPolicy(**fields)  # type: ignore[arg-type]


@st.composite
def accepted_policies(draw: st.DrawFn) -> RateLimitPolicy:
    burst = draw(st.integers(1, 20))
    interval = draw(st.floats(0.01, MONITOR_CHECK_INTERVAL / 3))
    if not admits_pool_monitor(interval, burst):
        interval = draw(st.floats(0.01, 2.0))  # with any burst, 2 s is admitted
    return RateLimitPolicy(
        interval=interval, burst=burst, leak=draw(st.integers(0, 8)), kod=draw(st.integers(0, 8)),
        slots=draw(st.sampled_from([1, 2, 16, 1024])),
    )


MONITOR = 0xC633_6401  # 198.51.100.1


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    policy=accepted_policies(),
    checks=st.lists(st.floats(MONITOR_CHECK_INTERVAL, 1800.0), min_size=1, max_size=6),
    others=st.lists(
        st.tuples(st.integers(0, 2**64 - 1), st.floats(0.0, 1.0), st.integers(1, 50)),
        max_size=40,
    ),
    monitor_v6=st.booleans(),
)
def test_pool_monitor_is_never_refused_under_any_accepted_settings(
    policy: RateLimitPolicy,
    checks: list[float],
    others: list[tuple[int, float, int]],
    monitor_v6: bool,
) -> None:
    """Three requests 2 s apart, every check, whatever other clients (colliding in the table,
    flooding, from other /64s) send in between."""
    limiter = RateLimiter(policy)
    monitor = ipv6_key(0x2001_0DB8_0000_0042, 7) if monitor_v6 else MONITOR
    start = 1000.0
    for gap in checks:
        for request_at in (start, start + 2.0, start + 4.0):
            for key, offset, count in others:  # strangers' requests just before each of ours
                if key != monitor:
                    for _ in range(count):
                        limiter.check(key, request_at - offset)
            assert limiter.check(monitor, request_at) == ADMIT
        start += gap
