"""The three I/O engines over real loopback sockets, in this process: the same replies from each,
--send-batch honoured, transmit timestamps between T2 and the client's kernel arrival time, and
a reply that cannot be sent costs nobody else theirs."""

from __future__ import annotations

import math
import socket
import struct
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pyresponder import mmsg, request, wholebatch
from pyresponder.batchio import BatchSocket
from pyresponder.plainio import PlainSocket
from pyresponder.ratelimit import RateLimiter, RateLimitPolicy
from pyresponder.shared import ANSWERED, COUNTER_NAMES, SEND_ERRORS
from pyresponder.transmitter import Transmitter
from tests.support.engines import (
    ENGINES,
    HEADER,
    Reply,
    client,
    drain,
    exchange,
    listening,
    per_packet,
    plain,
    replies,
    whole_batch,
)

# (listening address, where the client sends to): plain, wildcard with IP_PKTINFO, dual-stack
# wildcard with IPv4 and IPv6 clients, IPv6.
PLACES = [("127.0.0.1", "127.0.0.1"), ("0.0.0.0", "127.0.0.2"), ("::", "127.0.0.3"),
          ("::", "::1"), ("::1", "::1")]
_U64 = struct.Struct("!Q")


@st.composite
def plain_requests(draw: st.DrawFn) -> bytearray:
    """A client or symmetric-active request, versions 2-4, with arbitrary bytes in the fields
    a server ignores."""
    version = draw(st.integers(2, 4))
    mode = draw(st.sampled_from([3, 3, 3, 1]))
    packet = bytearray(draw(st.binary(min_size=48, max_size=48)))
    packet[0] = (draw(st.integers(0, 3)) << 6) | (version << 3) | mode
    return packet


@st.composite
def other_requests(draw: st.DrawFn) -> bytearray:
    """What the whole-batch path leaves to the per-packet rules: drops, NTPv1, odd lengths."""
    packet = bytearray(draw(st.binary(min_size=48, max_size=48)))
    kind = draw(st.sampled_from(["mode", "version", "ntpv1", "short", "long", "unaligned"]))
    if kind == "mode":
        packet[0] = (4 << 3) | draw(st.sampled_from([0, 2, 4, 5, 6, 7]))
    elif kind == "version":
        packet[0] = (draw(st.sampled_from([0, 5, 6, 7])) << 3) | 3
    elif kind == "ntpv1":
        packet[0] = (1 << 3) | draw(st.sampled_from([0, 1, 3]))
    elif kind == "short":
        return packet[: draw(st.integers(0, 47))]
    elif kind == "long":
        packet[0] = (4 << 3) | 3
        return packet + bytearray(4 * draw(st.integers(1, 20)))
    else:
        packet[0] = (4 << 3) | 3
        return packet + bytearray(draw(st.integers(1, 3)))
    return packet


def _origin_keyed(received: list[Reply]) -> dict[bytes, bytes]:
    """Each reply without T2/T3, by its origin timestamp (unique per request in these tests)."""
    keyed = {reply.data[24:32]: reply.data[:32] for reply in received}
    assert len(keyed) == len(received), "one reply per request"
    return keyed


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    place=st.sampled_from(PLACES),
    leap=st.integers(0, 3),
    plain_only=st.booleans(),
    data=st.data(),
)
def test_every_engine_gives_the_same_replies(
    place: tuple[str, str], leap: int, plain_only: bool, data: st.DataObject
) -> None:
    host, destination = place
    kinds = plain_requests() if plain_only else st.one_of(plain_requests(), other_requests())
    packets = data.draw(st.lists(kinds, min_size=1, max_size=64))
    for n, packet in enumerate(packets):  # a unique origin per request, to match the replies
        if len(packet) >= 48:
            packet[40:48] = _U64.pack(n + 1)
    header = bytes([leap << 6]) + HEADER[1:]
    sends = [(bytes(packet), destination) for packet in packets]
    results = {name: exchange(factory(), host, sends, header) for name, factory in ENGINES.items()}

    answers = {name: _origin_keyed(received) for name, (_, received, _) in results.items()}
    assert answers["whole-batch"] == answers["per-packet"] == answers["plain"]
    counters = {name: counted for name, (_, _, counted) in results.items()}
    assert counters["whole-batch"] == counters["per-packet"] == counters["plain"]
    expected = sum(
        1 for packet in packets
        if request.reply_mode(packet[0] if packet else 0, len(packet), 40000) > 0
    )
    assert counters["plain"]["answered"] == expected
    engine = results["whole-batch"][0]
    assert isinstance(engine, BatchSocket)
    if plain_only and len(packets) >= wholebatch.MIN_BATCH:
        assert engine.whole_batches_answered == 1  # the fast path really was compared
    for _, received, _ in results.values():
        for reply in received:
            t2, t3 = struct.unpack("!QQ", reply.data[32:48])
            assert t2 <= t3


@pytest.mark.parametrize("place", PLACES)
def test_rate_limited_replies_are_the_same_from_both_per_packet_engines(
    place: tuple[str, str],
) -> None:
    host, destination = place
    policy = RateLimitPolicy(interval=20.0, burst=3, leak=3, kod=2)
    sends = [(bytes([0x23]) + bytes(39) + _U64.pack(n + 1), destination) for n in range(20)]
    results = {
        name: exchange(factory(limiter=RateLimiter(policy)), host, sends)
        for name, factory in (("per-packet", per_packet), ("plain", plain))
    }
    answers = {name: _origin_keyed(received) for name, (_, received, _) in results.items()}
    assert answers["per-packet"] == answers["plain"]
    kisses = [data for data in answers["plain"].values() if data[12:16] == b"RATE"]
    assert len(answers["plain"]) == 3 + 17 // 3 + len(kisses)  # burst + leaked + kissed
    assert len(kisses) == (17 - 17 // 3) // 2
    assert results["per-packet"][2] == results["plain"][2]


@pytest.mark.parametrize("engine", ["whole-batch", "per-packet"])
@pytest.mark.parametrize("send_batch", [1, 5, 16, 64])
def test_send_batch_is_honoured(engine: str, send_batch: int) -> None:
    factory = whole_batch if engine == "whole-batch" else per_packet
    sends = [(bytes([0x23]) + bytes(39) + _U64.pack(n + 1), "127.0.0.1") for n in range(40)]
    batch_socket, received, counted = exchange(factory(send_batch=send_batch), "127.0.0.1", sends)
    assert isinstance(batch_socket, BatchSocket)
    assert len(received) == counted["answered"] == 40
    assert batch_socket.transmitter.largest_group == min(send_batch, 40)
    assert batch_socket.transmitter.calls == math.ceil(40 / send_batch)
    assert batch_socket.whole_batches_answered == (engine == "whole-batch")


def _sockaddr_in(port: int) -> bytes:
    return struct.pack("=H", socket.AF_INET) + struct.pack("!H", port) + socket.inet_aton(
        "127.0.0.1") + bytes(8)


@pytest.mark.parametrize("failing", [[0], [4], [9], [0, 1, 2], [3, 5, 7], list(range(10))])
def test_a_message_sendmmsg_cannot_send_costs_only_itself(failing: list[int]) -> None:
    """Replies to port 0 make sendmmsg fail at that message; every other reply still leaves."""
    with listening("127.0.0.1") as listener:
        buffers = mmsg.Buffers(16, ipv6=False, wildcard=False)
        transmitter = Transmitter(listener.sock.fileno(), buffers, send_batch=16)
        receiver = client()
        try:
            port = receiver.getsockname()[1]
            for slot in range(10):
                at = slot * mmsg.NAME_SIZE
                buffers.names[at : at + 16] = _sockaddr_in(0 if slot in failing else port)
                buffers.replies[slot * 48 : slot * 48 + 48] = bytes([0x24]) + bytes(47)
                buffers.replies[slot * 48 + 24 : slot * 48 + 32] = _U64.pack(slot)
            counters = [0] * len(COUNTER_NAMES)
            transmitter.send(10, counters, 0)
            got = sorted(_U64.unpack(reply.data[24:32])[0] for reply in replies(receiver))
        finally:
            receiver.close()
    assert got == [slot for slot in range(10) if slot not in failing]
    assert counters[ANSWERED] == 10 - len(failing)
    assert counters[SEND_ERRORS] == len(failing)


def _ntp(unix_ns: int) -> int:
    return request.ntp_timestamp(unix_ns)


@pytest.mark.parametrize("engine", ["whole-batch", "per-packet", "plain"])
@pytest.mark.parametrize("send_batch", [16, 64])
def test_transmit_timestamp_is_between_receive_and_the_clients_kernel_arrival(
    engine: str, send_batch: int
) -> None:
    """T2 <= T3 <= the client's kernel receive time, for every reply of many bursts."""
    factory = {"whole-batch": whole_batch, "per-packet": per_packet}.get(engine)
    with listening("127.0.0.1") as listener:
        port = listener.sock.getsockname()[1]
        server = factory(send_batch=send_batch)(listener) if factory else plain()(listener)
        receiver = client()
        late: list[int] = []
        answered = 0
        try:
            for burst in range(40):
                for n in range(64):
                    receiver.sendto(bytes([0x23]) + bytes(39) + _U64.pack(burst * 64 + n + 1),
                                    ("127.0.0.1", port))
                drain(server)
                for reply in replies(receiver):
                    t2, t3 = struct.unpack("!QQ", reply.data[32:48])
                    assert t2 <= t3
                    if t3 > _ntp(reply.client_receive_ns):
                        late.append(t3 - _ntp(reply.client_receive_ns))
                    answered += 1
        finally:
            receiver.close()
    assert answered == 40 * 64
    assert late == [], f"{len(late)} replies stamped after they arrived, by up to " \
                       f"{max(late) * 1e6 / 2**32:.1f} us"


@pytest.mark.parametrize("engine", ["whole-batch", "per-packet", "plain"])
def test_transmit_timestamp_is_never_before_receive_when_the_clock_steps_back(
    engine: str,
) -> None:
    """At an inserted leap second the kernel steps the clock back 1 s: T3 stays >= T2."""
    factory = ENGINES[engine]
    with listening("127.0.0.1") as listener:
        port = listener.sock.getsockname()[1]
        server = factory()(listener)

        def stepped_back() -> int:
            return time.time_ns() - 1_000_000_000

        if isinstance(server, PlainSocket):
            server.clock = stepped_back
        else:
            assert isinstance(server, BatchSocket)
            server.transmitter.clock = stepped_back
        receiver = client()
        try:
            for n in range(32):
                receiver.sendto(bytes([0x23]) + bytes(39) + _U64.pack(n + 1), ("127.0.0.1", port))
            drain(server)
            received = replies(receiver)
        finally:
            receiver.close()
    assert len(received) == 32
    for reply in received:
        t2, t3 = struct.unpack("!QQ", reply.data[32:48])
        assert t2 <= t3 < t2 + (1 << 32) // 10  # clamped to the batch's latest T2, not 1 s back


def _udp_ipv4(source: str, source_port: int, destination: str, port: int, payload: bytes) -> bytes:
    """An IPv4 datagram with any source port (0 included), for a raw IP_HDRINCL socket."""
    udp = struct.pack("!HHHH", source_port, port, 8 + len(payload), 0) + payload
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0, 64, socket.IPPROTO_UDP, 0,
                     socket.inet_aton(source), socket.inet_aton(destination))
    return ip + udp


@pytest.mark.parametrize("engine", ["whole-batch", "per-packet", "plain"])
@pytest.mark.parametrize("host", ["0.0.0.0", "::"])
def test_spoofed_port_0_and_broadcast_requests_cost_nobody_their_reply(
    engine: str, host: str
) -> None:
    factory = ENGINES[engine]
    with listening(host) as listener:
        port = listener.sock.getsockname()[1]
        server = factory()(listener)
        receiver = client()
        raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
        broadcaster = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        broadcaster.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
        try:
            for n in range(640):
                packet = bytes([0x23]) + bytes(39) + _U64.pack(n + 1)
                receiver.sendto(packet, ("127.0.0.1", port))
                if n % 4 == 1:
                    raw.sendto(_udp_ipv4("127.0.0.1", 0, "127.0.0.1", port, packet),
                               ("127.0.0.1", 0))
                if n % 4 == 3:
                    broadcaster.sendto(packet, ("127.255.255.255", port))
                if n % 64 == 63:
                    drain(server)
            received = replies(receiver)
        finally:
            for sock in (receiver, raw, broadcaster):
                sock.close()
    assert sorted(_U64.unpack(reply.data[24:32])[0] for reply in received) == list(
        range(1, 641))
    if isinstance(server, BatchSocket) and host == "0.0.0.0":
        assert server.transmitter.failures == 0  # all dropped before a send was tried


@pytest.mark.parametrize("engine", ["per-packet", "plain"])
def test_ipv4_clients_of_a_dual_stack_socket_are_limited_each_on_its_own(engine: str) -> None:
    """IPv4 clients of a [::] socket are ::ffff:a.b.c.d, all in one /64: each must still be a
    client of its own, not share one bucket with every other IPv4 client."""
    policy = RateLimitPolicy(interval=20.0, burst=3, leak=0, kod=0)
    factory = per_packet if engine == "per-packet" else plain
    with listening("::") as listener:
        port = listener.sock.getsockname()[1]
        server = factory(limiter=RateLimiter(policy))(listener)
        clients = [client(host=f"127.0.0.{n}") for n in (1, 2, 3)]
        try:
            for sock in clients:
                for n in range(6):
                    sock.sendto(bytes([0x23]) + bytes(39) + _U64.pack(n + 1), ("127.0.0.1", port))
            drain(server)
            answered = [len(replies(sock)) for sock in clients]
        finally:
            for sock in clients:
                sock.close()
    assert answered == [3, 3, 3]


@pytest.mark.parametrize("engine", ["per-packet", "plain"])
def test_a_kiss_of_death_leaves_no_trace_in_later_replies(engine: str) -> None:
    """Reply slots are templates that a KoD patches: the next batch's replies (whatever slot
    they land in) carry the server's header again."""
    policy = RateLimitPolicy(interval=20.0, burst=3, leak=0, kod=1)
    factory = per_packet if engine == "per-packet" else plain
    with listening("127.0.0.1") as listener:
        port = listener.sock.getsockname()[1]
        server = factory(limiter=RateLimiter(policy))(listener)
        flooder, other = client(host="127.0.0.3"), client(host="127.0.0.4")
        try:
            for burst in (range(3), range(3, 12)):  # its burst, then only KoDs in slots 0-8
                for n in burst:
                    flooder.sendto(bytes([0x23]) + bytes(39) + _U64.pack(n + 1),
                                   ("127.0.0.1", port))
                drain(server, set_header=burst.start == 0)
            kissed = [reply.data for reply in replies(flooder)]
            for n in range(3):
                other.sendto(bytes([0x23]) + bytes(39) + _U64.pack(n + 1), ("127.0.0.1", port))
            drain(server, set_header=False)
            later = [reply.data for reply in replies(other)]
        finally:
            flooder.close()
            other.close()
    assert sum(data[12:16] == b"RATE" for data in kissed) == 9
    assert len(later) == 3
    for data in later:
        assert data[1:2] + data[3:24] == HEADER[1:2] + HEADER[3:24]
        assert data[0] == (HEADER[0] & 0xC0) | (4 << 3) | 4
