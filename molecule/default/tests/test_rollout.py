"""Blue/green rollouts under load: zero loss across two swaps; a failed release changes nothing."""

import json
import time

import pytest

from tests.support.molecule import start_stream, stop_stream

RATE = 2000  # requests per second from the client inside the container
MAX_SECONDS = 150  # hard bound on the stream (RATE x MAX_SECONDS requests at most)
FAILED_RATE = 500  # requests per second while a failed release is tried


def _running(dexec, colour: str) -> bool:
    r = dexec("systemctl", "is-active", f"pyresponder@{colour}", check=False)
    return r.stdout.strip() == "active"


def _active(dexec) -> str:
    """The one serving colour, from systemd (the cache file must agree with it)."""
    active = [c for c in ("blue", "green") if _running(dexec, c)]
    assert len(active) == 1, active
    assert dexec("cat", "/var/lib/pyresponder/active").stdout.strip() == active[0]
    return active[0]


def _probe_123(dexec) -> dict:
    probe = "/opt/pyresponder/colours/blue/bin/pyresponder"
    r = dexec(probe, "probe", "127.0.0.1:123", "--json", check=False)
    return json.loads(r.stdout)


def _start_stream(dexec, rate: int) -> None:
    """The client stream inside the container (bounded by MAX_SECONDS), settled."""
    start_stream(dexec, rate, MAX_SECONDS)
    time.sleep(1)  # steady state before the change


@pytest.mark.timeout(400)
def test_two_swaps_under_load_lose_nothing(dexec, playbook, tools_in_container):
    first = _active(dexec)
    _start_stream(dexec, RATE)
    colours = [first]
    t0 = time.monotonic()
    for _ in range(2):
        r = playbook("playbooks/swap.yml")
        assert r.returncode == 0, r.stdout[-3000:]
        colours.append(_active(dexec))
    swaps_seconds = time.monotonic() - t0
    time.sleep(1)  # steady state after the second swap
    summary = stop_stream(dexec)
    print(f"colours {' -> '.join(colours)}, swaps took {swaps_seconds:.1f} s, stream {summary}")
    other = "green" if first == "blue" else "blue"
    assert colours == [first, other, first]
    # The stream outlasted both swaps (else the test proved nothing).
    assert summary["seconds"] > swaps_seconds
    assert summary["sent"] >= RATE * swaps_seconds * 0.8
    assert summary["lost"] == 0, summary
    assert summary["bad"] == 0, summary
    assert summary["unsynchronized"] == 0, summary
    assert not _running(dexec, other)


@pytest.mark.parametrize(
    "case, extra",
    [
        # Its backend never answers: with --require-sync it exits after 2 s without answering.
        (
            "unsynchronized",
            ["-e", "ntp_frontend_backend=127.0.0.1:9", "-e", "ntp_frontend_ready_timeout=2"],
        ),
        # Cannot start at all: its extra --listen is chronyd's port, already taken.
        ("cannot start", ["-e", '{"ntp_frontend_extra_args": ["--listen", "127.0.0.1:11123"]}']),
    ],
)
@pytest.mark.timeout(300)
def test_failed_release_keeps_old_colour(dexec, playbook, tools_in_container, case, extra):
    before = _active(dexec)
    # Clients on port 123 while the bad release is tried: the new colour (--require-sync) must
    # never answer, so every reply comes from the old colour, synchronized, and none is lost.
    _start_stream(dexec, FAILED_RATE)
    t0 = time.monotonic()
    r = playbook("site.yml", *extra)
    play_seconds = time.monotonic() - t0
    time.sleep(1)
    stream = stop_stream(dexec)
    print(f"{case}: playbook {play_seconds:.1f} s, stream {stream}")
    assert stream["seconds"] > play_seconds
    assert stream["unsynchronized"] == 0, stream
    assert stream["lost"] == 0, stream
    assert stream["bad"] == 0, stream
    out = r.stdout + r.stderr
    assert r.returncode != 0, out[-3000:]
    assert "ROLLOUT FAILED" in out, out[-3000:]
    new = "green" if before == "blue" else "blue"
    assert f"Colour {before} keeps serving" in out
    assert _active(dexec) == before
    assert _running(dexec, before)
    assert not _running(dexec, new)
    reply = _probe_123(dexec)
    assert reply["synchronized"] and reply["mode"] == 4, reply


@pytest.mark.timeout(300)
def test_broken_chrony_setting_leaves_chronyd_untouched(dexec, playbook):
    pid = dexec("pidof", "-s", "chronyd").stdout.strip()
    before = dexec("cat", "/etc/chrony/chrony.conf").stdout
    r = playbook("site.yml", "-e", '{"chrony_backend_extra_config": ["no_such_directive 1"]}')
    out = r.stdout + r.stderr
    assert r.returncode != 0
    assert "rejected by `chronyd -p`" in out, out[-3000:]
    assert "Invalid directive" in out
    assert dexec("cat", "/etc/chrony/chrony.conf").stdout == before
    assert dexec("pidof", "-s", "chronyd").stdout.strip() == pid
