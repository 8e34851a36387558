"""Random and mutated packets against a live worker: it never crashes and never amplifies."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pyresponder import request
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
    """Whatever the rules answer is answered, within the request's size; the rest is not."""
    _, port = live
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        mode = request.reply_mode(packet[0] if packet else 0, len(packet), sock.getsockname()[1])
        # A reply comes at once; silence is only believed after a while, but for a drop a
        # short wait is enough to catch most wrong answers.
        sock.settimeout(5.0 if mode > 0 else 0.02)
        sock.sendto(packet, ("127.0.0.1", port))
        try:
            reply = sock.recv(4096)
        except TimeoutError:
            assert mode < 0, f"a valid request was not answered: {packet.hex()}"
            return
    assert mode > 0, f"answered what must be dropped: {packet.hex()}"
    assert len(reply) == 48 <= len(packet)  # never an amplifier
    assert reply[0] & 7 == mode  # only server or symmetric-passive replies
    assert (reply[0] >> 3) & 7 == (packet[0] >> 3) & 7
    assert reply[24:32] == packet[40:48]
