"""One NTP client query, for operators and health checks (``pyresponder probe``)."""

from __future__ import annotations

import os
import select
import socket
import time
from dataclasses import asdict, dataclass

from . import wire
from .endpoints import Endpoint, resolve


@dataclass(frozen=True, slots=True)
class ProbeResult:
    host: str
    port: int
    synchronized: bool
    leap: int
    version: int
    mode: int
    stratum: int
    poll: int
    precision: int
    refid: str
    root_delay: float
    root_dispersion: float
    offset: float
    delay: float

    def as_dict(self) -> dict[str, object]:
        return asdict(self)

    def summary(self) -> str:
        state = "synchronized" if self.synchronized else "UNSYNCHRONIZED"
        return (
            f"{self.host} port {self.port}: {state} stratum {self.stratum} leap {self.leap} "
            f"refid {self.refid or '-'} offset {self.offset:+.6f} s delay {self.delay:.6f} s "
            f"root delay {self.root_delay:.6f} s root dispersion {self.root_dispersion:.6f} s"
        )


def is_synchronized(leap: int, stratum: int) -> bool:
    return leap != wire.LEAP_UNSYNCHRONIZED and 1 <= stratum <= 15


def probe(endpoint: Endpoint, timeout: float = 2.0, version: int = 4) -> ProbeResult | None:
    """Query ``endpoint`` once; None when no valid reply arrives within ``timeout`` seconds."""
    family, address = resolve(endpoint)
    transmit = os.urandom(8)  # data-minimized: a random transmit timestamp, matched on reply
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.setblocking(False)
        sent_ns = time.time_ns()
        sock.sendto(wire.client_request(transmit, version), address)
        deadline = time.monotonic() + timeout
        while (remaining := deadline - time.monotonic()) > 0:
            readable, _, _ = select.select([sock], [], [], remaining)
            if not readable:
                break
            try:
                data, source = sock.recvfrom(1024)
            except OSError:
                return None  # e.g. ICMP port unreachable: nothing listens there
            received_ns = time.time_ns()
            if source[:2] != address[:2] or len(data) < wire.PACKET_LEN:
                continue
            packet = wire.parse_packet(data)
            if packet.origin_raw != transmit or packet.mode != wire.MODE_SERVER:
                continue
            offset, delay = wire.offset_and_delay(packet, sent_ns, received_ns)
            return ProbeResult(
                host=endpoint.host,
                port=endpoint.port,
                synchronized=is_synchronized(packet.leap, packet.stratum),
                leap=packet.leap,
                version=packet.version,
                mode=packet.mode,
                stratum=packet.stratum,
                poll=packet.poll,
                precision=packet.precision,
                refid=wire.refid_text(packet.refid, packet.stratum),
                root_delay=packet.root_delay,
                root_dispersion=packet.root_dispersion,
                offset=offset,
                delay=delay,
            )
    return None
