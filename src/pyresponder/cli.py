"""Command line: ``pyresponder serve``, ``pyresponder probe`` and ``pyresponder xdp``."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from typing import NoReturn

from . import __version__, metrics
from .endpoints import Endpoint, parse_endpoint, resolve
from .probe import probe
from .ratelimit import RateLimitPolicy
from .sockets import DEFAULT_RECEIVE_BUFFER
from .supervisor import ServeConfig, Supervisor
from .syncstate import SyncPolicy
from .xdp.command import add_xdp_command

EXIT_OK = 0
EXIT_UNSYNCHRONIZED = 1
EXIT_USAGE = 2
EXIT_NO_ANSWER = 2
DEFAULT_LISTEN = "[::]:123"
DEFAULT_BACKEND = "127.0.0.1:11123"
MAX_WORKERS = 1024


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr (exit 2), as scripts want it."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} must be a positive number of seconds")
    return value


def _workers(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= MAX_WORKERS:
        raise argparse.ArgumentTypeError(f"{text!r} must be a whole number from 1 to {MAX_WORKERS}")
    return int(text)


def _count(text: str) -> int:
    if not text.isdigit() or int(text) > 1 << 24:
        raise argparse.ArgumentTypeError(f"{text!r} must be a whole number from 0 to {1 << 24}")
    return int(text)


def _bytes(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} must be a whole number of bytes")
    return int(text)


def _endpoint_type(default_port: int, require_ip: bool) -> argparse._ActionType:
    def convert(text: str) -> Endpoint:
        try:
            return parse_endpoint(text, default_port, require_ip=require_ip)
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error)) from None

    return convert


def usable_cpus() -> int:
    """CPUs this process may run on (respects affinity and cpusets, unlike os.cpu_count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="pyresponder",
        description=(
            "A multi-worker NTP server for busy NTP Pool hosts. It answers clients on every core "
            "and takes its time state from a local chronyd, as rsntp does."
        ),
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser(
        "serve",
        help="answer NTP requests",
        description=(
            "Answer NTP requests with several worker processes. Sockets come from systemd "
            "socket activation (LISTEN_FDS) when present; --listen binds more (or, without "
            "systemd, all) of them. Replies say 'unsynchronized' (LI=3, stratum 0) whenever the "
            "backend is silent, unsynchronized, or too far from the local clock."
        ),
    )
    serve.add_argument(
        "--listen",
        action="append",
        type=_endpoint_type(123, require_ip=True),
        metavar="ADDR:PORT",
        help=f"address to bind (repeatable); default {DEFAULT_LISTEN} (dual-stack) when "
        "systemd passes no sockets",
    )
    serve.add_argument(
        "--backend",
        type=_endpoint_type(11123, require_ip=False),
        default=parse_endpoint(DEFAULT_BACKEND, 11123),
        metavar="HOST:PORT",
        help=f"the chronyd to take time state from (default {DEFAULT_BACKEND})",
    )
    serve.add_argument(
        "--workers",
        type=_workers,
        default=None,
        metavar="N",
        help=f"worker processes (default: usable CPUs, here {usable_cpus()})",
    )
    serve.add_argument(
        "--backend-timeout",
        type=_positive_float,
        default=10.0,
        metavar="S",
        help="serve unsynchronized after the backend is silent this long (default 10)",
    )
    serve.add_argument(
        "--max-offset",
        type=_positive_float,
        default=0.1,
        metavar="S",
        help="serve unsynchronized when the local clock is further than this from the "
        "backend (default 0.1)",
    )
    serve.add_argument(
        "--ready-timeout",
        type=_positive_float,
        default=30.0,
        metavar="S",
        help="start serving (unsynchronized) and report READY after this long without a "
        "synchronized backend reply (default 30)",
    )
    serve.add_argument(
        "--require-sync",
        action="store_true",
        help="exit with status 1 instead of serving unsynchronized when --ready-timeout "
        "passes (for rollouts: a new instance that cannot synchronize never answers clients)",
    )
    serve.add_argument(
        "--receive-buffer",
        type=_bytes,
        default=DEFAULT_RECEIVE_BUFFER,
        metavar="BYTES",
        help="SO_RCVBUF to ask for on each socket, 0 to keep the system's (default 8 MiB)",
    )
    serve.add_argument(
        "--stats-interval",
        type=float,
        default=300.0,
        metavar="S",
        help="log packet counters this often, 0 for never (default 300)",
    )
    serve.add_argument(
        "--io",
        choices=("batch", "plain"),
        default="batch",
        help="batch: recvmmsg/sendmmsg (default); plain: one system call per datagram",
    )
    serve.add_argument(
        "--batch",
        type=_workers,
        default=64,
        metavar="N",
        help="datagrams read per recvmmsg (default 64)",
    )
    serve.add_argument(
        "--send-batch",
        type=_workers,
        default=16,
        metavar="N",
        help="replies per sendmmsg; larger saves CPU, smaller keeps transmit timestamps "
        "fresher (default 16)",
    )
    serve.add_argument(
        "--timestamps",
        choices=("kernel", "user"),
        default="kernel",
        help="receive timestamps from the kernel (SO_TIMESTAMPNS, default) or read when a "
        "worker gets to the packet (later under load: for measurements only)",
    )
    serve.add_argument(
        "--worker-sockets",
        choices=("shared", "spread"),
        default="shared",
        help="shared: every worker reads every socket (default); spread: with several "
        "SO_REUSEPORT sockets on one address, worker i reads only sockets i, i+N, ...",
    )
    serve.add_argument(
        "--metrics",
        type=_endpoint_type(9123, require_ip=True),
        default=None,
        metavar="ADDR:PORT",
        help="serve Prometheus metrics over HTTP here (e.g. 127.0.0.1:9123); off by default",
    )
    handoff_group = serve.add_argument_group(
        "socket handoff without systemd",
        "A running instance with --control hands its sockets to a new one started with "
        "--takeover, which then tells it to finish: no request is lost.",
    )
    handoff_group.add_argument(
        "--control", metavar="PATH", help="listen for handoff requests on this Unix socket"
    )
    handoff_group.add_argument(
        "--takeover", metavar="PATH",
        help="take the listening sockets from the instance whose control socket is PATH, "
        "then replace it (also on PATH, unless --control names another)",
    )
    limits = serve.add_argument_group(
        "rate limiting (off by default)",
        "Per client address, shared by all workers, in a fixed-size table. Many clients behind "
        "one carrier-grade NAT share an address: keep the limits generous.",
    )
    limits.add_argument("--rate-limit", action="store_true", help="switch rate limiting on")
    limits.add_argument(
        "--rate-limit-interval", type=_positive_float, default=1.0, metavar="S",
        help="sustained rate: one reply per S seconds per client (default 1)",
    )
    limits.add_argument(
        "--rate-limit-burst", type=_workers, default=16, metavar="N",
        help="replies a client may get in a burst (default 16)",
    )
    limits.add_argument(
        "--rate-limit-leak", type=_count, default=4, metavar="N",
        help="still answer 1 in N limited requests, 0 for none (default 4)",
    )
    limits.add_argument(
        "--rate-limit-kod", type=_count, default=8, metavar="N",
        help="answer 1 in N of the other limited requests with a kiss-o'-death RATE, "
        "0 for none (default 8)",
    )
    limits.add_argument(
        "--rate-limit-slots", type=_count, default=65536, metavar="N",
        help="clients tracked at most (16 bytes each; default 65536)",
    )
    serve.add_argument(
        "--check-config",
        action="store_true",
        help="validate the arguments, print the effective settings and exit",
    )

    probe_cmd = commands.add_parser(
        "probe",
        help="query an NTP server once",
        description=(
            "Send one NTP client request and print offset, delay, stratum, leap and refid. "
            "Exit 0 when the answer is synchronized, 1 when it is not, 2 when there is none."
        ),
    )
    probe_cmd.add_argument(
        "server", type=_endpoint_type(123, require_ip=False), metavar="HOST[:PORT]"
    )
    probe_cmd.add_argument(
        "--timeout", type=_positive_float, default=2.0, metavar="S", help="default 2"
    )
    probe_cmd.add_argument("--json", action="store_true", help="print one JSON object")
    add_xdp_command(commands)
    return parser


def serve_config(args: argparse.Namespace) -> ServeConfig:
    listen: list[Endpoint] = args.listen or []
    inherits = bool(os.environ.get("LISTEN_FDS")) or args.takeover is not None
    if not listen and not inherits:
        listen = [parse_endpoint(DEFAULT_LISTEN, 123)]
    return ServeConfig(
        listen=tuple(listen),
        backend=args.backend,
        workers=args.workers or usable_cpus(),
        policy=SyncPolicy(backend_timeout=args.backend_timeout, max_offset=args.max_offset),
        ready_timeout=args.ready_timeout,
        receive_buffer=args.receive_buffer,
        stats_interval=max(args.stats_interval, 0.0),
        io=args.io,
        batch=args.batch,
        send_batch=min(args.send_batch, args.batch),
        metrics=args.metrics,
        rate_limit=RateLimitPolicy(
            interval=args.rate_limit_interval,
            burst=args.rate_limit_burst,
            leak=args.rate_limit_leak,
            kod=args.rate_limit_kod,
            slots=max(args.rate_limit_slots, 1),
        ) if args.rate_limit else None,
        kernel_timestamps=args.timestamps == "kernel",
        require_sync=args.require_sync,
        worker_sockets=args.worker_sockets,
        control=args.control,
        takeover=args.takeover,
    )


def _setup_logging() -> None:
    # journald adds its own timestamps; a terminal or a file wants them in the line.
    fmt = "%(levelname)s %(message)s"
    if not os.environ.get("JOURNAL_STREAM"):
        fmt = "%(asctime)s " + fmt
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format=fmt)


def _serve(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    config = serve_config(args)
    try:
        resolve(config.backend)
    except ValueError as error:
        parser.error(f"argument --backend: {error}")
    if config.metrics is not None and not metrics.available():
        parser.error("argument --metrics: needs the prometheus_client package "
                     "(pip install 'pyresponder[metrics]')")
    if args.check_config:
        listen = ", ".join(map(str, config.listen)) or "-"
        print(
            f"ok: listen {listen}"
            f"{' + systemd sockets' if os.environ.get('LISTEN_FDS') else ''}; "
            f"backend {config.backend}; workers {config.workers}; "
            f"backend-timeout {config.policy.backend_timeout} s; "
            f"max-offset {config.policy.max_offset} s; ready-timeout {config.ready_timeout} s"
        )
        return EXIT_OK
    _setup_logging()
    try:
        return Supervisor(config).run()
    except (OSError, ValueError, RuntimeError) as error:
        logging.getLogger("pyresponder").error("cannot serve: %s", error)
        return 1


def _probe(args: argparse.Namespace) -> int:
    try:
        result = probe(args.server, timeout=args.timeout)
    except (OSError, ValueError) as error:
        print(f"pyresponder probe: {args.server}: {error}", file=sys.stderr)
        return EXIT_NO_ANSWER
    if result is None:
        if args.json:
            failure = {"host": args.server.host, "port": args.server.port, "error": "no answer"}
            print(json.dumps(failure))
        else:
            print(f"{args.server}: no answer within {args.timeout} s", file=sys.stderr)
        return EXIT_NO_ANSWER
    print(json.dumps(result.as_dict()) if args.json else result.summary())
    return EXIT_OK if result.synchronized else EXIT_UNSYNCHRONIZED


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "serve":
        return _serve(args, parser)
    if args.command == "xdp":
        return int(args.run(args, parser))
    return _probe(args)
