"""The backend poller: asks the local chronyd for its state, as an NTP client would.

A mode-3 request from an ephemeral port with a random transmit timestamp; only a mode-4 reply from
the backend's address whose origin timestamp matches is accepted. One poller serves the whole
daemon; the supervisor publishes what it learns to the workers through shared memory.
"""

from __future__ import annotations

import errno
import os
import socket
import struct
import time
from dataclasses import dataclass
from typing import Final

from . import wire
from .endpoints import Endpoint, resolve
from .sockets import SCM_TIMESTAMPNS, SO_TIMESTAMPNS
from .syncstate import BackendSample

_TIMESPEC: Final = struct.Struct("@qq")
_ANCILLARY_SIZE: Final = socket.CMSG_SPACE(_TIMESPEC.size)


@dataclass(frozen=True, slots=True)
class PollError:
    message: str


class BackendPoller:
    def __init__(self, endpoint: Endpoint) -> None:
        self.endpoint = endpoint
        family, self._address = resolve(endpoint)
        self._family = family
        self._sock = self._open()
        self._pending: bytes | None = None  # transmit timestamp of the unanswered request
        self._sent_ns = 0

    def _open(self) -> socket.socket:
        sock = socket.socket(self._family, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        sock.setblocking(False)
        # The kernel's receive time: the supervisor may read the reply milliseconds late on a
        # busy host, which would show as round trip and offset that the backend never had.
        sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        # Connected: the kernel drops datagrams from any other address and reports ICMP errors.
        sock.connect(self._address)
        return sock

    def fileno(self) -> int:
        return self._sock.fileno()

    @property
    def awaiting_reply(self) -> bool:
        return self._pending is not None

    def send_request(self) -> PollError | None:
        self._pending = os.urandom(8)
        request = wire.client_request(self._pending)
        self._sent_ns = time.time_ns()
        try:
            self._sock.send(request)
        except OSError as error:
            self._pending = None
            return PollError(f"cannot send to backend {self.endpoint}: {error.strerror}")
        return None

    def receive(self) -> BackendSample | PollError | None:
        """Read what has arrived; a sample for a valid reply, None when nothing usable came."""
        result: BackendSample | PollError | None = None
        while True:
            try:
                data, ancillary, _, _ = self._sock.recvmsg(1024, _ANCILLARY_SIZE)
            except BlockingIOError:
                return result
            except OSError as error:
                if error.errno == errno.ECONNREFUSED:
                    return PollError(f"backend {self.endpoint} refused (nothing listening)")
                return PollError(f"backend {self.endpoint}: {error.strerror}")
            received_ns, received_at = time.time_ns(), time.monotonic()
            kernel_ns = _kernel_timestamp(ancillary)
            if kernel_ns:  # move both clocks back to when the reply really arrived
                received_at -= max(received_ns - kernel_ns, 0) / 1e9
                received_ns = kernel_ns
            sample = self._accept(data, received_ns, received_at)
            if sample is not None:
                result = sample

    def _accept(self, data: bytes, received_ns: int, received_at: float) -> BackendSample | None:
        if self._pending is None or len(data) < wire.PACKET_LEN:
            return None
        packet = wire.parse_packet(data)
        if packet.mode != wire.MODE_SERVER or packet.origin_raw != self._pending:
            return None  # stale, duplicated or forged
        self._pending = None
        offset, delay = wire.offset_and_delay(packet, self._sent_ns, received_ns)
        return BackendSample(
            leap=packet.leap,
            stratum=packet.stratum,
            precision=packet.precision,
            refid=packet.refid,
            reference_ts=packet.reference_ts,
            root_delay=packet.root_delay,
            root_dispersion=packet.root_dispersion,
            offset=offset,
            delay=delay,
            received_at=received_at,
        )

    def close(self) -> None:
        self._sock.close()


def _kernel_timestamp(ancillary: list[tuple[int, int, bytes]]) -> int:
    """The SO_TIMESTAMPNS receive time in Unix ns, 0 when the kernel gave none."""
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == SCM_TIMESTAMPNS and len(data) >= _TIMESPEC.size:
            seconds, nanos = _TIMESPEC.unpack_from(data)
            return int(seconds) * 1_000_000_000 + int(nanos)
    return 0
