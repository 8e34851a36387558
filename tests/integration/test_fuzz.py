"""Random and mutated packets against a live worker: it never crashes and never amplifies."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.chronyd import Chronyd, free_udp_port
from tests.support.responder import Responder, ntp_request, query

VALID = ntp_request(version=4)


@st.composite
def mutated_requests(draw: st.DrawFn) -> bytes:
    """A valid request with bytes flipped, cut, or extended: the inputs parsers get wrong."""
    packet = bytearray(draw(st.sampled_from([VALID, ntp_request(version=1, mode=0),
                                             ntp_request(version=3, mode=1)])))
    for _ in range(draw(st.integers(0, 4))):
        at = draw(st.integers(0, len(packet) - 1))
        packet[at] = draw(st.integers(0, 255))
    cut = draw(st.integers(0, len(packet)))
    tail = draw(st.binary(max_size=120))
    return bytes(packet[:cut]) + tail if draw(st.booleans()) else bytes(packet) + tail


@pytest.fixture(scope="module", params=["batch", "plain"])
def live(request: pytest.FixtureRequest, chronyd: Chronyd) -> Iterator[tuple[Responder, int]]:
    port = free_udp_port()
    responder = Responder([
        "--listen", f"127.0.0.1:{port}", "--backend", f"127.0.0.1:{chronyd.port}",
        "--workers", "2", "--io", request.param,
    ]).start()
    responder.wait_answering(("127.0.0.1", port))
    workers = responder.wait_workers(2)
    yield responder, port
    # After everything the fuzzer threw: the same workers, still answering, no traceback.
    assert responder.workers() == workers
    assert query(("127.0.0.1", port), VALID) is not None
    assert "Traceback" not in responder.log()
    responder.cleanup()


@settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))
@given(packet=st.one_of(mutated_requests(), st.binary(max_size=600)))
def test_fuzzed_packets(live: tuple[Responder, int], packet: bytes) -> None:
    _, port = live
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(0.02)
        sock.sendto(packet, ("127.0.0.1", port))
        try:
            reply = sock.recv(4096)
        except TimeoutError:
            return
    assert len(reply) == 48 <= len(packet)  # never an amplifier
    assert reply[0] & 7 in (2, 4)  # only server or symmetric-passive replies
    assert (packet[0] >> 3) & 7 in (1, 2, 3, 4)
    assert (packet[0] & 7) in (0, 1, 3)  # control (6), private (7) and the rest: no answer
    assert reply[24:32] == packet[40:48]
