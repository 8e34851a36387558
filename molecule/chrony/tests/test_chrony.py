"""chronyd changes under a client stream, with a real upstream chain: no LI=3 reply at clients.

The backend chronyd (127.0.0.1:11123) syncs from a second chronyd (127.0.0.1:11124, prepare.yml).
A restart is bridged by chrony's own means: the measurement history is dumped at exit into
/run/chrony (kept across `systemctl restart`) and reloaded at start (`chronyd -r`), so the new
chronyd is synchronized within milliseconds. An upstream change is `chronyc reload sources`: no
restart at all. The tests run in file order on a freshly converged container (molecule test):
each role run starts from the state the previous test left.
"""

import json
import time

import pytest

from tests.support.molecule import start_stream, stop_stream

RATE = 1000  # requests per second to the responder (port 123)
CHRONY_RATE = 50  # requests per second straight to the backend chronyd (its own view)
MAX_SECONDS = 300  # hard bound on every stream (playbook runs take 30-80 s on a busy machine)


def _chronyd_pid(dexec) -> str:
    return dexec("cat", "/run/chrony/chronyd.pid").stdout.strip()


def _wait_chain_synchronized(dexec, timeout: float = 60) -> str:
    """Until the backend has selected the upstream and has samples worth dumping."""
    deadline = time.monotonic() + timeout
    out = ""
    while time.monotonic() < deadline:
        out = dexec("chronyc", "-n", "sources", check=False).stdout
        stats = dexec("chronyc", "-c", "sourcestats", check=False).stdout.split(",")
        if "^* 127.0.0.1" in out and len(stats) > 2 and int(stats[1] or 0) >= 4:
            return out
        time.sleep(1)
    raise AssertionError(f"backend not synchronized to the upstream: {out}")


def _journal_since(dexec, unit: str, since: str) -> str:
    return dexec("journalctl", "-u", unit, "--since", since, "--no-pager", "-o", "cat").stdout


def test_chain_serves_stratum_9_through_the_responder(dexec, tools_in_container):
    sources = _wait_chain_synchronized(dexec)
    assert "^* 127.0.0.1" in sources
    tracking = dexec("chronyc", "tracking").stdout
    assert "Stratum         : 9" in tracking and "Leap status     : Normal" in tracking, tracking
    # Any installed release's client will do; it asks port 123, whichever colour serves.
    r = dexec("/opt/pyresponder/colours/blue/bin/pyresponder", "probe", "127.0.0.1:123", "--json")
    reply = json.loads(r.stdout)
    assert reply["stratum"] == 9 and reply["leap"] == 0, reply


def test_upstreams_live_in_a_sources_file_and_chronyd_restarts_with_its_dump(host):
    conf = host.file("/etc/chrony/chrony.conf").content_string
    assert "sourcedir /etc/chrony/sources.d" in conf
    assert "dumpdir /run/chrony" in conf
    assert "\nserver " not in conf  # upstreams only in the sources file
    sources = host.file("/etc/chrony/sources.d/pyresponder.sources").content_string
    assert "server 127.0.0.1 port 11124 iburst minpoll 1 maxpoll 3" in sources
    opts = host.file("/etc/default/chrony").content_string
    assert " -r" in opts and " -x" in opts


def test_leap_second_data_found(host, dexec):
    """leapsectz right/UTC where the zone exists (Debian 12), else leapseclist (Debian 13)."""
    conf = host.file("/etc/chrony/chrony.conf").content_string
    log = dexec("journalctl", "-u", "chrony", "-b", "--no-pager", "-o", "cat").stdout
    assert "failed leap second check" not in log
    if host.file("/usr/share/zoneinfo/right/UTC").exists:
        assert "leapsectz right/UTC" in conf
        assert "Using right/UTC timezone to obtain leap second data" in log
    else:
        assert "leapseclist /usr/share/zoneinfo/leap-seconds.list" in conf
        assert "Using leap second list /usr/share/zoneinfo/leap-seconds.list" in log


def _under_streams(dexec, action) -> tuple[dict, dict, float]:
    """Run action() while a stream goes to the responder and a slow one straight to chronyd."""
    start_stream(dexec, RATE, MAX_SECONDS, name="front")
    start_stream(dexec, CHRONY_RATE, MAX_SECONDS, name="chronyd", port=11123)
    time.sleep(2)  # steady state before the change
    t0 = time.monotonic()
    action()
    took = time.monotonic() - t0
    time.sleep(5)  # several backend polls of the responder after the change
    front, backend = stop_stream(dexec, "front"), stop_stream(dexec, "chronyd")
    # The streams outlasted the change (else the test proved nothing).
    assert front["seconds"] > took and backend["seconds"] > took, (took, front, backend)
    return front, backend, took


@pytest.mark.timeout(300)
def test_systemctl_restart_chrony_gives_no_li3(dexec, tools_in_container):
    _wait_chain_synchronized(dexec)
    before = _chronyd_pid(dexec)
    since = dexec("date", "+%Y-%m-%d %H:%M:%S").stdout.strip()
    time.sleep(1)
    front, backend, took = _under_streams(
        dexec, lambda: dexec("systemctl", "restart", "chrony")
    )
    after = _chronyd_pid(dexec)
    log = _journal_since(dexec, "chrony", since)
    print(f"restart took {took:.2f} s; responder {front}; chronyd itself {backend}")
    assert after != before, "chronyd was not restarted"
    assert "Loaded dump file for 127.0.0.1" in log, log
    # chrony's own means: the restarted chronyd never answered unsynchronized.
    assert backend["unsynchronized"] == 0, backend
    # What clients of the responder see.
    assert front["sent"] >= RATE * 5
    assert front["unsynchronized"] == 0, front
    assert front["lost"] == 0, front
    assert front["bad"] == 0, front


def _chrony_run_under_streams(dexec, playbook, extra: str):
    """site.yml --tags chrony with extra vars, under both streams: (result, front, backend)."""
    results = []
    front, backend, took = _under_streams(
        dexec, lambda: results.append(playbook("site.yml", "--tags", "chrony", "-e", extra))
    )
    print(f"site.yml --tags chrony took {took:.1f} s; responder {front}; chronyd itself {backend}")
    return results[0], front, backend


@pytest.mark.timeout(600)
def test_upstream_change_is_a_reload_not_a_restart(dexec, playbook, tools_in_container):
    _wait_chain_synchronized(dexec)
    before = _chronyd_pid(dexec)
    extra = json.dumps(
        {
            "chrony_backend_servers": [
                {"host": "127.0.0.1", "port": 11124, "minpoll": 1, "maxpoll": 2, "prefer": True}
            ]
        }
    )
    r, front, backend = _chrony_run_under_streams(dexec, playbook, extra)
    assert r.returncode == 0, r.stdout[-3000:]
    assert "RUNNING HANDLER [chrony_backend : Reload chronyd's sources]" in r.stdout
    assert "RUNNING HANDLER [chrony_backend : Restart chronyd]" not in r.stdout
    assert _chronyd_pid(dexec) == before, "an upstream change restarted chronyd"
    sources = dexec("cat", "/etc/chrony/sources.d/pyresponder.sources").stdout
    assert "server 127.0.0.1 port 11124 iburst minpoll 1 maxpoll 2 prefer" in sources
    # The changed source is back in chronyd (chrony 4.3 can drop it on a single reload).
    assert "127.0.0.1" in dexec("chronyc", "-n", "sources").stdout
    assert backend["unsynchronized"] == 0, backend
    assert front["unsynchronized"] == 0, front
    assert front["lost"] == 0, front
    _wait_chain_synchronized(dexec)


@pytest.mark.timeout(600)
def test_role_restart_of_chrony_gives_no_li3(dexec, playbook, tools_in_container):
    """A chrony.conf change through the role: the `restart chrony` handler, under a stream."""
    _wait_chain_synchronized(dexec)
    before = _chronyd_pid(dexec)
    # A new line every run, so the file changes also when verify runs again.
    extra = json.dumps({"chrony_backend_extra_config": [f"# molecule: change {time.time()}"]})
    r, front, backend = _chrony_run_under_streams(dexec, playbook, extra)
    assert r.returncode == 0, r.stdout[-3000:]
    assert "RUNNING HANDLER [chrony_backend : Restart chronyd]" in r.stdout
    assert _chronyd_pid(dexec) != before, "the handler did not restart chronyd"
    assert backend["unsynchronized"] == 0, backend
    assert front["unsynchronized"] == 0, front
    assert front["lost"] == 0, front


@pytest.mark.timeout(600)
def test_bad_upstream_option_fails_before_anything_changes(dexec, playbook):
    """Also with a chrony.conf that differs from what this run renders (the previous test added
    a line): a bad source must not let the chrony.conf change and its restart through."""
    before = _chronyd_pid(dexec)
    sources = dexec("cat", "/etc/chrony/sources.d/pyresponder.sources").stdout
    conf = dexec("cat", "/etc/chrony/chrony.conf").stdout
    extra = '{"chrony_backend_servers": [{"host": "127.0.0.1", "options": "bogus"}]}'
    r = playbook("site.yml", "--tags", "chrony", "-e", extra)
    assert r.returncode != 0
    assert "rejected by `chronyd -p`" in r.stdout, r.stdout[-3000:]
    assert dexec("cat", "/etc/chrony/sources.d/pyresponder.sources").stdout == sources
    assert dexec("cat", "/etc/chrony/chrony.conf").stdout == conf
    assert "RUNNING HANDLER [chrony_backend : Restart chronyd]" not in r.stdout
    assert _chronyd_pid(dexec) == before
