"""The supervisor: owns the sockets and runs the loop that drives the daemon's parts.

The parts each have one job: ``monitor.BackendMonitor`` (poll chronyd, decide the served state,
holdover), ``workerpool.WorkerPool`` (which workers run, restart backoff), ``control.
ServiceControl`` (sd_notify: READY, STATUS, the watchdog gated on live workers) and ``handoff``
(sockets to and from another instance). This module forks the processes and waits on timers.

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

from . import __version__, handoff, metrics, processes
from .control import ServiceControl
from .endpoints import Endpoint
from .monitor import BackendMonitor
from .ratelimit import RateLimiter, RateLimitPolicy
from .shared import SharedState
from .sockets import DEFAULT_RECEIVE_BUFFER, Listener, open_listeners, systemd_sockets
from .syncstate import SyncPolicy
from .worker import Worker, become_child, counter_summary
from .workerpool import WorkerPool

log = logging.getLogger(__name__)

STOP_GRACE: Final = 5.0  # seconds a worker gets to finish before SIGKILL
METRICS_RESTART_DELAY: Final = 1.0
LONGEST_WAIT: Final = 1.0  # the loop looks at its timers at least this often
# Tests only: a worker exits with this status right after the fork (a crash loop on demand).
CRASH_WORKERS_ENV: Final = "PYRESPONDER_TEST_CRASH_WORKERS"


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
    reuse_port: bool = False  # SO_REUSEPORT on --listen sockets (several sockets on one port)


@dataclass(slots=True)
class _Signals:
    stop: bool = False
    children: bool = False
    names: list[str] = field(default_factory=list)


class Supervisor:
    """Wires the parts together and runs the loop: sockets, backend monitor, workers, control."""

    def __init__(self, config: ServeConfig) -> None:
        self.config = config
        self.control = ServiceControl()
        self.signals = _Signals()
        self.pool = WorkerPool(config.workers, self._fork_worker)
        self.shared = SharedState(config.workers)  # resized once the sockets are known
        self.listeners: list[Listener] = []
        self.metrics_pid = 0
        self.metrics_restart_at = 0.0
        # Created before any fork: the workers share its table.
        self.limiter = RateLimiter(config.rate_limit) if config.rate_limit else None
        self.handoff: handoff.ControlServer | None = None
        self.monitor: BackendMonitor | None = None
        self.ready = False

    # --- life cycle ---

    def run(self) -> int:
        inherited = systemd_sockets()
        if self.config.takeover is not None:
            inherited += handoff.fetch_sockets(self.config.takeover)
        self.listeners = open_listeners(
            inherited, self.config.listen, self.config.receive_buffer,
            self.config.kernel_timestamps, reuse_port=self.config.reuse_port,
        )
        if not self.listeners:
            raise ValueError("nothing to listen on: no --listen and no sockets from systemd")
        self.shared = SharedState(self.config.workers, len(self.listeners))
        if self.config.metrics is not None:
            _check_tcp_bind(self.config.metrics)
        control_path = self.config.control or self.config.takeover
        if control_path is not None:
            self.handoff = handoff.ControlServer(
                control_path, self._hand_over, self._describe, self._finish
            )
            if self.config.takeover is None:
                self.handoff.publish()
        log.info(
            "listening on %s; backend %s; %d workers",
            ", ".join(listener.name for listener in self.listeners),
            self.config.backend,
            self.config.workers,
        )
        self.monitor = BackendMonitor(self.config.backend, self.config.policy, self.shared,
                                      self.config.poll_interval, time.monotonic())
        wake_read, wake_write = socket.socketpair()
        wake_read.setblocking(False)
        wake_write.setblocking(False)
        signal.set_wakeup_fd(wake_write.fileno(), warn_on_full_buffer=False)
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD):
            signal.signal(signum, self._on_signal)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        try:
            self._loop(self.monitor, wake_read)
        finally:
            self.control.stopping()
            self._stop_children()
            signal.set_wakeup_fd(-1)
            self.monitor.close()
            if self.handoff is not None:
                self.handoff.close()
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

    def _loop(self, monitor: BackendMonitor, wake: socket.socket) -> None:
        config = self.config
        started = time.monotonic()
        next_stats = started + config.stats_interval
        while not self.signals.stop:
            now = time.monotonic()
            monitor.poll_if_due(now)
            if monitor.update(now):
                self.control.status(self._status())
            state = monitor.state
            synchronized = state is not None and state.synchronized
            if not self.ready and (synchronized or now - started >= config.ready_timeout):
                if not synchronized and config.require_sync:
                    reason = state.reason if state else "no state"
                    raise RuntimeError(
                        f"not synchronized within --ready-timeout {config.ready_timeout:g} s "
                        f"({reason}); --require-sync: exiting without serving"
                    )
                self._become_ready(now)
            if self.signals.children:
                self.signals.children = False
                self._reap(now)
            if self.ready:
                self._tend_workers(now)
            if config.metrics is not None and not self.metrics_pid \
                    and now >= self.metrics_restart_at:
                self._spawn_metrics(config.metrics, now)
            # Before READY the wait for the backend is on purpose; after it, only live workers
            # make the service work.
            self.control.watchdog(now, working=not self.ready or self.pool.healthy(now))
            if config.stats_interval > 0 and now >= next_stats:
                log.info("served: %s", counter_summary(self.shared.totals()))
                next_stats = now + config.stats_interval
            timeout = self._wait_time(time.monotonic(), started)
            watched = [monitor.fileno(), wake.fileno()]
            if self.handoff is not None:
                watched.append(self.handoff.fileno())
            readable, _, _ = select.select(watched, [], [], timeout)
            if self.handoff is not None and self.handoff.fileno() in readable:
                self.handoff.handle()
            if wake.fileno() in readable:
                with contextlib.suppress(OSError):
                    wake.recv(4096)
            if monitor.fileno() in readable:
                monitor.receive()
        log.info("received %s, shutting down", "/".join(self.signals.names) or "stop")

    def _wait_time(self, now: float, started: float) -> float:
        """Seconds until the next timer: backend poll, worker restart, watchdog, ready."""
        assert self.monitor is not None
        deadlines = [self.monitor.next_poll, now + LONGEST_WAIT]
        if self.ready:
            restart = self.pool.next_restart()
            if restart is not None:
                deadlines.append(restart)
            healthy_at = self.pool.next_healthy(now)
            if healthy_at is not None:
                deadlines.append(healthy_at)
            if self.pool.healthy(now) and (ping := self.control.next_ping()) is not None:
                deadlines.append(ping)
        else:
            deadlines.append(started + self.config.ready_timeout)
            if (ping := self.control.next_ping()) is not None:
                deadlines.append(ping)
        if self.config.metrics is not None and not self.metrics_pid:
            deadlines.append(self.metrics_restart_at)
        return max(0.0, min(deadlines) - now)

    def _status(self) -> str:
        state = self.monitor.state if self.monitor else None
        if state is None:
            sync = "starting"
        elif state.synchronized:
            sync = f"synchronized, {state.reason}"
        else:
            sync = f"unsynchronized ({state.reason})"
        return f"{sync}; {self.pool.running}/{self.config.workers} workers"

    # --- workers ---

    def _become_ready(self, now: float) -> None:
        self.ready = True
        self.pool.start_all(now)
        self._record_workers()
        self.control.ready(self._status(), os.getpid())
        log.info("ready: %s", self._status())
        if self.config.takeover is not None and self.handoff is not None:
            # Serving now, side by side with the predecessor: let it go.
            handoff.replace_predecessor(self.config.takeover, self.handoff)

    def _fork_worker(self, index: int) -> int:
        parent = os.getpid()
        pid = os.fork()
        if pid == 0:  # the worker
            code = 1
            try:
                self.control.close()
                crash = os.environ.get(CRASH_WORKERS_ENV, "")
                if crash.isdigit():
                    os._exit(int(crash))
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
        return pid

    def _tend_workers(self, now: float) -> None:
        started = self.pool.tend(now)
        for index in started:
            log.info("worker %d restarted as pid %d", index, self.pool.slots[index].pid)
        if started:
            self._record_workers()
            self.control.status(self._status())

    def _record_workers(self) -> None:
        self.shared.record_workers(self.pool.running, self.pool.restarts)

    # --- control socket ---

    def _hand_over(self) -> tuple[list[str], list[int]]:
        return (
            [listener.name for listener in self.listeners],
            [listener.sock.fileno() for listener in self.listeners],
        )

    def _describe(self) -> dict[str, object]:
        state = self.monitor.state if self.monitor else None
        return {
            "pid": os.getpid(),
            "version": __version__,
            "synchronized": bool(state and state.synchronized),
            "holdover": bool(state and state.holdover),
            "state": state.reason if state else "starting",
            "workers": self.pool.running,
            "listeners": [listener.name for listener in self.listeners],
        }

    def _finish(self) -> None:
        self.signals.stop = True
        self.signals.names.append("takeover")

    # --- metrics process ---

    def _spawn_metrics(self, endpoint: Endpoint, now: float) -> None:
        sockets = [
            metrics.SocketInfo(listener.name, os.fstat(listener.sock.fileno()).st_ino)
            for listener in self.listeners
        ]
        collector = metrics.Collector(self.shared, sockets, self.config.policy,
                                      self.config.workers)
        try:
            pid = os.fork()
        except OSError as error:
            self.metrics_restart_at = now + METRICS_RESTART_DELAY
            log.error("cannot start the metrics process: %s; trying again in %.0f s", error,
                      METRICS_RESTART_DELAY)
            return
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

    # --- ending ---

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
                self.metrics_restart_at = now + METRICS_RESTART_DELAY
                log.error("metrics process %s; restarting in %.0f s",
                          processes.describe_status(status), METRICS_RESTART_DELAY)
                continue
            death = self.pool.died(pid, now)
            if death is None:
                continue
            index, delay = death
            self._record_workers()
            log.error("worker %d (pid %d) %s; restarting in %.1f s", index, pid,
                      processes.describe_status(status), delay)
            self.control.status(self._status())

    def _stop_children(self) -> None:
        pids = self.pool.pids()
        if self.metrics_pid:
            pids.append(self.metrics_pid)
        for pid in processes.stop(pids, STOP_GRACE):
            log.error("child pid %d did not stop in %.0f s: killed it", pid, STOP_GRACE)
        self.pool.forget()
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
