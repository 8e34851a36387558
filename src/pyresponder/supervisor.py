"""The supervisor: owns the sockets, polls the backend, forks and tends the workers.

Start-up order matters for zero-downtime swaps: the workers are forked only once the backend has
given a synchronized answer (or --ready-timeout has passed), so a new instance that shares the
sockets with an old one never answers clients with "unsynchronized" while the old one would
answer correctly. READY=1 follows right after the fork.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import signal
import socket
import time
from dataclasses import dataclass, field
from typing import Final

from . import __version__, handoff, metrics
from .backend import BackendPoller, PollError
from .endpoints import Endpoint
from .notify import Notifier
from .ratelimit import RateLimiter, RateLimitPolicy
from .shared import SharedState
from .sockets import DEFAULT_RECEIVE_BUFFER, Listener, open_listeners, systemd_sockets
from .syncstate import BackendSample, ServerState, SyncPolicy, evaluate
from .worker import Worker, become_child, counter_summary

log = logging.getLogger(__name__)

STOP_GRACE: Final = 5.0  # seconds a worker gets to finish before SIGKILL
RESTART_BACKOFF_MAX: Final = 5.0
QUICK_DEATH: Final = 1.0  # a worker that dies sooner than this after its start is crash-looping


@dataclass(frozen=True, slots=True)
class ServeConfig:
    listen: tuple[Endpoint, ...]
    backend: Endpoint
    workers: int
    policy: SyncPolicy
    ready_timeout: float
    poll_interval: float = 1.0
    receive_buffer: int = DEFAULT_RECEIVE_BUFFER
    stats_interval: float = 300.0
    io: str = "batch"
    batch: int = 64
    send_batch: int = 16
    metrics: Endpoint | None = None
    rate_limit: RateLimitPolicy | None = None
    kernel_timestamps: bool = True
    require_sync: bool = False  # at --ready-timeout without sync: exit instead of serving
    worker_sockets: str = "shared"  # or "spread": worker i reads sockets i, i+N, ...
    control: str | None = None  # Unix socket path that hands our sockets to a successor
    takeover: str | None = None  # control socket of the instance to take the sockets from


@dataclass(slots=True)
class _Slot:
    pid: int = 0
    started_at: float = 0.0
    restart_at: float = 0.0
    quick_deaths: int = 0


@dataclass(slots=True)
class _Signals:
    stop: bool = False
    children: bool = False
    names: list[str] = field(default_factory=list)


class Supervisor:
    def __init__(self, config: ServeConfig) -> None:
        self.config = config
        self.notifier = Notifier()
        self.signals = _Signals()
        self.slots = [_Slot() for _ in range(config.workers)]
        self.shared = SharedState(config.workers)  # resized once the sockets are known
        self.listeners: list[Listener] = []
        self.worker_restarts = 0
        self.metrics_pid = 0
        self.metrics_restart_at = 0.0
        # Created before any fork: the workers share its table.
        self.limiter = RateLimiter(config.rate_limit) if config.rate_limit else None
        self.control: handoff.ControlServer | None = None
        self.awaiting_takeover = config.takeover is not None
        self.state: ServerState | None = None
        self.sample: BackendSample | None = None
        self.ready = False
        self.last_poll_error: str | None = None

    # --- life cycle ---

    def run(self) -> int:
        inherited = systemd_sockets()
        if self.config.takeover is not None:
            inherited += handoff.fetch_sockets(self.config.takeover)
        endpoints = self.config.listen
        self.listeners = open_listeners(
            inherited, endpoints, self.config.receive_buffer, self.config.kernel_timestamps
        )
        if not self.listeners:
            raise ValueError("nothing to listen on: no --listen and no sockets from systemd")
        self.shared = SharedState(self.config.workers, len(self.listeners))
        if self.config.metrics is not None:
            _check_tcp_bind(self.config.metrics)
        control_path = self.config.control or self.config.takeover
        if control_path is not None:
            self.control = handoff.ControlServer(
                control_path, self._hand_over, self._describe, self._finish
            )
            if not self.awaiting_takeover:
                self.control.publish()
        log.info(
            "listening on %s; backend %s; %d workers",
            ", ".join(listener.name for listener in self.listeners),
            self.config.backend,
            self.config.workers,
        )
        poller = BackendPoller(self.config.backend)
        wake_read, wake_write = socket.socketpair()
        wake_read.setblocking(False)
        wake_write.setblocking(False)
        signal.set_wakeup_fd(wake_write.fileno(), warn_on_full_buffer=False)
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD):
            signal.signal(signum, self._on_signal)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        try:
            self._loop(poller, wake_read)
        finally:
            self.notifier.send(STOPPING=1, STATUS="stopping")
            self._stop_workers()
            signal.set_wakeup_fd(-1)
            poller.close()
            if self.control is not None:
                self.control.close()
            wake_read.close()
            wake_write.close()
            for listener in self.listeners:
                listener.sock.close()
            log.info("stopped; %s", counter_summary(self.shared.totals()))
        return 0

    def _on_signal(self, signum: int, frame: object) -> None:
        if signum == signal.SIGCHLD:
            self.signals.children = True
        else:
            self.signals.stop = True
            self.signals.names.append(signal.Signals(signum).name)

    def _loop(self, poller: BackendPoller, wake: socket.socket) -> None:
        config = self.config
        started = time.monotonic()
        next_poll = started
        next_watchdog = started
        next_stats = started + config.stats_interval
        while not self.signals.stop:
            now = time.monotonic()
            if now >= next_poll:
                if poller.awaiting_reply:
                    self._poll_failed(f"no reply from backend {config.backend} in time")
                error = poller.send_request()
                if error is not None:
                    self._poll_failed(error.message)
                next_poll = max(next_poll + config.poll_interval, now)
            self._update_state(now)
            synchronized = self.state is not None and self.state.synchronized
            if not self.ready and (synchronized or now - started >= config.ready_timeout):
                if not synchronized and config.require_sync:
                    reason = self.state.reason if self.state else "no state"
                    raise RuntimeError(
                        f"not synchronized within --ready-timeout {config.ready_timeout:g} s "
                        f"({reason}); --require-sync: exiting without serving"
                    )
                self._become_ready()
            if self.signals.children:
                self.signals.children = False
                self._reap(now)
            if self.ready:
                self._tend_workers(now)
            metrics_due = not self.metrics_pid and now >= self.metrics_restart_at
            if config.metrics is not None and metrics_due:
                self._spawn_metrics(config.metrics)
            interval = self.notifier.watchdog_interval
            if interval is not None and now >= next_watchdog:
                self.notifier.send(WATCHDOG=1)
                next_watchdog = now + interval
            if config.stats_interval > 0 and now >= next_stats:
                log.info("served: %s", counter_summary(self.shared.totals()))
                next_stats = now + config.stats_interval
            deadline = min(next_poll, next_watchdog if interval is not None else next_poll)
            if not self.ready:
                deadline = min(deadline, started + config.ready_timeout)
            timeout = max(0.0, min(deadline - time.monotonic(), 1.0))
            watched = [poller.fileno(), wake.fileno()]
            if self.control is not None:
                watched.append(self.control.fileno())
            readable, _, _ = select.select(watched, [], [], timeout)
            if self.control is not None and self.control.fileno() in readable:
                self.control.handle()
            if wake.fileno() in readable:
                with contextlib.suppress(OSError):
                    wake.recv(4096)
            if poller.fileno() in readable:
                self._handle_reply(poller.receive())
        log.info("received %s, shutting down", "/".join(self.signals.names) or "stop")

    # --- backend state ---

    def _handle_reply(self, result: BackendSample | PollError | None) -> None:
        if isinstance(result, PollError):
            self._poll_failed(result.message)
        elif result is not None:
            self.shared.record_poll(ok=True)
            self.shared.publish(result)
            self.sample = result
            if self.last_poll_error is not None:
                log.info("backend %s answers again", self.config.backend)
                self.last_poll_error = None

    def _poll_failed(self, message: str) -> None:
        self.shared.record_poll(ok=False)
        if message != self.last_poll_error:
            log.warning("%s", message)
            self.last_poll_error = message

    def _update_state(self, now: float) -> None:
        state = evaluate(self.sample, now, self.config.policy)
        previous = self.state
        self.state = state
        changed = (
            previous is None
            or previous.synchronized != state.synchronized
            or previous.stratum != state.stratum
            or previous.leap != state.leap
        )
        if not changed:
            return
        if previous is None and not state.synchronized:
            log.info("waiting for backend %s: %s", self.config.backend, state.reason)
        elif state.synchronized:
            offset = self.sample.offset if self.sample else 0.0
            log.info("synchronized: %s, local clock offset %+.6f s", state.reason, offset)
        else:
            log.warning("unsynchronized: %s; replies say LI=3 stratum 0", state.reason)
        self.notifier.send(STATUS=self._status())

    def _status(self) -> str:
        state = self.state
        running = sum(1 for slot in self.slots if slot.pid)
        sync = f"synchronized, {state.reason}" if state and state.synchronized else (
            f"unsynchronized ({state.reason})" if state else "starting"
        )
        return f"{sync}; {running}/{len(self.slots)} workers"

    # --- workers ---

    def _become_ready(self) -> None:
        self.ready = True
        for index in range(len(self.slots)):
            self._spawn(index, time.monotonic())
        self.notifier.send(READY=1, STATUS=self._status(), MAINPID=os.getpid())
        log.info("ready: %s", self._status())
        if self.config.takeover is not None and self.control is not None:
            # Serving now, side by side with the predecessor: let it go.
            handoff.tell_to_finish(self.config.takeover)
            self.control.publish()
            self.awaiting_takeover = False
            log.info("took over from the instance at %s", self.config.takeover)

    # --- control socket ---

    def _hand_over(self) -> tuple[list[str], list[int]]:
        return (
            [listener.name for listener in self.listeners],
            [listener.sock.fileno() for listener in self.listeners],
        )

    def _describe(self) -> dict[str, object]:
        state = self.state
        return {
            "pid": os.getpid(),
            "version": __version__,
            "synchronized": bool(state and state.synchronized),
            "state": state.reason if state else "starting",
            "workers": sum(1 for slot in self.slots if slot.pid),
            "listeners": [listener.name for listener in self.listeners],
        }

    def _finish(self) -> None:
        self.signals.stop = True
        self.signals.names.append("takeover")

    def _spawn(self, index: int, now: float) -> None:
        parent = os.getpid()
        pid = os.fork()
        if pid == 0:  # the worker
            code = 1
            try:
                self.notifier.close()
                config = self.config
                code = Worker(
                    index, self.listeners, self.shared, config.policy, parent,
                    io=config.io, batch=config.batch, send_batch=config.send_batch,
                    limiter=self.limiter,
                    spread_over=config.workers if config.worker_sockets == "spread" else 0,
                ).run()
            except BaseException:
                log.exception("worker %d crashed", index)
            finally:
                logging.shutdown()
                os._exit(code)
        slot = self.slots[index]
        slot.pid, slot.started_at, slot.restart_at = pid, now, 0.0
        self._record_workers()

    def _tend_workers(self, now: float) -> None:
        for index, slot in enumerate(self.slots):
            if not slot.pid and now >= slot.restart_at:
                self._spawn(index, now)
                self.worker_restarts += 1
                self._record_workers()
                log.info("worker %d restarted as pid %d", index, self.slots[index].pid)
                self.notifier.send(STATUS=self._status())

    def _record_workers(self) -> None:
        running = sum(1 for slot in self.slots if slot.pid)
        self.shared.record_workers(running, self.worker_restarts)

    def _spawn_metrics(self, endpoint: Endpoint) -> None:
        sockets = [
            metrics.SocketInfo(listener.name, os.fstat(listener.sock.fileno()).st_ino)
            for listener in self.listeners
        ]
        collector = metrics.Collector(self.shared, sockets, self.config.policy,
                                      self.config.workers)
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                become_child("pyresponder-m")
                for listener in self.listeners:
                    listener.sock.close()  # this process must not keep the NTP sockets open
                code = metrics.serve(endpoint, collector)
            except BaseException:
                log.exception("metrics endpoint on %s failed", endpoint)
            finally:
                logging.shutdown()
                os._exit(code)
        self.metrics_pid = pid
        log.info("metrics on http://%s/metrics (pid %d)", endpoint, pid)

    def _reap(self, now: float) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            if pid == self.metrics_pid:
                self.metrics_pid = 0
                self.metrics_restart_at = now + 1.0
                log.error("metrics process %s; restarting in 1 s", _describe_status(status))
                continue
            for index, slot in enumerate(self.slots):
                if slot.pid != pid:
                    continue
                slot.pid = 0
                self._record_workers()
                if now - slot.started_at < QUICK_DEATH:
                    slot.quick_deaths += 1
                else:
                    slot.quick_deaths = 0
                delay = min(0.1 * 2**slot.quick_deaths, RESTART_BACKOFF_MAX) if (
                    slot.quick_deaths
                ) else 0.0
                slot.restart_at = now + delay
                log.error(
                    "worker %d (pid %d) %s; restarting in %.1f s",
                    index,
                    pid,
                    _describe_status(status),
                    delay,
                )

    def _stop_workers(self) -> None:
        pids = [slot.pid for slot in self.slots if slot.pid]
        if self.metrics_pid:
            pids.append(self.metrics_pid)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE
        remaining = set(pids)
        while remaining and time.monotonic() < deadline:
            for pid in list(remaining):
                try:
                    done, _ = os.waitpid(pid, os.WNOHANG)
                except ChildProcessError:
                    done = pid
                if done:
                    remaining.discard(pid)
            if remaining:
                time.sleep(0.01)
        for pid in remaining:
            log.error("worker pid %d did not stop in %.0f s: killing it", pid, STOP_GRACE)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
        for slot in self.slots:
            slot.pid = 0
        self.metrics_pid = 0


def _check_tcp_bind(endpoint: Endpoint) -> None:
    """Fail at start-up, with the address in the message, if the metrics port is taken.

    Another pyresponder (the other colour, or the instance being taken over) shares the port
    through SO_REUSEPORT; any other program holding it is a conflict.
    """
    with socket.socket(endpoint.family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        try:
            probe.bind((endpoint.host, endpoint.port))
        except OSError as error:
            raise OSError(error.errno, f"cannot serve metrics on {endpoint}: {error.strerror}")\
                from None


def _describe_status(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"was killed by {signal.Signals(os.WTERMSIG(status)).name}"
    return f"exited with status {os.waitstatus_to_exitcode(status)}"
