"""The XDP fast path against a real kernel hook, in network namespaces this test creates.

Server namespace: a veth end with ``pyresponder xdp`` attached (generic and native mode), a
chronyd backend on its loopback, and a plain socket on the NTP port standing in for the socket
path (it records what reaches user space). Client namespace: the other veth end, with real
clients (ntplib, chronyd -Q) and crafted datagrams. Runs as root only; skips with a reason
elsewhere. Every namespace and XDP program is removed in teardown, also when a test fails.
"""

from __future__ import annotations

import contextlib
import os
import re
import select
import signal
import socket
import struct
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import ntplib
import pytest

from pyresponder import wire
from tests.support.chronyd import find_chronyd
from tests.support.netns import Side, VethPair, entered, run, snmp_counter
from tests.support.responder import ntp_request
from tests.support.xdp import XdpBed, skip_reason

SKIP = skip_reason()
pytestmark = [pytest.mark.integration, pytest.mark.skipif(SKIP is not None, reason=SKIP or "")]

NTP_PORT = 123
OTHER_PORT = 124
IP_OPTIONS = 4
IPV6_HOPOPTS = 54


class Recorder:
    """Sockets in the server namespace on ports 123 and 124 (both families): what they read
    is what the XDP program passed up the stack."""

    def __init__(self, side: Side) -> None:
        self.sockets: list[socket.socket] = []
        with entered(side.ns):
            for port in (NTP_PORT, OTHER_PORT):
                sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
                sock.bind(("::", port))
                sock.setblocking(False)
                self.sockets.append(sock)

    def drain(self) -> None:
        while self.read(0.0) is not None:
            pass

    def read(self, timeout: float) -> bytes | None:
        readable, _, _ = select.select(self.sockets, [], [], timeout)
        for sock in readable:
            try:
                return sock.recv(65536)
            except BlockingIOError:
                continue
        return None

    def close(self) -> None:
        for sock in self.sockets:
            sock.close()


Bed = XdpBed | VethPair  # anything with a server and a client side


def client_socket(bed: Bed, family: int) -> socket.socket:
    with entered(bed.client.ns):
        sock = socket.socket(family, socket.SOCK_DGRAM)
    sock.settimeout(1.0)
    return sock


def server_address(bed: Bed, family: int) -> str:
    return bed.server.ipv4 if family == socket.AF_INET else bed.server.ipv6


def ask(bed: Bed, family: int, packet: bytes, timeout: float = 1.0) -> bytes | None:
    with client_socket(bed, family) as sock:
        sock.settimeout(timeout)
        sock.sendto(packet, (server_address(bed, family), NTP_PORT))
        try:
            return sock.recv(4096)
        except TimeoutError:
            return None


@pytest.fixture(scope="module", params=["generic", "native"])
def bed(request: pytest.FixtureRequest) -> Iterator[XdpBed]:
    mode = str(request.param)
    with XdpBed(mode, tag=mode[0]) as bed:
        bed.wait_log("kernel replies synchronized")
        yield bed


@pytest.fixture
def recorder(bed: XdpBed) -> Iterator[Recorder]:
    recorder = Recorder(bed.server)
    try:
        yield recorder
    finally:
        recorder.close()


FAMILIES = pytest.mark.parametrize("family", [socket.AF_INET, socket.AF_INET6],
                                   ids=["ipv4", "ipv6"])


@FAMILIES
@pytest.mark.parametrize("version", [1, 2, 3, 4])
def test_kernel_answers_plain_requests(
    bed: XdpBed, recorder: Recorder, family: int, version: int
) -> None:
    request = bytearray(ntp_request(version=version))
    request[2] = 7  # poll, echoed
    before = bed.counters()["answered"]
    sent_ns = time.time_ns()
    reply = ask(bed, family, bytes(request))
    received_ns = time.time_ns()
    assert reply is not None, "no reply from the XDP path"
    packet = wire.parse_packet(reply)
    assert len(reply) == wire.PACKET_LEN
    assert (packet.leap, packet.version, packet.mode, packet.poll) == (0, version, 4, 7)
    assert packet.stratum == 9
    assert packet.refid == bytes([127, 127, 1, 1])
    assert packet.origin_raw == bytes(request[40:48])
    offset, _delay = wire.offset_and_delay(packet, sent_ns, received_ns)
    assert abs(offset) < 0.01
    assert packet.receive_ts <= packet.transmit_ts
    assert recorder.read(0.2) is None, "the request also reached user space"
    assert bed.counters()["answered"] > before


@FAMILIES
def test_ntplib_gets_correct_time(bed: XdpBed, recorder: Recorder, family: int) -> None:
    client = ntplib.NTPClient()
    with entered(bed.client.ns):
        response = client.request(server_address(bed, family), version=4, port=NTP_PORT,
                                  timeout=2)
    assert response.stratum == 9
    assert response.leap == 0
    assert abs(response.offset) < 0.01
    assert recorder.read(0.2) is None


@FAMILIES
def test_chronyd_client_gets_correct_time(bed: XdpBed, family: int, tmp_path: Path) -> None:
    chronyd = find_chronyd()
    assert chronyd is not None
    address = server_address(bed, family)
    # -Q: measure the offset and print it; never set the clock (and -x on top, as a rule here).
    command = bed.client.exec(
        chronyd, "-Q", "-x", "-u", "root", "-t", "20",
        f"server {address} port {NTP_PORT} iburst maxsamples 4",
        f"pidfile {tmp_path / 'chronyd.pid'}", "cmdport 0",
    )  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=30, check=False)
    output = result.stdout + result.stderr
    match = re.search(r"System clock wrong by (-?[0-9.]+) seconds", output)
    assert match is not None, output
    assert abs(float(match.group(1))) < 0.01, output


def test_client_checksums_are_valid(bed: XdpBed) -> None:
    """Every reply so far passed the client's UDP checksum check (no partial checksums)."""
    for family in (socket.AF_INET, socket.AF_INET6):
        assert ask(bed, family, ntp_request()) is not None
        zero_checksum = ask(bed, family, ntp_request())  # and one more, for good measure
        assert zero_checksum is not None
    assert snmp_counter(bed.client, "Udp", "InCsumErrors") == 0
    assert snmp_counter(bed.client, "Udp6", "InCsumErrors") == 0
    assert snmp_counter(bed.client, "Udp", "InErrors") == 0


def _with_extension(length: int) -> bytes:
    return ntp_request() + bytes(length - wire.PACKET_LEN)


PASS_CASES = {
    "mode 1": ntp_request(mode=1),
    "mode 2": ntp_request(mode=2),
    "mode 4": ntp_request(mode=4),
    "mode 5": ntp_request(mode=5),
    "mode 6": ntp_request(mode=6),
    "mode 7": ntp_request(mode=7),
    "v1 mode 0": ntp_request(version=1, mode=0),
    "version 0": ntp_request(version=0),
    "version 5": ntp_request(version=5),
    "version 7": ntp_request(version=7),
    "47 bytes": ntp_request()[:47],
    "52 bytes": _with_extension(52),
    "68 bytes (extension field)": _with_extension(68),
    "120 bytes (MAC)": _with_extension(120),
    "empty": b"",
}


@FAMILIES
@pytest.mark.parametrize("packet", list(PASS_CASES.values()), ids=list(PASS_CASES))
def test_everything_else_reaches_the_socket_path(
    bed: XdpBed, recorder: Recorder, family: int, packet: bytes
) -> None:
    recorder.drain()
    with client_socket(bed, family) as sock:
        sock.sendto(packet, (server_address(bed, family), NTP_PORT))
        assert recorder.read(2.0) == packet
        sock.settimeout(0.2)
        with pytest.raises(TimeoutError):
            sock.recv(4096)  # the recorder never answers: anything here came from XDP


@FAMILIES
def test_other_ports_reach_the_socket_path(bed: XdpBed, recorder: Recorder, family: int) -> None:
    recorder.drain()
    packet = ntp_request()
    with client_socket(bed, family) as sock:
        sock.sendto(packet, (server_address(bed, family), OTHER_PORT))
        assert recorder.read(2.0) == packet


def test_ipv4_options_reach_the_socket_path(bed: XdpBed, recorder: Recorder) -> None:
    recorder.drain()
    packet = ntp_request()
    with client_socket(bed, socket.AF_INET) as sock:
        sock.setsockopt(socket.IPPROTO_IP, IP_OPTIONS, bytes([1, 1, 1, 0]))  # NOPs, end
        sock.sendto(packet, (bed.server.ipv4, NTP_PORT))
        assert recorder.read(2.0) == packet
        sock.settimeout(0.2)
        with pytest.raises(TimeoutError):
            sock.recv(4096)


def test_ipv6_extension_headers_reach_the_socket_path(bed: XdpBed, recorder: Recorder) -> None:
    recorder.drain()
    packet = ntp_request()
    with client_socket(bed, socket.AF_INET6) as sock:
        # A hop-by-hop options header holding one PadN option: 8 bytes before the UDP header.
        sock.setsockopt(socket.IPPROTO_IPV6, IPV6_HOPOPTS, bytes([0, 0, 1, 4, 0, 0, 0, 0]))
        sock.sendto(packet, (bed.server.ipv6, NTP_PORT))
        assert recorder.read(2.0) == packet
        sock.settimeout(0.2)
        with pytest.raises(TimeoutError):
            sock.recv(4096)


@FAMILIES
def test_fragmented_requests_reach_the_socket_path(
    bed: XdpBed, recorder: Recorder, family: int
) -> None:
    """A mode-3 datagram larger than the MTU arrives in fragments; none is answered."""
    recorder.drain()
    packet = ntp_request() + bytes(2000)
    with client_socket(bed, family) as sock:
        sock.sendto(packet, (server_address(bed, family), NTP_PORT))
        assert recorder.read(2.0) == packet


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def test_a_48_byte_request_in_two_ipv4_fragments_reaches_the_socket_path(
    bed: XdpBed, recorder: Recorder
) -> None:
    """The first fragment carries a UDP header to port 123; the program must not touch it."""
    recorder.drain()
    payload = ntp_request()
    source, destination = socket.inet_aton(bed.client.ipv4), socket.inet_aton(bed.server.ipv4)
    udp_length = 8 + len(payload)
    header = struct.pack("!HHHH", 40000, NTP_PORT, udp_length, 0)
    pseudo = source + destination + struct.pack("!BBH", 0, socket.IPPROTO_UDP, udp_length)
    check = _checksum(pseudo + header + payload) or 0xFFFF
    datagram = struct.pack("!HHHH", 40000, NTP_PORT, udp_length, check) + payload
    first, second = datagram[:24], datagram[24:]  # 24 bytes = 3 fragment units of 8

    def ip_header(more: bool, offset_units: int, length: int) -> bytes:
        flags = (0x2000 if more else 0) | offset_units
        return struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + length, 0x5111, flags, 64,
                           socket.IPPROTO_UDP, 0, source, destination)

    with entered(bed.client.ns):
        raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    with raw:
        raw.sendto(ip_header(True, 0, len(first)) + first, (bed.server.ipv4, 0))
        raw.sendto(ip_header(False, 3, len(second)) + second, (bed.server.ipv4, 0))
    assert recorder.read(2.0) == payload


def _raw_ipv4_request(bed: XdpBed, source: str, source_port: int) -> None:
    """Send a well-formed 48-byte mode-3 request with a forged IPv4 source (raw socket)."""
    payload = ntp_request()
    src, dst = socket.inet_aton(source), socket.inet_aton(bed.server.ipv4)
    udp_length = 8 + len(payload)
    pseudo = src + dst + struct.pack("!BBH", 0, socket.IPPROTO_UDP, udp_length)
    header = struct.pack("!HHHH", source_port, NTP_PORT, udp_length, 0)
    check = _checksum(pseudo + header + payload) or 0xFFFF
    udp = struct.pack("!HHHH", source_port, NTP_PORT, udp_length, check) + payload
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0x2222, 0, 64,
                     socket.IPPROTO_UDP, 0, src, dst)
    with entered(bed.client.ns):
        raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    with raw:
        raw.sendto(ip + udp, (bed.server.ipv4, 0))


@pytest.mark.parametrize(
    ("source", "port", "reason"),
    [
        ("0.1.2.3", 40000, "passed_ip"),  # 0.0.0.0 itself the kernel would fill in
        ("127.0.0.1", 40000, "passed_ip"),
        ("224.0.0.1", 40000, "passed_ip"),
        ("255.255.255.255", 40000, "passed_ip"),
        ("10.211.77.7", 0, "passed_shape"),
    ],
    ids=["zero", "loopback", "multicast", "broadcast", "port 0"],
)
def test_unanswerable_sources_are_passed(bed: XdpBed, source: str, port: int,
                                         reason: str) -> None:
    """A request whose reply would go to no real client is left to the kernel's own checks."""
    before = bed.counters()
    _raw_ipv4_request(bed, source, port)
    after = bed.counters()
    assert after[reason] == before[reason] + 1
    assert after["answered"] == before["answered"]


def test_counters_say_what_was_passed(bed: XdpBed) -> None:
    counters = bed.counters()
    assert counters["received"] >= counters["answered"] > 0
    assert counters["passed_shape"] > 0
    assert counters["passed_ip"] > 0
    assert counters["passed_no_state"] == 0


def test_refuses_an_interface_without_xdp_support(bed: XdpBed) -> None:
    """Native mode on loopback is refused: one clear line, exit status 1."""
    command = bed.server.exec(sys.executable, "-m", "pyresponder", "xdp", "--interface", "lo",
                              "--xdp-mode", "native", "--counters-file", "-")
    result = subprocess.run(command, capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode == 1
    lines = [line for line in result.stderr.splitlines() if line.startswith("pyresponder xdp:")]
    assert len(lines) == 1, result.stderr
    assert "lo refuses XDP" in lines[0]


# ---- state and life cycle (a bed of their own each) -----------------------------------------


def test_never_written_state_passes_everything() -> None:
    with XdpBed("generic", tag="w", chronyd=False) as bed:
        recorder = Recorder(bed.server)
        try:
            packet = ntp_request()
            with client_socket(bed, socket.AF_INET) as sock:
                sock.sendto(packet, (bed.server.ipv4, NTP_PORT))
                assert recorder.read(2.0) == packet
            assert bed.counters()["passed_no_state"] >= 1
            assert bed.counters()["answered"] == 0
        finally:
            recorder.close()


def test_a_backend_never_synchronized_leaves_everything_to_the_socket_path() -> None:
    """Until the first synchronized state the socket path decides (ready timeout, require-sync)."""
    with XdpBed("generic", tag="u", stratum=None) as bed:
        bed.wait_log("not synchronized yet")
        recorder = Recorder(bed.server)
        try:
            packet = ntp_request()
            with client_socket(bed, socket.AF_INET) as sock:
                sock.sendto(packet, (bed.server.ipv4, NTP_PORT))
                assert recorder.read(2.0) == packet
            counters = bed.counters()
            assert counters["passed_no_state"] >= 1 and counters["answered"] == 0
        finally:
            recorder.close()


def test_backend_lost_turns_replies_unsynchronized_without_the_control_process() -> None:
    """After the backend timeout the kernel itself switches to LI=3 stratum 0 refid 0, even
    while ``pyresponder xdp`` is stopped (it computed the moment from syncstate beforehand)."""
    timeout = 2.0
    args = ("--backend-timeout", str(timeout), "--holdover", "0")
    with XdpBed("generic", tag="b", xdp_args=args) as bed:
        bed.wait_log("kernel replies synchronized")
        reply = ask(bed, socket.AF_INET, ntp_request())
        assert reply is not None and wire.parse_packet(reply).stratum == 9
        assert bed.chronyd is not None and bed.xdp is not None
        bed.chronyd.stop()
        os.kill(bed.xdp.pid, signal.SIGSTOP)
        try:
            time.sleep(timeout + 1.5)
            reply = ask(bed, socket.AF_INET, ntp_request())
            assert reply is not None, "the kernel stopped answering"
            packet = wire.parse_packet(reply)
            assert (packet.leap, packet.stratum, packet.refid) == (3, 0, bytes(4))
        finally:
            os.kill(bed.xdp.pid, signal.SIGCONT)
        bed.wait_log("kernel replies unsynchronized")
        reply = ask(bed, socket.AF_INET6, ntp_request())
        assert reply is not None
        assert (wire.parse_packet(reply).leap, wire.parse_packet(reply).stratum) == (3, 0)
        assert bed.counters()["answered_unsynchronized"] >= 2


def _serve_socket_path(bed: XdpBed, *extra: str) -> None:
    assert bed.chronyd is not None
    env = dict(os.environ, PYRESPONDER_XDP_COUNTERS=str(bed.counters_file))
    serve = bed.start_server_process(
        [sys.executable, "-m", "pyresponder", "serve", "--listen", "[::]:123", "--workers", "1",
         "--backend", f"127.0.0.1:{bed.chronyd.port}", "--stats-interval", "0", *extra],
        "serve", env,
    )
    deadline = time.monotonic() + 15
    while "ready:" not in serve.log():
        assert serve.running(), serve.log()
        assert time.monotonic() < deadline, serve.log()
        time.sleep(0.05)


def _steady_client(bed: XdpBed, rate: int, seconds: float, at: float,
                   action: object) -> tuple[int, int]:
    """Send ``rate`` requests/s for ``seconds``, run ``action()`` at ``at`` s; (sent, answered)."""
    with client_socket(bed, socket.AF_INET) as sock:
        sock.setblocking(False)
        address = (bed.server.ipv4, NTP_PORT)
        pending: set[bytes] = set()
        answered = sent = 0
        start = time.monotonic()
        done_action = False
        end = start + seconds
        while True:
            now = time.monotonic()
            if not done_action and now - start >= at:
                assert callable(action)
                action()
                done_action = True
            if now < end and sent < (now - start) * rate:
                transmit = os.urandom(8)
                pending.add(transmit)
                sock.sendto(ntp_request(transmit=transmit), address)
                sent += 1
            while True:
                try:
                    data = sock.recv(1024)
                except BlockingIOError:
                    break
                if data[24:32] in pending:
                    pending.discard(data[24:32])
                    answered += 1
            if now >= end + 1.0 or (now >= end and not pending):
                return sent, answered
            time.sleep(0.0002)


def test_killed_xdp_process_leaves_no_gap() -> None:
    """kill -9 of ``pyresponder xdp`` under 1k req/s: the link goes, the socket path answers."""
    with XdpBed("generic", tag="k") as bed:
        bed.wait_log("kernel replies synchronized")
        _serve_socket_path(bed)
        assert bed.xdp is not None
        xdp = bed.xdp

        def kill() -> None:
            os.kill(xdp.pid, signal.SIGKILL)

        answered_before = bed.counters()["answered"]
        sent, answered = _steady_client(bed, rate=1000, seconds=3.0, at=1.0, action=kill)
        assert sent >= 2500
        assert answered == sent, f"{sent - answered} of {sent} requests unanswered"
        assert not xdp.running()
        link = subprocess.run(["ip", "-n", bed.server.ns, "-d", "link", "show", "dev",
                               bed.server.dev], capture_output=True, text=True, check=True)
        assert "prog/xdp" not in link.stdout, "the program stayed attached"
        assert answered_before >= 0


def test_sigterm_detaches_and_exits_zero() -> None:
    with XdpBed("generic", tag="t") as bed:
        assert bed.xdp is not None
        link = subprocess.run(["ip", "-n", bed.server.ns, "-d", "link", "show", "dev",
                               bed.server.dev], capture_output=True, text=True, check=True)
        assert "prog/xdp" in link.stdout
        assert bed.xdp.stop() == 0
        link = subprocess.run(["ip", "-n", bed.server.ns, "-d", "link", "show", "dev",
                               bed.server.dev], capture_output=True, text=True, check=True)
        assert "prog/xdp" not in link.stdout
        assert "detached" in bed.xdp.log()
        assert not bed.counters_file.exists()


def _build_ntpload(out: Path) -> Path:
    source = Path(__file__).resolve().parents[2] / "bench" / "ntpload.c"
    binary = out / "ntpload"
    subprocess.run(["gcc", "-O2", "-Wall", "-pthread", "-o", str(binary), str(source)],
                   check=True, timeout=120)
    return binary


@pytest.mark.skipif(subprocess.run(["sh", "-c", "command -v gcc"], capture_output=True,
                                   check=False).returncode != 0, reason="gcc not installed")
def test_program_swap_under_load_loses_nothing(tmp_path: Path) -> None:
    """Five bpf_link_update swaps (SIGHUP) during 100k req/s: every request is answered."""
    import json  # noqa: PLC0415

    ntpload = _build_ntpload(tmp_path)
    with XdpBed("native", tag="s") as bed:
        bed.wait_log("kernel replies synchronized")
        assert bed.xdp is not None
        command = bed.client.exec(str(ntpload), "-r", "100000", "-d", "3", "-s", "8",
                                  "-w", "500", "-N", bed.server.ipv4, str(NTP_PORT))
        load = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)
        try:
            time.sleep(0.5)
            for _ in range(5):
                os.kill(bed.xdp.pid, signal.SIGHUP)
                time.sleep(0.4)
            stdout, stderr = load.communicate(timeout=30)
        finally:
            if load.poll() is None:
                load.kill()
                load.wait(5)
        assert load.returncode == 0, stderr
        result = json.loads(stdout)
        print(f"swap under load: sent {result['sent']} at {result['send_rate']:.0f} req/s, "
              f"matched {result['matched']}")
        swaps = bed.xdp.log().count("XDP program replaced")
        assert swaps == 5, bed.xdp.log()
        lost = int(result["sent"]) - int(result["matched"])
        assert lost == 0, f"{lost} lost at {result['send_rate']:.0f} req/s: {result}"
        assert bed.counters()["answered"] >= int(result["matched"])


def test_metrics_endpoint_shows_both_paths() -> None:
    """serve's Prometheus endpoint reports the kernel path's counters with path="xdp"."""
    from prometheus_client.parser import text_string_to_metric_families  # noqa: PLC0415

    with XdpBed("generic", tag="m") as bed:
        bed.wait_log("kernel replies synchronized")
        _serve_socket_path(bed, "--metrics", "127.0.0.1:9123")
        for _ in range(5):
            assert ask(bed, socket.AF_INET, ntp_request()) is not None
        assert ask(bed, socket.AF_INET, ntp_request(mode=1)) is not None  # the socket path's
        bed.counters()  # a snapshot written after the requests
        with entered(bed.server.ns), urllib.request.urlopen(
            "http://127.0.0.1:9123/metrics", timeout=5
        ) as response:
            text = response.read().decode()
        samples = {
            (sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
        }
        accepted = "ntp_server_accepted_packets_total"
        assert samples[(accepted, (("listen_address", bed.server.dev), ("path", "xdp")))] >= 5
        assert samples[(accepted, (("listen_address", "[::]:123"), ("path", "socket")))] >= 1
        attached = (("interface", bed.server.dev), ("mode", "generic"))
        assert samples[("pyresponder_xdp_attached", attached)] == 1
        passed = (("interface", bed.server.dev), ("reason", "shape"))
        assert samples[("pyresponder_xdp_passed_packets_total", passed)] >= 1


@pytest.mark.parametrize("kod", [1, 0], ids=["kiss-o'-death", "drop"])
def test_rate_limit_in_the_kernel(kod: int) -> None:
    """serve's per-client limit, applied by the program: a burst of 4, then KoD RATE or drops;
    another address (IPv6 here) has a bucket of its own."""
    args = ("--rate-limit", "--rate-limit-burst", "4", "--rate-limit-interval", "15",
            "--rate-limit-leak", "0", "--rate-limit-kod", str(kod))
    with XdpBed("generic", tag=f"r{kod}", xdp_args=args) as bed:
        bed.wait_log("kernel replies synchronized")
        outcomes = []
        for _ in range(10):
            request = ntp_request()
            reply = ask(bed, socket.AF_INET, request, timeout=0.3)
            if reply is None:
                outcomes.append("none")
                continue
            packet = wire.parse_packet(reply)
            assert packet.origin_raw == request[40:48]
            if (packet.leap, packet.stratum, packet.refid) == (3, 0, b"RATE"):
                outcomes.append("kod")
            else:
                assert (packet.leap, packet.stratum) == (0, 9)
                outcomes.append("ok")
        limited = "kod" if kod else "none"
        assert outcomes == ["ok"] * 4 + [limited] * 6
        reply = ask(bed, socket.AF_INET6, ntp_request())
        assert reply is not None and wire.parse_packet(reply).stratum == 9
        counters = bed.counters()
        assert counters["rate_limited"] == 6
        assert counters["kod_sent"] == (6 if kod else 0)


def test_rate_limit_choices_are_per_client() -> None:
    """Which of a limited client's requests get a KoD depends on its own count only (as in
    ratelimit.RateLimiter): a second client flooding meanwhile does not shift the first one's
    pattern."""
    args = ("--rate-limit", "--rate-limit-burst", "3", "--rate-limit-interval", "15",
            "--rate-limit-leak", "0", "--rate-limit-kod", "2")
    with XdpBed("generic", tag="rc", xdp_args=args) as bed:
        bed.wait_log("kernel replies synchronized")
        outcomes = []
        for round_ in range(9):
            reply = ask(bed, socket.AF_INET, ntp_request(), timeout=0.3)
            if reply is None:
                outcomes.append("none")
            else:
                packet = wire.parse_packet(reply)
                outcomes.append("kod" if packet.refid == b"RATE" else "ok")
            # The other client (IPv6, a bucket of its own) sends an odd number of requests
            # between two of the first one's: with a shared count its parity would flip.
            for _ in range(1 + round_ % 2):
                ask(bed, socket.AF_INET6, ntp_request(), timeout=0.05)
        assert outcomes == ["ok"] * 3 + ["none", "kod"] * 3


def test_rate_limit_keys_ipv6_per_64() -> None:
    """Two addresses of one IPv6 /64 share a bucket (a host cannot rotate through its /64 to
    evade the limit), as in the socket path."""
    args = ("--rate-limit", "--rate-limit-burst", "3", "--rate-limit-interval", "15",
            "--rate-limit-leak", "0", "--rate-limit-kod", "0")
    with XdpBed("generic", tag="r6", xdp_args=args) as bed:
        prefix = bed.client.ipv6.rsplit(":", 1)[0]
        second = f"{prefix}:beef"
        run("ip", "-n", bed.client.ns, "-6", "addr", "add", f"{second}/64", "dev",
            bed.client.dev, "nodad")
        bed.wait_log("kernel replies synchronized")
        answered = 0
        for index in range(6):
            with client_socket(bed, socket.AF_INET6) as sock:
                sock.bind((bed.client.ipv6 if index % 2 else second, 0))
                sock.settimeout(0.3)
                sock.sendto(ntp_request(), (bed.server.ipv6, NTP_PORT))
                with contextlib.suppress(TimeoutError):
                    sock.recv(4096)
                    answered += 1
        assert answered == 3, "the two addresses of one /64 got a bucket each"


# ---- the program alone, with this test as its control plane ----------------------------------


def test_program_rules_with_hand_written_state() -> None:
    """Leap-second window, dispersion growth and expiry, checked against slots written here."""
    from pyresponder import syncstate  # noqa: PLC0415
    from pyresponder.syncstate import BackendSample, SyncPolicy  # noqa: PLC0415
    from pyresponder.xdp import daemon, maps  # noqa: PLC0415
    from pyresponder.xdp.libbpf import BpfObject, XdpLink  # noqa: PLC0415

    with VethPair("h") as pair:
        bpf = BpfObject(daemon.OBJECT_PATH)
        link = None
        recorder = None
        try:
            control = bpf.map("pyr_control", maps.CONTROL.size)
            slots = bpf.map("pyr_slots", maps.SLOT.size)
            control.update(0, maps.control_value(0, NTP_PORT))
            # The ifindex means something only in the namespace it came from: attach from there.
            with entered(pair.server.ns):
                ifindex = socket.if_nametoindex(pair.server.dev)
                link = XdpLink(bpf.program_fd(daemon.PROGRAM_NAME), ifindex, "generic")
            recorder = Recorder(pair.server)

            def write(leap: int, age: float, valid_for: float,
                      window: tuple[int, int] | None = None) -> None:
                now = time.monotonic()
                sample = BackendSample(leap=leap, stratum=2, precision=-20, refid=b"\x0a\0\0\1",
                                       reference_ts=0, root_delay=0.001,
                                       root_dispersion=0.001, offset=0.0, delay=0.0,
                                       received_at=now - age)
                state = syncstate.evaluate(sample, now - age, SyncPolicy(backend_timeout=1e6))
                value = maps.slot_value(maps.SlotInput(
                    state, int((now + valid_for) * 1e9), int((now - age) * 1e9),
                    time.time_ns(), daemon.tai_offset_ns()))
                if window is not None:
                    fields = list(maps.SLOT.unpack(value))
                    fields[5], fields[6] = window
                    value = maps.SLOT.pack(*fields)
                slots.update(0, value)
                control.update(0, maps.control_value(1, NTP_PORT))

            def query() -> bytes | None:
                return ask(pair, socket.AF_INET, ntp_request(), timeout=0.5)

            # A leap second announced for a midnight far away: answered, LI=1 passed on.
            write(leap=1, age=0.0, valid_for=100)
            reply = query()
            assert reply is not None and wire.parse_packet(reply).leap == 1
            # Within the window around the leap second: left to the socket path.
            now_ns = time.time_ns()
            write(leap=1, age=0.0, valid_for=100, window=(now_ns - 10**9, now_ns + 10**10))
            recorder.drain()
            assert query() is None
            assert recorder.read(1.0) is not None
            # Dispersion grows at 15 ppm/s from the moment the header was built (10 s ago).
            write(leap=0, age=10.0, valid_for=100)
            reply = query()
            assert reply is not None
            grown = wire.parse_packet(reply).root_dispersion - 0.001
            assert grown == pytest.approx(10 * syncstate.DISPERSION_RATE, abs=2 / 65536)
            # Past valid_until: LI=3, stratum 0, refid 0, without any help from user space.
            write(leap=0, age=0.0, valid_for=-1)
            reply = query()
            assert reply is not None
            packet = wire.parse_packet(reply)
            assert (packet.leap, packet.stratum, packet.refid) == (3, 0, bytes(4))
        finally:
            if recorder is not None:
                recorder.close()
            if link is not None:
                link.close()
            bpf.close()
