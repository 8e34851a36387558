"""The XDP map values as bytes: layouts, the answer table, the state derived from syncstate."""

from __future__ import annotations

import re
import sys
import time
from pathlib import Path

import pytest

from pyresponder import cli, syncstate, wire
from pyresponder.syncstate import BackendSample, SyncPolicy
from pyresponder.xdp import counters, maps
from pyresponder.xdp.command import xdp_config
from pyresponder.xdp.daemon import kernel_version

SOURCE = Path(__file__).resolve().parents[2] / "src" / "pyresponder" / "bpf" / "xdp_ntp.c"
DAY_NS = 86_400 * 1_000_000_000


def sample(received_at: float = 100.0, leap: int = 0, stratum: int = 2) -> BackendSample:
    return BackendSample(
        leap=leap, stratum=stratum, precision=-24, refid=b"\xc0\x00\x02\x01",
        reference_ts=1 << 63, root_delay=0.01, root_dispersion=0.002, offset=0.0,
        delay=0.0001, received_at=received_at,
    )


def test_struct_sizes_match_the_c_program() -> None:
    text = SOURCE.read_text()
    asserted = dict(re.findall(r"sizeof\(struct (\w+)\) == (\d+)", text))
    assert int(asserted["pyr_control"]) == maps.CONTROL.size
    assert int(asserted["pyr_slot"]) == maps.SLOT.size
    assert "C_COUNT = 10" in text and len(maps.COUNTER_NAMES) == 10 == maps.COUNTERS.size // 8


def test_answer_table_is_mode_3_versions_1_to_4_only() -> None:
    table = maps.answer_table()
    answered = {first for first in range(256) if table[first]}
    expected = {(leap << 6) | (version << 3) | 3 for leap in range(4) for version in (1, 2, 3, 4)}
    assert answered == expected


def test_control_value_carries_the_port_in_network_order() -> None:
    value = maps.control_value(2, 123)
    assert len(value) == maps.CONTROL.size
    assert value[:4] == (2).to_bytes(4, sys.byteorder)
    assert value[4:6] == b"\x00\x7b"


def test_valid_until_is_where_evaluate_turns_unsynchronized() -> None:
    policy = SyncPolicy(backend_timeout=10.0)
    until = maps.valid_until(sample(received_at=100.0), 101.0, policy)
    assert syncstate.evaluate(sample(), until, policy).synchronized
    assert not syncstate.evaluate(sample(), until + 2 * maps.VALID_RESOLUTION_S, policy)\
        .synchronized
    assert until == pytest.approx(110.0, abs=2 * maps.VALID_RESOLUTION_S)


def test_synchronized_slot_carries_evaluates_header() -> None:
    policy = SyncPolicy()
    state = syncstate.evaluate(sample(), 101.0, policy)
    value = maps.slot_value(maps.SlotInput(state, 110 * 10**9, 101 * 10**9, 10**18, 37 * 10**9))
    header, unsync, written, until, mul, leap_from, leap_until, tai = maps.SLOT.unpack(value)
    assert header == state.header
    assert unsync == syncstate.UNSYNCHRONIZED_HEADER
    assert (written, until, tai) == (101 * 10**9, 110 * 10**9, 37 * 10**9)
    assert (leap_from, leap_until) == (0, 0)
    # Dispersion growth: 15 us per second, in 2**-16 s units per ns, as the kernel computes it.
    grown_per_second = (10**9 * mul) >> maps.DISPERSION_SHIFT
    assert grown_per_second == int(syncstate.DISPERSION_RATE * 65536)


def test_unsynchronized_slot_never_grows_and_never_expires() -> None:
    state = syncstate.evaluate(sample(leap=3), 101.0, SyncPolicy())
    assert not state.synchronized
    value = maps.slot_value(maps.SlotInput(state, 0, 101 * 10**9, 10**18, 0))
    header, _, _, until, mul, _, _, _ = maps.SLOT.unpack(value)
    assert header == syncstate.UNSYNCHRONIZED_HEADER
    assert (until, mul) == (maps.U64_MAX, 0)


@pytest.mark.parametrize("leap", [wire.LEAP_ADD_SECOND, wire.LEAP_DELETE_SECOND])
def test_leap_window_surrounds_the_next_midnight(leap: int) -> None:
    now = 20_000 * DAY_NS + 3_600 * 10**9  # 01:00 UTC
    start, end = maps.leap_window(leap, now)
    midnight = 20_001 * DAY_NS
    assert (start, end) == (midnight - 5 * 10**9, midnight + 5 * 10**9)
    # Just after midnight the flag may still be set: the window is the one that just passed.
    assert maps.leap_window(leap, midnight + 10**9) == (start, end)


def test_no_leap_window_without_a_leap_flag() -> None:
    assert maps.leap_window(wire.LEAP_NONE, time.time_ns()) == (0, 0)


def test_counters_sum_over_cpus() -> None:
    count = len(maps.COUNTER_NAMES)
    per_cpu = [maps.COUNTERS.pack(*range(count)), maps.COUNTERS.pack(*([1] * count))]
    totals = maps.sum_counters(per_cpu)
    assert totals["received"] == 1 and totals["answered"] == 2 and totals["passed_leap"] == 7


def test_counters_snapshot_round_trip_and_staleness(tmp_path: Path) -> None:
    path = tmp_path / "counters.json"
    snapshot = counters.Snapshot("eth0", "native", True, {"answered": 5}, time.time())
    counters.write(path, snapshot)
    assert counters.read(path) == snapshot
    assert counters.read(path, now=snapshot.written_at + counters.STALE_AFTER + 1) is None
    path.write_text("{not json")
    assert counters.read(path) is None
    assert counters.read(tmp_path / "missing.json") is None


def test_kernel_version_parsing() -> None:
    assert kernel_version("6.1.0-18-amd64") == (6, 1)
    assert kernel_version("5.10.0") < (6, 1)
    assert kernel_version("weird") == (0, 0)


def test_xdp_takes_serves_rate_limit_options() -> None:
    args = cli.build_parser().parse_args(
        ["xdp", "--interface", "lo", "--rate-limit", "--rate-limit-burst", "4",
         "--rate-limit-interval", "0.5", "--rate-limit-leak", "0", "--rate-limit-kod", "2"]
    )
    config = xdp_config(args)
    assert config.rate_limit is not None
    assert (config.rate_limit.burst, config.rate_limit.interval) == (4, 0.5)
    value = maps.control_value(1, 123, config.rate_limit)
    *_, interval, window, reset, leak, kod = maps.CONTROL.unpack(value)
    assert (interval, window, reset, leak, kod) == (
        500_000_000, 1_500_000_000, 2_000_000_000, 0, 2
    )
    assert xdp_config(cli.build_parser().parse_args(["xdp", "--interface", "lo"])).rate_limit \
        is None


def test_xdp_names_a_missing_interface(capsys: pytest.CaptureFixture[str]) -> None:
    code = cli.main(["xdp", "--interface", "pyr11-none", "--counters-file", "-"])
    assert code == 1
    error = capsys.readouterr().err.strip()
    assert error == "pyresponder xdp: no network interface named 'pyr11-none'"
