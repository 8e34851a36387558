"""pyresponder-xdp.service in a systemd container: the kernel answers, the colours stand by."""

import json
import os
import socket
import subprocess
import time

import pytest

SCRAPE = (
    "import urllib.request; "
    "print(urllib.request.urlopen('http://127.0.0.1:9123/metrics', timeout=5).read().decode())"
)


@pytest.fixture(scope="module")
def address(container) -> str:
    shown = subprocess.run(
        ["docker", "inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
         container], capture_output=True, text=True, check=True,
    )
    return shown.stdout.strip()


def ask(address: str, first_byte: int = 0x23) -> bytes | None:
    request = bytes([first_byte]) + bytes(39) + os.urandom(8)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(1.0)
        sock.sendto(request, (address, 123))
        try:
            reply = sock.recv(1024)
        except TimeoutError:
            return None
    assert reply[24:32] == request[40:48]
    return reply


def counters(dexec) -> dict[str, int]:
    """The counters of a snapshot written after now."""
    start = time.time()
    for _ in range(50):
        result = dexec("cat", "/run/pyresponder-xdp/counters.json", check=False)
        if result.returncode == 0:
            data = json.loads(result.stdout)
            if data["written_at"] > start:
                return {str(k): int(v) for k, v in data["counters"].items()}
        time.sleep(0.1)
    raise TimeoutError("no fresh counters snapshot")


def wait_active(dexec, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while dexec("systemctl", "is-active", "pyresponder-xdp.service", check=False).stdout.strip() \
            != "active":
        assert time.monotonic() < deadline, dexec("journalctl", "-u", "pyresponder-xdp",
                                                  "--no-pager", check=False).stdout
        time.sleep(0.2)


def test_unit_runs_in_generic_mode_with_few_capabilities(dexec):
    wait_active(dexec)
    shown = dexec("systemctl", "show", "pyresponder-xdp.service", "-p", "User",
                  "-p", "CapabilityBoundingSet", "-p", "After").stdout
    assert "User=pyresponder" in shown
    caps = next(line for line in shown.splitlines() if line.startswith("CapabilityBoundingSet="))
    assert set(caps.split("=", 1)[1].split()) == {"cap_sys_admin", "cap_net_admin"}
    assert "pyresponder.socket" in shown
    log = dexec("journalctl", "-u", "pyresponder-xdp", "--no-pager", "-o", "cat").stdout
    assert "attached to eth0" in log and "in generic mode" in log


def test_plain_requests_are_answered_in_the_kernel(dexec, address):
    before = counters(dexec)["answered"]
    for _ in range(20):
        reply = ask(address)
        assert reply is not None
        assert reply[0] & 7 == 4 and reply[0] >> 6 == 0 and reply[1] == 10  # local stratum 10
    assert counters(dexec)["answered"] >= before + 20


def test_other_requests_reach_the_colours(dexec, address):
    before = counters(dexec)["passed_shape"]
    reply = ask(address, first_byte=0x21)  # mode 1: the socket path answers with mode 2
    assert reply is not None and reply[0] & 7 == 2
    assert counters(dexec)["passed_shape"] == before + 1


def test_metrics_show_both_paths(dexec, address):
    assert ask(address) is not None
    counters(dexec)
    text = dexec("python3", "-c", SCRAPE).stdout
    assert 'pyresponder_xdp_attached{interface="eth0",mode="generic"} 1.0' in text
    assert 'ntp_server_accepted_packets_total{listen_address="eth0",path="xdp"}' in text
    assert 'path="socket"' in text


def test_killed_unit_leaves_the_colours_answering_and_comes_back(dexec, address):
    pid = dexec("systemctl", "show", "-p", "MainPID", "--value",
                "pyresponder-xdp.service").stdout.strip()
    dexec("kill", "-9", pid)
    for _ in range(50):
        assert ask(address) is not None  # the program went with its link; the colours answer
    wait_active(dexec)
    new_pid = dexec("systemctl", "show", "-p", "MainPID", "--value",
                    "pyresponder-xdp.service").stdout.strip()
    assert new_pid not in (pid, "0")


@pytest.mark.timeout(1200)
def test_an_interface_refusing_xdp_fails_with_one_line_and_the_colours_serve(
    dexec, address, playbook
):
    result = playbook("-e", "ntp_frontend_xdp_interface=lo", "-e", "ntp_frontend_xdp_mode=native")
    assert result.returncode != 0, result.stdout[-3000:]
    assert "pyresponder-xdp.service failed: pyresponder xdp: interface lo refuses XDP" \
        in result.stdout, result.stdout[-3000:]
    state = dexec("systemctl", "is-active", "pyresponder-xdp.service", check=False).stdout
    assert state.strip() in ("failed", "inactive")
    for _ in range(10):
        assert ask(address) is not None  # the colours answer everything
    # Back to eth0: the unit changes again and runs.
    result = playbook()
    assert result.returncode == 0, result.stdout[-3000:]
    wait_active(dexec)


@pytest.mark.timeout(600)
def test_switching_off_removes_the_unit(dexec, address, playbook):
    result = playbook("-e", "ntp_frontend_xdp_interface=")
    assert result.returncode == 0, result.stdout[-3000:]
    assert dexec("test", "-e", "/etc/systemd/system/pyresponder-xdp.service",
                 check=False).returncode != 0
    state = dexec("systemctl", "is-active", "pyresponder-xdp.service", check=False).stdout
    assert state.strip() != "active"
    assert dexec("ip", "-d", "link", "show", "dev", "eth0").stdout.count("prog/xdp") == 0
    assert ask(address) is not None
