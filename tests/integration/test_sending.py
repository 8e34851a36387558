"""A live responder (real chronyd backend) under spoofed traffic, and its transmit timestamps
against the client's kernel receive time."""

from __future__ import annotations

import socket
import struct
import time

import pytest

from pyresponder import request
from tests.integration.conftest import StartResponder
from tests.support.chronyd import Chronyd, free_udp_port
from tests.support.engines import client, replies

_U64 = struct.Struct("!Q")


def _udp_ipv4(source: str, source_port: int, destination: str, port: int, payload: bytes) -> bytes:
    """An IPv4 datagram with any source port (0 included), for a raw IP_HDRINCL socket."""
    udp = struct.pack("!HHHH", source_port, port, 8 + len(payload), 0) + payload
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0, 64, socket.IPPROTO_UDP, 0,
                     socket.inet_aton(source), socket.inet_aton(destination))
    return ip + udp


def _collect(sock: socket.socket, wanted: set[bytes], timeout: float) -> set[bytes]:
    """Origins of the replies that arrive, until all of ``wanted`` came or ``timeout`` passed."""
    got: set[bytes] = set()
    deadline = time.monotonic() + timeout
    sock.setblocking(True)
    while not wanted <= got and (left := deadline - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            got.add(sock.recv(512)[24:32])
        except TimeoutError:
            break
    sock.setblocking(False)
    return got


@pytest.mark.parametrize("io", ["batch", "plain"])
@pytest.mark.parametrize("spoof_every", [2, 8])
def test_spoofed_port_0_and_broadcast_requests_cost_legitimate_clients_nothing(
    chronyd: Chronyd, start_responder: StartResponder, io: str, spoof_every: int
) -> None:
    """Requests from UDP port 0 (crafted on a raw socket) and to the broadcast address, mixed
    into bursts of legitimate ones: a reply that cannot be sent must not take others with it."""
    port = free_udp_port("0.0.0.0")
    start_responder(
        "--listen", f"0.0.0.0:{port}", "--backend", f"127.0.0.1:{chronyd.port}",
        "--workers", "1", "--io", io,
    ).wait_answering(("127.0.0.1", port))
    receiver = client()
    raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    broadcaster = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    broadcaster.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
    sent: set[bytes] = set()
    answered: set[bytes] = set()
    try:
        for burst in range(40):
            for n in range(48):
                transmit = _U64.pack(burst * 1000 + n + 1)
                packet = bytes([0x23]) + bytes(39) + transmit
                if n % spoof_every == 0:
                    raw.sendto(_udp_ipv4("127.0.0.1", 0, "127.0.0.1", port, packet),
                               ("127.0.0.1", 0))
                if n % spoof_every == spoof_every // 2:
                    broadcaster.sendto(packet, ("127.255.255.255", port))
                receiver.sendto(packet, ("127.0.0.1", port))
                sent.add(transmit)
            time.sleep(0.005)  # let the burst queue up, so that batches form
            answered |= {reply.data[24:32] for reply in replies(receiver)}
        answered |= _collect(receiver, sent - answered, timeout=3.0)
    finally:
        for sock in (receiver, raw, broadcaster):
            sock.close()
    assert len(answered & sent) >= 0.99 * len(sent), (
        f"{len(sent) - len(answered & sent)} of {len(sent)} legitimate requests unanswered"
    )


@pytest.mark.parametrize("io", ["batch", "plain"])
def test_transmit_timestamps_lie_between_receive_and_the_clients_kernel_arrival(
    chronyd: Chronyd, start_responder: StartResponder, io: str
) -> None:
    """T2 <= T3 <= the time the client's kernel received the reply (SO_TIMESTAMPNS), for bursts
    that make the responder send full groups."""
    port = free_udp_port()
    start_responder(
        "--listen", f"127.0.0.1:{port}", "--backend", f"127.0.0.1:{chronyd.port}",
        "--workers", "1", "--io", io, "--send-batch", "16",
    ).wait_answering(("127.0.0.1", port))
    receiver = client()
    late: list[float] = []
    checked = 0
    try:
        for burst in range(60):
            for n in range(64):
                receiver.sendto(bytes([0x23]) + bytes(39) + _U64.pack(burst * 64 + n + 1),
                                ("127.0.0.1", port))
            time.sleep(0.01)
            for reply in replies(receiver):
                t2, t3 = struct.unpack("!QQ", reply.data[32:48])
                assert t2 <= t3
                arrived = request.ntp_timestamp(reply.client_receive_ns)
                if t3 > arrived:
                    late.append((t3 - arrived) * 1e6 / 2**32)
                checked += 1
    finally:
        receiver.close()
    assert checked >= 0.99 * 60 * 64
    assert late == [], f"{len(late)} of {checked} replies stamped after they arrived, " \
                       f"by up to {max(late):.1f} us"
