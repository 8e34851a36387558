"""Command line: ``pyresponder serve``, ``pyresponder probe`` and ``pyresponder xdp``."""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
from collections.abc import Callable, Sequence
from typing import NoReturn

from . import __version__, metrics
from .endpoints import Endpoint, parse_endpoint, resolve
from .probe import probe
from .ratelimit import RateLimitPolicy
from .sockets import DEFAULT_RECEIVE_BUFFER, MAX_RECEIVE_BUFFER
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
MAX_BATCH = 1024
MAX_COUNT = 1 << 24
MAX_SECONDS = 86400.0  # a day: longer than any sane timeout, short enough to catch typos


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr (exit 2), as scripts want it."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def _number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return value


def seconds(low: float, high: float, zero: bool = False) -> Callable[[str], float]:
    """An argparse type: seconds in (low, high], or also exactly 0 when ``zero``."""

    def convert(text: str) -> float:
        value = _number(text)
        if (zero and value == 0) or low < value <= high:
            return value
        allowed = f"more than {low:g} and at most {high:g} seconds"
        raise argparse.ArgumentTypeError(
            f"{text!r} must be {'0 or ' if zero else ''}{allowed}"
        )

    return convert


def whole(low: int, high: int, unit: str = "") -> Callable[[str], int]:
    """An argparse type: a whole number from ``low`` to ``high``."""

    def convert(text: str) -> int:
        if not (text.isascii() and text.isdigit()) or not low <= int(text) <= high:
            raise argparse.ArgumentTypeError(
                f"{text!r} must be a whole number{unit} from {low} to {high}"
            )
        return int(text)

    return convert


def _endpoint_type(default_port: int, require_ip: bool) -> Callable[[str], Endpoint]:
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
            "backend is silent, unsynchronized, or too far from the local clock (after "
            "--holdover)."
        ),
    )
    _add_listen_options(serve)
    add_backend_options(serve)
    _add_worker_options(serve)
    add_rate_limit_options(serve)
    _add_metrics_options(serve)
    _add_control_options(serve)
    _add_probe_command(commands)
    add_xdp_command(commands)
    return parser


def _add_listen_options(serve: argparse.ArgumentParser) -> None:
    group = serve.add_argument_group("sockets")
    group.add_argument(
        "--listen",
        action="append",
        type=_endpoint_type(123, require_ip=True),
        metavar="ADDR:PORT",
        help=f"address to bind (repeatable); default {DEFAULT_LISTEN} (dual-stack) when "
        "systemd passes no sockets",
    )
    group.add_argument(
        "--reuse-port",
        action="store_true",
        help="bind --listen sockets with SO_REUSEPORT, so that several sockets (this "
        "instance's or another's) share one address; without it a second bind fails",
    )
    group.add_argument(
        "--receive-buffer",
        type=whole(0, MAX_RECEIVE_BUFFER, " of bytes"),
        default=DEFAULT_RECEIVE_BUFFER,
        metavar="BYTES",
        help="SO_RCVBUF to ask for on each socket, 0 to keep the system's (default 8 MiB)",
    )
    group.add_argument(
        "--worker-sockets",
        choices=("shared", "spread"),
        default="shared",
        help="shared: every worker reads every socket (default); spread: with several "
        "SO_REUSEPORT sockets on one address, worker i reads only sockets i, i+N, ...",
    )


def add_backend_options(parser: argparse.ArgumentParser) -> None:
    """--backend, --backend-timeout, --max-offset and --holdover (serve and xdp share them).

    ``sync_policy_from_args`` turns the parsed values into a ``SyncPolicy``.
    """
    group = parser.add_argument_group("backend and synchronization")
    group.add_argument(
        "--backend",
        type=_endpoint_type(11123, require_ip=False),
        default=parse_endpoint(DEFAULT_BACKEND, 11123),
        metavar="HOST:PORT",
        help=f"the chronyd to take time state from (default {DEFAULT_BACKEND})",
    )
    group.add_argument(
        "--backend-timeout",
        type=seconds(0, MAX_SECONDS),
        default=10.0,
        metavar="S",
        help="the backend counts as silent after this long without a reply (default 10)",
    )
    group.add_argument(
        "--max-offset",
        type=seconds(0, MAX_SECONDS),
        default=0.1,
        metavar="S",
        help="serve unsynchronized when the local clock is further than this from the "
        "backend (default 0.1)",
    )
    group.add_argument(
        "--holdover",
        type=seconds(0, MAX_SECONDS, zero=True),
        default=60.0,
        metavar="S",
        help="when the backend turns unsynchronized or silent (a chronyd restart), keep "
        "serving its last synchronized state, with growing root dispersion, for up to S "
        "seconds after that state; 0 turns it off (default 60)",
    )


def sync_policy_from_args(args: argparse.Namespace) -> SyncPolicy:
    """The SyncPolicy of the options ``add_backend_options`` added."""
    return SyncPolicy(
        backend_timeout=args.backend_timeout, max_offset=args.max_offset, holdover=args.holdover
    )


def _add_worker_options(serve: argparse.ArgumentParser) -> None:
    group = serve.add_argument_group("workers and I/O")
    group.add_argument(
        "--workers",
        type=whole(1, MAX_WORKERS),
        default=None,
        metavar="N",
        help=f"worker processes (default: usable CPUs, here {usable_cpus()})",
    )
    group.add_argument(
        "--io",
        choices=("batch", "plain"),
        default="batch",
        help="batch: recvmmsg/sendmmsg (default); plain: one system call per datagram",
    )
    group.add_argument(
        "--batch",
        type=whole(1, MAX_BATCH),
        default=64,
        metavar="N",
        help="datagrams read per recvmmsg (default 64)",
    )
    group.add_argument(
        "--send-batch",
        type=whole(1, MAX_BATCH),
        default=16,
        metavar="N",
        help="replies per sendmmsg; larger saves CPU, smaller keeps transmit timestamps "
        "fresher (default 16)",
    )
    group.add_argument(
        "--timestamps",
        choices=("kernel", "user"),
        default="kernel",
        help="receive timestamps from the kernel (SO_TIMESTAMPNS, default) or read when a "
        "worker gets to the packet (later under load: for measurements only)",
    )


def add_rate_limit_options(parser: argparse.ArgumentParser) -> None:
    """--rate-limit and its settings (serve and xdp share them, so both apply one limit).

    ``rate_limit_policy_from_args`` turns the parsed values into a ``RateLimitPolicy``.
    """
    limits = parser.add_argument_group(
        "rate limiting (off by default)",
        "Per client address (IPv6: per /64), in a fixed-size table. Many clients behind "
        "one carrier-grade NAT share an address: keep the limits generous.",
    )
    limits.add_argument("--rate-limit", action="store_true", help="switch rate limiting on")
    limits.add_argument(
        "--rate-limit-interval", type=seconds(0, MAX_SECONDS), default=1.0, metavar="S",
        help="sustained rate: one reply per S seconds per client (default 1)",
    )
    limits.add_argument(
        "--rate-limit-burst", type=whole(1, MAX_COUNT), default=16, metavar="N",
        help="replies a client may get in a burst (default 16)",
    )
    limits.add_argument(
        "--rate-limit-leak", type=whole(0, MAX_COUNT), default=4, metavar="N",
        help="still answer 1 in N limited requests, 0 for none (default 4)",
    )
    limits.add_argument(
        "--rate-limit-kod", type=whole(0, MAX_COUNT), default=8, metavar="N",
        help="answer 1 in N of the other limited requests with a kiss-o'-death RATE, "
        "0 for none (default 8)",
    )
    limits.add_argument(
        "--rate-limit-slots", type=whole(1, MAX_COUNT), default=65536, metavar="N",
        help="clients tracked at most (16 bytes each; default 65536)",
    )


def rate_limit_policy_from_args(args: argparse.Namespace) -> RateLimitPolicy | None:
    """The policy of the options ``add_rate_limit_options`` added; None when off.

    ValueError (one line) for settings that could refuse the pool monitor.
    """
    if not args.rate_limit:
        return None
    return RateLimitPolicy(
        interval=args.rate_limit_interval,
        burst=args.rate_limit_burst,
        leak=args.rate_limit_leak,
        kod=args.rate_limit_kod,
        slots=args.rate_limit_slots,
    )


def _add_metrics_options(serve: argparse.ArgumentParser) -> None:
    group = serve.add_argument_group("metrics and logs")
    group.add_argument(
        "--metrics",
        type=_endpoint_type(9123, require_ip=True),
        default=None,
        metavar="ADDR:PORT",
        help="serve Prometheus metrics over HTTP here (e.g. 127.0.0.1:9123); off by default",
    )
    group.add_argument(
        "--stats-interval",
        type=seconds(0, MAX_SECONDS, zero=True),
        default=300.0,
        metavar="S",
        help="log packet counters this often, 0 for never (default 300)",
    )


def _add_control_options(serve: argparse.ArgumentParser) -> None:
    start = serve.add_argument_group("start-up")
    start.add_argument(
        "--ready-timeout",
        type=seconds(0, MAX_SECONDS),
        default=30.0,
        metavar="S",
        help="start serving (unsynchronized) and report READY after this long without a "
        "synchronized backend reply (default 30)",
    )
    start.add_argument(
        "--require-sync",
        action="store_true",
        help="exit with status 1 instead of serving unsynchronized when --ready-timeout "
        "passes (for rollouts: a new instance that cannot synchronize never answers clients)",
    )
    start.add_argument(
        "--check-config",
        action="store_true",
        help="validate the arguments, print the effective settings and exit",
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


def _add_probe_command(commands: argparse._SubParsersAction[_Parser]) -> None:
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
        "--timeout", type=seconds(0, 60), default=2.0, metavar="S", help="default 2"
    )
    probe_cmd.add_argument("--json", action="store_true", help="print one JSON object")


def serve_config(args: argparse.Namespace) -> ServeConfig:
    """The ServeConfig of parsed ``serve`` arguments; ValueError names a bad combination."""
    listen: list[Endpoint] = args.listen or []
    inherits = bool(os.environ.get("LISTEN_FDS")) or args.takeover is not None
    if not listen and not inherits:
        listen = [parse_endpoint(DEFAULT_LISTEN, 123)]
    return ServeConfig(
        listen=tuple(listen),
        backend=args.backend,
        workers=args.workers or usable_cpus(),
        policy=sync_policy_from_args(args),
        ready_timeout=args.ready_timeout,
        receive_buffer=args.receive_buffer,
        stats_interval=args.stats_interval,
        io=args.io,
        batch=args.batch,
        send_batch=min(args.send_batch, args.batch),
        metrics=args.metrics,
        rate_limit=rate_limit_policy_from_args(args),
        kernel_timestamps=args.timestamps == "kernel",
        require_sync=args.require_sync,
        worker_sockets=args.worker_sockets,
        control=args.control,
        takeover=args.takeover,
        reuse_port=args.reuse_port,
    )


def _setup_logging() -> None:
    # journald adds its own timestamps; a terminal or a file wants them in the line.
    fmt = "%(levelname)s %(message)s"
    if not os.environ.get("JOURNAL_STREAM"):
        fmt = "%(asctime)s " + fmt
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format=fmt)


def _serve(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    try:
        config = serve_config(args)
    except ValueError as error:  # e.g. rate-limit settings that would refuse the pool monitor
        parser.error(str(error))
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
            f"max-offset {config.policy.max_offset} s; holdover {config.policy.holdover} s; "
            f"ready-timeout {config.ready_timeout} s"
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
