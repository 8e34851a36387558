"""Sending replies: the transmit timestamp (T3), grouping, and what happens when a send fails.

One place for what every engine must get right when a reply leaves:

- **T3 is never later than the real send.** The kernel sends the messages of one sendmmsg one
  after another, so reply k of a group is stamped with the time read just before the group plus k
  times a bound on the cost of one message: half the cost measured around the sendmmsg call
  alone (not the Python that fills the group), followed as a low envelope (a faster measurement
  is taken at once, a slower one only slowly, an outlier not at all). The measured cost also holds
  the call's fixed cost, which delays no message after the first: hence the half. The stamps lean
  early rather than late; a preemption in the middle of a call only makes the real send later.
- **T3 is never earlier than T2.** If the clock stepped back since a request arrived (the kernel
  repeats a second at a leap), the stamps are clamped to the latest receive time of the batch.
- **Groups of at most --send-batch**, whatever engine filled the replies; each group is stamped
  just before it is sent, so later groups are not stamped early by the time the earlier ones take.
- **A failed message costs only itself.** sendmmsg stops at the first message it cannot send and
  reports how many went out; the failed one is counted as a send error and skipped, and the rest
  of the group is sent.
"""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Callable, Iterable
from functools import cache
from itertools import repeat
from typing import Final

from . import mmsg
from .request import ntp_timestamp
from .shared import ANSWERED, SEND_ERRORS

MAX_STEP_NS: Final = 20_000  # above this a "per-message cost" is a preemption, not a cost
_RISE_SHIFT: Final = 4  # a slower measurement moves the estimate 1/16 of the way
# Stamps advance by half the measured cost per message: the measurement also holds the call's
# fixed cost (entering and leaving the kernel, ctypes), which delays no message after the first.
_STEP_SHIFT: Final = 1
_ERA: Final = 1 << 64
_NS: Final = 1_000_000_000
_U64: Final = struct.Struct("!Q")


@cache
def _stamps(count: int) -> struct.Struct:
    """``count`` consecutive transmit timestamps (``mmsg.Buffers.stamps``)."""
    return struct.Struct(f"!{count}Q")


class Transmitter:
    """Sends reply slots 0..count-1 of one socket's buffers with sendmmsg."""

    def __init__(self, fd: int, buffers: mmsg.Buffers, send_batch: int,
                 clock: Callable[[], int] = time.time_ns) -> None:
        self.fd = fd
        self.clock = clock  # Unix ns; tests pass a stepped one
        self.buffers = buffers
        self.send_batch = max(1, min(send_batch, buffers.batch))
        self.step_ns = 0  # estimated cost of one message within a sendmmsg
        self.calls = 0  # sendmmsg calls made
        self.largest_group = 0  # the most messages handed to one sendmmsg
        self.failures = 0  # messages sendmmsg could not send

    def send(self, count: int, counters: list[int], latest_receive_ns: int) -> None:
        """Stamp and send replies 0..count-1, in groups of at most ``send_batch``."""
        group, stamps, clock, time_ns, sendmmsg = (
            self.send_batch, self.buffers.stamps, self.clock, time.time_ns, mmsg.sendmmsg
        )
        headers_at, fd = self.buffers.tx_headers_at, self.fd
        step = ((self.step_ns >> _STEP_SHIFT) << 32) // _NS  # in 2**-32 s units
        start = 0
        while start < count:
            size = min(group, count - start)
            # Not before a request arrived, even if the clock stepped back since (a leap).
            first = ntp_timestamp(max(clock(), latest_receive_ns))
            if step and size > 1 and first + step * size < _ERA:
                values: Iterable[int] = range(first, first + step * size, step)
            else:
                values = self._stamps_slowly(first, step, size)
            _stamps(size).pack_into(stamps, start * mmsg.STAMP_SIZE, *values)
            self.calls += 1
            self.largest_group = max(self.largest_group, size)
            before = time_ns()
            sent = sendmmsg(fd, headers_at + start * mmsg.MMSG_SIZE, size, 0)
            if sent == size:
                counters[ANSWERED] += sent
                if sent > 1:
                    self._learn((time_ns() - before) // sent)
            else:
                self._resume(start, size, sent, counters)
            start += size

    @staticmethod
    def _stamps_slowly(first: int, step: int, size: int) -> Iterable[int]:
        if step == 0 or size == 1:
            return repeat(first, size)
        return [(first + k * step) % _ERA for k in range(size)]  # across the 2036 era wrap

    def _resume(self, start: int, size: int, sent: int, counters: list[int]) -> None:
        """sendmmsg stopped at message ``sent`` of a group (-1: at the first): count it as a
        send error, skip it, and send the rest of the group the same way."""
        at = self.buffers.tx_headers_at + start * mmsg.MMSG_SIZE
        remaining = size
        while True:
            sent = max(sent, 0)
            counters[ANSWERED] += sent
            counters[SEND_ERRORS] += 1
            self.failures += 1
            at += (sent + 1) * mmsg.MMSG_SIZE
            remaining -= sent + 1
            if not remaining:
                return
            self.calls += 1
            sent = mmsg.sendmmsg(self.fd, at, remaining, 0)
            if sent == remaining:
                counters[ANSWERED] += sent
                return

    def _learn(self, cost_ns: int) -> None:
        if cost_ns > MAX_STEP_NS:
            return  # the call was preempted, or ran cold: not the cost of a message
        step = self.step_ns
        if cost_ns <= step:
            self.step_ns = cost_ns
        else:
            self.step_ns = step + ((cost_ns - step) >> _RISE_SHIFT) + 1


def send_one(
    sock: socket.socket,
    reply: bytearray,
    buffers: list[bytearray],
    address: tuple[object, ...],
    ancillary: list[tuple[int, int, bytes]],
    receive_ns: int,
    clock: Callable[[], int] = time.time_ns,
) -> bool:
    """Stamp and send one reply (the plain engine): T3 is read just before the call, clamped to
    the request's receive time. False when the send failed."""
    now = clock()
    _U64.pack_into(reply, 40, ntp_timestamp(now if now >= receive_ns else receive_ns))
    try:
        if ancillary:
            sock.sendmsg(buffers, ancillary, 0, address)
        else:
            sock.sendto(reply, address)
    except OSError:
        return False
    return True
