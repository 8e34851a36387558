"""The converged container: chrony on loopback only, PID 1 holding UDP 123, one colour serving."""

import json
from pathlib import Path

import yaml

GROUP_VARS = yaml.safe_load(
    (Path(__file__).resolve().parents[1] / "inventory/group_vars/ntp_servers.yml").read_text()
)


def test_chrony_serves_loopback_11123_only(host):
    lines = host.check_output("ss -Hlun").splitlines()
    chrony = [ln.split()[3] for ln in lines if ln.split()[3].endswith(":11123")]
    assert chrony == ["127.0.0.1:11123"]


def test_chrony_has_no_command_port(host):
    assert "cmdport 0" in host.file("/etc/chrony/chrony.conf").content_string.splitlines()
    assert host.check_output("ss -Hlun 'sport = :323'") == ""


def test_chronyd_runs_without_clock_control(host):
    procs = host.process.filter(comm="chronyd")
    assert procs
    assert all("-x" in p.args.split() for p in procs)


def test_chrony_conf_has_no_pool_ntp_org(host):
    conf = host.file("/etc/chrony/chrony.conf").content_string
    assert "pool.ntp.org" not in conf
    assert "local stratum 10" in conf


def test_socket_unit_holds_udp_123(host):
    assert host.service("pyresponder.socket").is_running
    assert host.service("pyresponder.socket").is_enabled
    lines = host.check_output("ss -Hlunp 'sport = :123'").splitlines()
    addrs = sorted(ln.split()[3] for ln in lines)
    assert addrs == ["0.0.0.0:123", "[::]:123"]
    assert all('("systemd",pid=1,' in ln for ln in lines), lines


def test_exactly_one_colour_with_expected_workers(host):
    active = host.file("/var/lib/pyresponder/active").content_string.strip()
    states = {c: host.service(f"pyresponder@{c}").is_running for c in ("blue", "green")}
    assert [c for c, up in states.items() if up] == [active]
    assert host.service(f"pyresponder@{active}").is_enabled
    main_pid = int(host.check_output(f"systemctl show -p MainPID --value pyresponder@{active}"))
    # Children: the workers (pyresponder-wN) and the metrics server (pyresponder-m).
    children = host.check_output(f"ps -o comm= --ppid {main_pid}").split()
    workers = [c for c in children if c.startswith("pyresponder-w")]
    assert len(workers) == GROUP_VARS["ntp_frontend_workers"], children
    assert children.count("pyresponder-m") == 1, children
    args = host.process.get(pid=main_pid).args
    assert f"--workers {GROUP_VARS['ntp_frontend_workers']}" in args
    # The role's default holdover reaches the daemon (bridges a chronyd restart).
    assert "--holdover 60" in args, args


def test_responder_is_unprivileged_and_sandboxed(host):
    active = host.file("/var/lib/pyresponder/active").content_string.strip()
    props = dict(
        ln.split("=", 1)
        for ln in host.check_output(
            f"systemctl show pyresponder@{active} -p User -p NoNewPrivileges -p ProtectSystem"
            " -p PrivateTmp -p CapabilityBoundingSet -p RestrictAddressFamilies"
        ).splitlines()
    )
    assert props["User"] == "pyresponder"
    assert props["NoNewPrivileges"] == "yes"
    assert props["ProtectSystem"] == "strict"
    assert props["PrivateTmp"] == "yes"
    assert props["CapabilityBoundingSet"] == ""
    main_pid = host.check_output(f"systemctl show -p MainPID --value pyresponder@{active}")
    status = host.file(f"/proc/{main_pid}/status").content_string.splitlines()
    cap_eff = next(ln for ln in status if ln.startswith("CapEff:"))
    assert int(cap_eff.split()[1], 16) == 0


def test_notrack_rules_loaded(host):
    assert host.service("pyresponder-notrack").is_running
    rules = host.check_output("nft list table inet pyresponder_notrack")
    assert "udp dport 123 notrack" in rules
    assert "udp sport 123 notrack" in rules


NTPLIB_QUERY = (
    "import json, sys; sys.path.insert(0, '/tmp/pyr-test'); import ntplib; "
    "r = ntplib.NTPClient().request('{addr}', version=4, port={port}, timeout=2); "
    "print(json.dumps(dict(mode=r.mode, leap=r.leap, stratum=r.stratum, offset=r.offset)))"
)


def _ntplib(dexec, addr: str, port: int) -> dict:
    out = dexec("python3", "-c", NTPLIB_QUERY.format(addr=addr, port=port)).stdout
    return json.loads(out)


def test_ntp_query_on_port_123_is_synchronized(dexec, tools_in_container):
    chrony = _ntplib(dexec, "127.0.0.1", 11123)
    for addr in ("127.0.0.1", "::1"):
        reply = _ntplib(dexec, addr, 123)
        assert reply["mode"] == 4
        assert reply["leap"] != 3
        assert reply["stratum"] == chrony["stratum"] == 10
        assert abs(reply["offset"]) < 0.01
