"""The rollout takes the truth from systemd, not from /var/lib/pyresponder.

Every file there corrupted or deleted, then a release that cannot synchronize, under a client
stream: nothing lost, late or LI=3, the serving colour keeps serving, and exactly one colour is
active and enabled. Both colours found running: the run ends with exactly one, losing nothing."""

import time

import pytest
from conftest import COLOURS, colours, enabled, flat, serving, wait_synchronized

from tests.support.molecule import start_stream, stop_stream

RATE = 500
MAX_SECONDS = 240  # hard bound on each stream


def _start_stream(dexec) -> None:
    start_stream(dexec, RATE, MAX_SECONDS, extra=("--late", "1.0"))
    time.sleep(1)


def _assert_clean(stream: dict, play_seconds: float) -> None:
    assert stream["seconds"] > play_seconds, stream
    assert stream["lost"] == 0, stream
    assert stream["late"] == 0, stream
    assert stream["unsynchronized"] == 0, stream
    assert stream["bad"] == 0, stream


@pytest.mark.timeout(600)
def test_lying_state_and_a_release_that_cannot_sync(container, dexec, playbook, tools_in_container):
    assert wait_synchronized(container)
    before = serving(container)
    assert len(before) == 1, colours(container)
    other = next(c for c in COLOURS if c != before[0])
    # The cache names the wrong colour, then is garbage; every file there is affected.
    dexec("sh", "-c", f"echo {other} > /var/lib/pyresponder/active")
    dexec("sh", "-c", 'for f in /var/lib/pyresponder/*; do head -c 64 /dev/urandom > "$f"; done')
    dexec("sh", "-c", "echo stale > /var/lib/pyresponder/extra")
    unit_before = dexec("cat", "/etc/systemd/system/pyresponder@.service").stdout
    _start_stream(dexec)
    t0 = time.monotonic()
    # Its backend never answers (and its unit file changes too): with --require-sync it exits
    # after 2 s without answering a client.
    r = playbook(
        "site.yml",
        "-e",
        "ntp_frontend_backend=127.0.0.1:9",
        "-e",
        "ntp_frontend_ready_timeout=2",
        "-e",
        "ntp_frontend_watchdog_sec=29",
    )
    play_seconds = time.monotonic() - t0
    time.sleep(1)
    stream = stop_stream(dexec, wait=15.0)
    print(f"cannot-sync rollout: playbook {play_seconds:.1f} s, stream {stream}")
    out = flat(r.stdout + r.stderr)
    assert r.returncode != 0, out[-3000:]
    assert "ROLLOUT FAILED" in out and f"Colour {before[0]} keeps serving" in out, out[-3000:]
    _assert_clean(stream, play_seconds)
    assert serving(container) == before
    assert enabled(container) == before
    assert dexec("cat", "/var/lib/pyresponder/active").stdout.strip() == before[0]
    # What was there is back, unit file included.
    assert dexec("cat", "/etc/systemd/system/pyresponder@.service").stdout == unit_before

    # Every file deleted: the next normal run has nothing to roll, and repairs the cache.
    dexec("sh", "-c", "rm -f /var/lib/pyresponder/*")
    r = playbook("site.yml")
    assert r.returncode == 0, r.stdout[-3000:]
    assert "rollout of" not in flat(r.stdout), r.stdout[-3000:]
    assert serving(container) == before and enabled(container) == before
    assert dexec("cat", "/var/lib/pyresponder/active").stdout.strip() == before[0]


@pytest.mark.timeout(600)
def test_both_colours_running_end_with_one(container, dexec, playbook, tools_in_container):
    assert wait_synchronized(container)
    before = serving(container)
    assert len(before) == 1
    other = next(c for c in COLOURS if c != before[0])
    # A half-failed earlier run or a person left the other colour running (and enabled) too,
    # with the serving colour's settings on its own health port.
    ports = {"blue": "11231", "green": "11232"}
    dexec(
        "sh",
        "-c",
        f"sed 's/:{ports[before[0]]}/:{ports[other]}/g' /etc/pyresponder/{before[0]}.env"
        f" > /etc/pyresponder/{other}.env",
    )
    dexec(
        "ln",
        "-sfn",
        dexec("readlink", f"/opt/pyresponder/colours/{before[0]}").stdout.strip(),
        f"/opt/pyresponder/colours/{other}",
    )
    dexec("systemctl", "enable", "--now", f"pyresponder@{other}.service")
    assert sorted(serving(container)) == sorted(COLOURS)
    _start_stream(dexec)
    t0 = time.monotonic()
    # A unit-file-only change at the same time: it must roll out like any other change.
    r = playbook("site.yml", "-e", "ntp_frontend_watchdog_sec=31")
    play_seconds = time.monotonic() - t0
    time.sleep(1)
    stream = stop_stream(dexec, wait=15.0)
    print(f"both colours + unit change: playbook {play_seconds:.1f} s, stream {stream}")
    assert r.returncode == 0, r.stdout[-3000:]
    assert "both colours are serving" in flat(r.stdout), r.stdout[-3000:]
    _assert_clean(stream, play_seconds)
    now = serving(container)
    assert len(now) == 1 and enabled(container) == now, colours(container)
    unit = dexec("cat", "/etc/systemd/system/pyresponder@.service").stdout
    assert "WatchdogSec=31" in unit
    state = colours(container)[now[0]]
    assert state["unit_digest"] and f"PYRESPONDER_UNIT={state['unit_digest']}" in unit

    # Back to the defaults: a unit-only change again, one rollout, then nothing to do.
    r = playbook("site.yml")
    assert r.returncode == 0, r.stdout[-3000:]
    assert "release, settings or unit file changed" in flat(r.stdout), r.stdout[-3000:]
    again = playbook("site.yml")
    assert again.returncode == 0 and "changed=0" in again.stdout, again.stdout[-3000:]
    assert len(serving(container)) == 1 and enabled(container) == serving(container)
