"""The Prometheus endpoint (``--metrics ADDR:PORT``), served by a child of the supervisor.

The supervisor stays single-threaded (it forks workers, and forking a threaded process is a known
hazard), so the HTTP server runs in a process of its own that only reads the shared memory. Names
follow ntpd-rs (``ntp_server_*``, ``ntp_system_*``) where they overlap; the rest are prefixed
``pyresponder_``.
"""

from __future__ import annotations

import contextlib
import os
import platform
import signal
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from wsgiref.simple_server import WSGIRequestHandler, make_server

from . import __version__
from .endpoints import Endpoint
from .shared import SharedState
from .syncstate import SyncPolicy, evaluate
from .xdp import counters as xdp_counters

DROP_REASONS = {"dropped_length": "length", "dropped_version": "version", "dropped_mode": "mode"}


def available() -> bool:
    try:
        import prometheus_client  # noqa: F401, PLC0415
    except ImportError:
        return False
    return True


@dataclass(frozen=True, slots=True)
class SocketInfo:
    name: str  # listen_address label
    inode: int  # to find the socket in /proc/net/udp{,6}


def kernel_socket_stats(
    inodes: set[int], proc: Path = Path("/proc/self/net")
) -> dict[int, tuple[int, int]]:
    """(receive queue bytes, drops) per socket inode, from /proc/net/udp and udp6.

    ``drops`` counts datagrams the kernel discarded because the socket's receive buffer was full:
    the loss no user-space counter can see.
    """
    found: dict[int, tuple[int, int]] = {}
    for table in ("udp", "udp6"):
        with contextlib.suppress(OSError), (proc / table).open() as lines:
            next(lines, None)  # header
            for line in lines:
                fields = line.split()
                if len(fields) < 13:
                    continue
                inode = int(fields[9])
                if inode in inodes:
                    rx_queue = int(fields[4].split(":")[1], 16)
                    found[inode] = (rx_queue, int(fields[12]))
    return found


def instance_labels(environ: Mapping[str, str]) -> dict[str, str]:
    """Labels of ``pyresponder_instance_info``: which colour and release this process is.

    The unit template sets PYRESPONDER_COLOUR (its instance name) and the rollout's environment
    file PYRESPONDER_RELEASE. The metrics port is shared by both colours during a swap, so a scrape
    reaches one of them at random; counting the colours seen over a window tells whether both run.
    """
    return {
        "colour": environ.get("PYRESPONDER_COLOUR", ""),
        "release": environ.get("PYRESPONDER_RELEASE", ""),
    }


class Collector:
    """Reads the shared memory at scrape time; nothing is cached between scrapes."""

    def __init__(self, shared: SharedState, sockets: Sequence[SocketInfo], policy: SyncPolicy,
                 workers: int, xdp_snapshot: Path | None = None) -> None:
        self.shared = shared
        self.sockets = list(sockets)
        self.policy = policy
        self.workers = workers
        self.xdp_snapshot = xdp_snapshot or xdp_counters.default_path()

    def collect(self) -> Iterator[object]:
        from prometheus_client.core import (  # noqa: PLC0415 (optional dependency)
            CounterMetricFamily,
            GaugeMetricFamily,
            InfoMetricFamily,
        )

        labels = ["listen_address"]
        # ntp_server_* counters say which path answered: "socket" here, "xdp" for the kernel
        # fast path (pyresponder xdp, whose counters arrive through a snapshot file).
        path_labels = [*labels, "path"]
        xdp = xdp_counters.read(self.xdp_snapshot)
        per_socket = [self.shared.listener_totals(i) for i in range(len(self.sockets))]
        simple = {
            "received": ("ntp_server_received_packets", "Requests received"),
            "answered": ("ntp_server_accepted_packets", "Requests answered"),
            "send_errors": ("ntp_server_response_send_errors", "Replies the kernel refused"),
            "rate_limited": ("ntp_server_rate_limited_packets", "Requests over the rate limit"),
            "kod_sent": ("pyresponder_kod_sent", "Kiss-o'-death RATE replies sent"),
        }
        for key, (name, text) in simple.items():
            with_path = name.startswith("ntp_server_")
            family = CounterMetricFamily(name, text, labels=path_labels if with_path else labels)
            for info, totals in zip(self.sockets, per_socket, strict=True):
                family.add_metric([info.name, "socket"] if with_path else [info.name],
                                  totals[key])
            if xdp is not None and key in xdp.counters and with_path:
                family.add_metric([xdp.interface, "xdp"], xdp.counters[key])
            yield family
        if xdp is not None:
            yield from _xdp_families(xdp, GaugeMetricFamily, CounterMetricFamily)
        ignored = CounterMetricFamily(
            "ntp_server_ignored_packets", "Requests dropped as malformed or not to be answered",
            labels=path_labels,
        )
        dropped = CounterMetricFamily(
            "pyresponder_dropped_packets", "Requests dropped, by reason",
            labels=[*labels, "reason"],
        )
        for info, totals in zip(self.sockets, per_socket, strict=True):
            ignored.add_metric([info.name, "socket"], sum(totals[key] for key in DROP_REASONS))
            for key, reason in DROP_REASONS.items():
                dropped.add_metric([info.name, reason], totals[key])
        yield ignored
        yield dropped

        kernel = kernel_socket_stats({info.inode for info in self.sockets})
        drops = CounterMetricFamily(
            "pyresponder_socket_receive_drops",
            "Datagrams the kernel dropped because the socket's receive buffer was full",
            labels=labels,
        )
        queue = GaugeMetricFamily(
            "pyresponder_socket_receive_queue_bytes", "Bytes waiting in the receive buffer",
            labels=labels,
        )
        for info in self.sockets:
            rx_queue, drop_count = kernel.get(info.inode, (0, 0))
            drops.add_metric([info.name], drop_count)
            queue.add_metric([info.name], rx_queue)
        yield drops
        yield queue

        yield from self._backend(GaugeMetricFamily, CounterMetricFamily)

        supervisor = self.shared.supervisor_stats()
        yield GaugeMetricFamily("pyresponder_workers", "Worker processes running",
                                value=supervisor.workers_running)
        yield GaugeMetricFamily("pyresponder_workers_configured", "Worker processes wanted",
                                value=self.workers)
        yield CounterMetricFamily("pyresponder_worker_restarts", "Workers restarted after dying",
                                  value=supervisor.worker_restarts)
        build = InfoMetricFamily("pyresponder_build", "Version of pyresponder and Python")
        build.add_metric([], {"version": __version__, "python": platform.python_version()})
        yield build
        instance = InfoMetricFamily(
            "pyresponder_instance", "Colour and release of this instance (from its unit)"
        )
        instance.add_metric([], instance_labels(os.environ))
        yield instance

    def _backend(self, gauge: type, counter: type) -> Iterator[object]:
        view = self.shared.latest()
        sample = view.latest
        now = time.monotonic()
        state = evaluate(view, now, self.policy)
        yield gauge("pyresponder_synchronized", "1 when replies say synchronized",
                    value=int(state.synchronized))
        yield gauge("pyresponder_backend_holdover",
                    "1 while replies carry the last synchronized state because the backend is "
                    "unsynchronized or silent (--holdover)", value=int(state.holdover))
        yield gauge("ntp_system_stratum", "Stratum served to clients", value=state.stratum)
        yield gauge("ntp_system_leap_indicator", "Leap indicator served to clients",
                    value=state.leap)
        stats = self.shared.poller_stats()
        yield counter("pyresponder_backend_polls", "Requests sent to the backend",
                      value=stats.polls)
        yield counter("pyresponder_backend_poll_failures",
                      "Backend polls without a valid reply", value=stats.failures)
        if sample is None:
            return
        yield gauge("pyresponder_backend_stratum", "Stratum the backend reported",
                    value=sample.stratum)
        yield gauge("pyresponder_backend_leap_indicator", "Leap indicator the backend reported",
                    value=sample.leap)
        yield gauge("pyresponder_backend_offset_seconds",
                    "Backend time minus local time at the last poll", value=sample.offset)
        yield gauge("pyresponder_backend_delay_seconds", "Round trip to the backend",
                    value=sample.delay)
        yield gauge("ntp_system_root_delay_seconds", "Root delay of the backend",
                    value=sample.root_delay)
        yield gauge("ntp_system_root_dispersion_seconds", "Root dispersion of the backend",
                    value=sample.root_dispersion)
        yield gauge("pyresponder_backend_last_reply_age_seconds",
                    "Seconds since the last valid backend reply", value=now - sample.received_at)


def _xdp_families(snapshot: xdp_counters.Snapshot, gauge: type,
                  counter: type) -> Iterator[object]:
    """The kernel fast path's own figures (what it handed to the socket path, and its mode)."""
    attached = gauge("pyresponder_xdp_attached", "1 while the XDP program is attached",
                     labels=["interface", "mode"])
    attached.add_metric([snapshot.interface, snapshot.mode], 1)
    yield attached
    passed = counter("pyresponder_xdp_passed_packets",
                     "Requests the XDP program left to the socket path, by reason",
                     labels=["interface", "reason"])
    for key, value in sorted(snapshot.counters.items()):
        if key.startswith("passed_"):
            passed.add_metric([snapshot.interface, key.removeprefix("passed_")], value)
    yield passed
    yield counter("pyresponder_xdp_unsynchronized_replies",
                  "Replies the XDP program sent with LI=3 (unsynchronized)",
                  value=snapshot.counters.get("answered_unsynchronized", 0))


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass  # no log line per scrape


def serve(endpoint: Endpoint, collector: Collector) -> int:
    """Run the HTTP endpoint until SIGTERM (the body of the metrics process).

    The listening socket has SO_REUSEPORT, as the NTP sockets are shared: while two instances
    overlap (a colour swap or a takeover) both answer scrapes on the same port, each with its own
    figures, and the survivor keeps the port without a gap.
    """
    from prometheus_client import CollectorRegistry, make_wsgi_app  # noqa: PLC0415
    from prometheus_client.exposition import ThreadingWSGIServer  # noqa: PLC0415

    class Server(ThreadingWSGIServer):
        address_family = endpoint.family
        allow_reuse_port = True

    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)  # type: ignore[arg-type]
    server = make_server(endpoint.host, endpoint.port, make_wsgi_app(registry), Server,
                         handler_class=_QuietHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    parent = os.getppid()
    while os.getppid() == parent:
        if signal.sigtimedwait({signal.SIGTERM, signal.SIGINT}, 1.0) is not None:
            break
    server.shutdown()
    thread.join(2)
    return 0
