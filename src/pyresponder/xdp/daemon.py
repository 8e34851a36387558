"""``pyresponder xdp``: load the XDP program, attach it, and keep its time state current.

One process, one loop: poll the backend once per interval, evaluate the state with syncstate (as
the socket path's supervisor does), write it into the spare slot and flip the index, and every
second write a counters snapshot for the metrics endpoint. The BPF link belongs to this process:
on SIGTERM it is closed; if the process dies, the kernel closes it. Either way the program is
detached and the socket path answers everything again.
"""

from __future__ import annotations

import contextlib
import logging
import platform
import re
import select
import signal
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from ..backend import BackendPoller, PollError
from ..endpoints import Endpoint
from ..notify import Notifier
from ..ratelimit import RateLimitPolicy
from ..syncstate import BackendSample, ServerState, SyncPolicy, evaluate
from . import counters, maps
from .libbpf import BpfError, BpfMap, BpfObject, XdpLink, attach

log = logging.getLogger("pyresponder.xdp")

PROGRAM_NAME: Final = "pyresponder_xdp"
OBJECT_PATH: Final = Path(__file__).resolve().parent.parent / "bpf" / "xdp_ntp.o"
MIN_KERNEL: Final = (6, 1)  # bpf_ktime_get_tai_ns
SNAPSHOT_INTERVAL: Final = 1.0
MAP_NAMES: Final = ("pyr_control", "pyr_slots", "pyr_counters", "pyr_rate")


@dataclass(frozen=True, slots=True)
class XdpConfig:
    interface: str
    mode: str  # auto, native or generic
    port: int
    backend: Endpoint
    policy: SyncPolicy
    poll_interval: float = 1.0
    counters_file: Path | None = None
    rate_limit: RateLimitPolicy | None = None
    object_path: Path = OBJECT_PATH


def kernel_version(release: str | None = None) -> tuple[int, int]:
    match = re.match(r"(\d+)\.(\d+)", release or platform.release())
    return (int(match.group(1)), int(match.group(2))) if match else (0, 0)


def preflight(config: XdpConfig) -> int:
    """Check what can be checked before touching the kernel; returns the interface index."""
    version = kernel_version()
    if version < MIN_KERNEL:
        raise BpfError(
            f"kernel {platform.release()} is too old for the XDP path "
            f"(needs {MIN_KERNEL[0]}.{MIN_KERNEL[1]} or later for bpf_ktime_get_tai_ns)"
        )
    try:
        return socket.if_nametoindex(config.interface)
    except OSError:
        raise BpfError(f"no network interface named {config.interface!r}") from None


def tai_offset_ns() -> int:
    """The kernel's TAI offset (what adjtimex reports as ``tai``), in whole seconds as ns.

    CLOCK_TAI is CLOCK_REALTIME plus exactly that offset; two reads microseconds apart and a
    rounding to whole seconds give it without a struct timex.
    """
    difference = time.clock_gettime_ns(time.CLOCK_TAI) - time.time_ns()
    return round(difference / maps.NS_PER_S) * maps.NS_PER_S


@dataclass
class _Flags:
    stop: bool = False
    replace: bool = False  # SIGHUP: swap in the program from the object file
    names: list[str] = field(default_factory=list)


class XdpDaemon:
    def __init__(self, config: XdpConfig) -> None:
        self.config = config
        self.notifier = Notifier()
        self.flags = _Flags()
        self.sample: BackendSample | None = None
        self.state: ServerState | None = None
        self.active = 0  # 0 until the first write, then 1 or 2
        self.last_poll_error: str | None = None
        self.link: XdpLink | None = None
        self.bpf: BpfObject

    def run(self) -> int:
        ifindex = preflight(self.config)
        self.bpf = BpfObject(self.config.object_path, max_entries=self._map_sizes())
        try:
            # Written before attaching: the program passes everything until a state exists.
            self._map("pyr_control").update(0, self._control(0))
            program_fd = self.bpf.program_fd(PROGRAM_NAME)
            try:
                self.link = attach(program_fd, ifindex, self.config.mode)
            except BpfError as error:
                raise BpfError(f"interface {self.config.interface} refuses XDP: {error}") from None
            log.info(
                "XDP program attached to %s (ifindex %d) in %s mode; answering UDP port %d; "
                "backend %s",
                self.config.interface, ifindex, self.link.mode, self.config.port,
                self.config.backend,
            )
            self._loop()
        finally:
            self.notifier.send(STOPPING=1, STATUS="detaching")
            if self.link is not None:
                self.link.close()
                log.info("XDP program detached from %s", self.config.interface)
            self.bpf.close()
            if self.config.counters_file is not None:
                with contextlib.suppress(OSError):
                    self.config.counters_file.unlink()
        return 0

    def _map_sizes(self) -> dict[str, int]:
        limit = self.config.rate_limit
        return {"pyr_rate": max(limit.slots, 1)} if limit is not None else {}

    def _control(self, active: int) -> bytes:
        return maps.control_value(active, self.config.port, self.config.rate_limit)

    def _map(self, name: str) -> BpfMap:
        sizes = {"pyr_control": maps.CONTROL.size, "pyr_slots": maps.SLOT.size,
                 "pyr_counters": maps.COUNTERS.size, "pyr_rate": 8}
        return self.bpf.map(name, sizes[name], per_cpu=name == "pyr_counters")

    def replace_program(self) -> None:
        """Load the object file again and swap it in atomically (bpf_link_update).

        The new program keeps the maps (time state, counters) of the old one, so no request
        sees a missing state and no counter restarts. Used on SIGHUP after an upgrade.
        """
        assert self.link is not None
        reuse = {name: self._map(name).fd for name in MAP_NAMES}
        new = BpfObject(self.config.object_path, reuse_maps=reuse, max_entries=self._map_sizes())
        try:
            self.link.update(new.program_fd(PROGRAM_NAME))
        except BaseException:
            new.close()
            raise
        old, self.bpf = self.bpf, new
        old.close()
        log.info("XDP program replaced on %s from %s", self.config.interface,
                 self.config.object_path)

    def _on_signal(self, signum: int, frame: object) -> None:
        if signum == signal.SIGHUP:
            self.flags.replace = True
            return
        self.flags.stop = True
        self.flags.names.append(signal.Signals(signum).name)

    def _loop(self) -> None:
        config = self.config
        poller = BackendPoller(config.backend)
        wake_read, wake_write = socket.socketpair()
        wake_read.setblocking(False)
        wake_write.setblocking(False)
        signal.set_wakeup_fd(wake_write.fileno(), warn_on_full_buffer=False)
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(signum, self._on_signal)
        assert self.link is not None
        self.notifier.send(READY=1, STATUS=f"XDP on {config.interface} ({self.link.mode} mode)")
        try:
            now = time.monotonic()
            next_poll = now
            next_snapshot = now
            next_watchdog = now
            while not self.flags.stop:
                if self.flags.replace:
                    self.flags.replace = False
                    try:
                        self.replace_program()
                    except BpfError as swap_error:
                        log.error("cannot replace the XDP program (the old one stays): %s",
                                  swap_error)
                now = time.monotonic()
                if now >= next_poll:
                    if poller.awaiting_reply:
                        self._poll_failed(f"no reply from backend {config.backend} in time")
                    error = poller.send_request()
                    if error is not None:
                        self._poll_failed(error.message)
                    self._write_state(now)
                    next_poll = max(next_poll + config.poll_interval, now)
                if now >= next_snapshot:
                    self._write_snapshot()
                    next_snapshot = now + SNAPSHOT_INTERVAL
                interval = self.notifier.watchdog_interval
                if interval is not None and now >= next_watchdog:
                    self.notifier.send(WATCHDOG=1)
                    next_watchdog = now + interval
                deadline = min(next_poll, next_snapshot)
                timeout = max(0.0, min(deadline - time.monotonic(), 1.0))
                readable, _, _ = select.select([poller.fileno(), wake_read.fileno()], [], [],
                                               timeout)
                if wake_read.fileno() in readable:
                    with contextlib.suppress(OSError):
                        wake_read.recv(4096)
                if poller.fileno() in readable:
                    result = poller.receive()
                    if isinstance(result, PollError):
                        self._poll_failed(result.message)
                    elif result is not None:
                        self.sample = result
                        if self.last_poll_error is not None:
                            log.info("backend %s answers again", config.backend)
                            self.last_poll_error = None
                        self._write_state(time.monotonic())
            log.info("received %s, shutting down", "/".join(self.flags.names) or "stop")
        finally:
            signal.set_wakeup_fd(-1)
            poller.close()
            wake_read.close()
            wake_write.close()

    def _poll_failed(self, message: str) -> None:
        if message != self.last_poll_error:
            log.warning("%s", message)
            self.last_poll_error = message

    def _write_state(self, now: float) -> None:
        """Write the current state into the spare slot, then make it the active one."""
        if self.sample is None:
            return  # never written: the kernel passes every request to the socket path
        state = evaluate(self.sample, now, self.config.policy)
        if self.active == 0 and not state.synchronized:
            # Until the first synchronized state the socket path decides (it may wait for
            # --ready-timeout or refuse to serve at all with --require-sync): keep passing.
            if self.state is None:
                log.info("not synchronized yet (%s): the kernel passes every request",
                         state.reason)
            self.state = state
            return
        policy = self.config.policy
        until = maps.valid_until(self.sample, now, policy) if state.synchronized else now
        value = maps.slot_value(maps.SlotInput(
            state=state,
            valid_until_mono_ns=int(until * maps.NS_PER_S),
            written_mono_ns=int(now * maps.NS_PER_S),
            now_unix_ns=time.time_ns(),
            tai_offset_ns=tai_offset_ns(),
        ))
        spare = 2 if self.active == 1 else 1
        self._map("pyr_slots").update(spare - 1, value)
        self._map("pyr_control").update(0, self._control(spare))
        self.active = spare
        self._log_change(state)

    def _log_change(self, state: ServerState) -> None:
        previous = self.state
        self.state = state
        if previous is None or (previous.synchronized, previous.stratum, previous.leap) != (
            state.synchronized, state.stratum, state.leap
        ):
            if state.synchronized:
                log.info("kernel replies synchronized: %s, leap %d", state.reason, state.leap)
            else:
                log.warning("kernel replies unsynchronized: %s", state.reason)

    def _write_snapshot(self) -> None:
        if self.config.counters_file is None or self.link is None:
            return
        totals = maps.sum_counters(self._map("pyr_counters").lookup_per_cpu(0))
        snapshot = counters.Snapshot(
            interface=self.config.interface,
            mode=self.link.mode,
            synchronized=self.state is not None and self.state.synchronized,
            counters=totals,
            written_at=time.time(),
        )
        try:
            counters.write(self.config.counters_file, snapshot)
        except OSError as error:
            log.warning("cannot write %s: %s", self.config.counters_file, error.strerror)
