"""The ``pyresponder xdp`` subcommand: its arguments and its entry point.

cli.py calls :func:`add_xdp_command` once; the parsed namespace carries ``run`` for dispatch.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
from pathlib import Path
from typing import Any

from ..endpoints import parse_endpoint, resolve
from ..ratelimit import RateLimitPolicy
from ..syncstate import SyncPolicy
from . import counters
from .daemon import XdpConfig, XdpDaemon
from .libbpf import BpfError

EXIT_FAILED = 1


def _port(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} must be a port number from 1 to 65535")
    return int(text)


def _seconds_or_zero(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} must be 0 or a positive number of seconds")
    return value


def add_xdp_command(commands: Any) -> None:
    """Add ``xdp`` to the subcommands of cli.build_parser (``commands`` is its subparsers)."""
    from ..cli import (  # noqa: PLC0415 (cli imports this module)
        DEFAULT_BACKEND,
        _count,
        _endpoint_type,
        _positive_float,
        _workers,
    )

    xdp = commands.add_parser(
        "xdp",
        help="answer plain NTP requests in the kernel (XDP)",
        description=(
            "Attach an XDP program to an interface that answers plain 48-byte NTP client "
            "requests in the driver, and keep its time state current from the backend. Every "
            "other packet goes to the socket path (pyresponder serve), which must run as well: "
            "it answers everything when this command stops or dies."
        ),
    )
    xdp.add_argument("--interface", required=True, metavar="DEV",
                     help="network interface to attach to")
    xdp.add_argument(
        "--xdp-mode", choices=("auto", "native", "generic"), default="auto",
        help="native: in the driver; generic: after the kernel built the packet (any "
        "device, slower); auto: native where the driver allows it (default)",
    )
    xdp.add_argument("--port", type=_port, default=123, help="UDP port to answer (default 123)")
    xdp.add_argument(
        "--backend", type=_endpoint_type(11123, require_ip=False),
        default=parse_endpoint(DEFAULT_BACKEND, 11123), metavar="HOST:PORT",
        help=f"the chronyd to take time state from (default {DEFAULT_BACKEND})",
    )
    xdp.add_argument(
        "--backend-timeout", type=_positive_float, default=10.0, metavar="S",
        help="reply unsynchronized after the backend is silent this long (default 10)",
    )
    xdp.add_argument(
        "--max-offset", type=_positive_float, default=0.1, metavar="S",
        help="reply unsynchronized when the local clock is further than this from the "
        "backend (default 0.1)",
    )
    xdp.add_argument(
        "--holdover", type=_seconds_or_zero, default=60.0, metavar="SECONDS",
        help="keep serving synchronized this long after the backend went silent, as serve "
        "does (default 60, 0 = off)",
    )
    xdp.add_argument(
        "--counters-file", type=Path, default=counters.DEFAULT_PATH, metavar="PATH",
        help=f"write a counters snapshot here every second for the metrics endpoint of "
        f"serve (default {counters.DEFAULT_PATH}); '-' for none",
    )
    limits = xdp.add_argument_group(
        "rate limiting (off by default)",
        "The same per-client limit as serve's, applied in the kernel: a theoretical arrival time "
        "per address in an LRU map. Give both commands the same settings.",
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
        help="clients tracked at most (LRU; default 65536)",
    )
    xdp.set_defaults(run=run)


def sync_policy(args: argparse.Namespace) -> SyncPolicy:
    policy = SyncPolicy(backend_timeout=args.backend_timeout, max_offset=args.max_offset)
    # Holdover lives in SyncPolicy where the daemon supports it (same rules as serve).
    if "holdover" in {f.name for f in dataclasses.fields(SyncPolicy)}:
        policy = dataclasses.replace(policy, holdover=args.holdover)  # type: ignore[call-arg,unused-ignore]
    return policy


def xdp_config(args: argparse.Namespace) -> XdpConfig:
    counters_file = None if str(args.counters_file) == "-" else args.counters_file
    return XdpConfig(
        interface=args.interface,
        mode=args.xdp_mode,
        port=args.port,
        backend=args.backend,
        policy=sync_policy(args),
        counters_file=counters_file,
        rate_limit=RateLimitPolicy(
            interval=args.rate_limit_interval,
            burst=args.rate_limit_burst,
            leak=args.rate_limit_leak,
            kod=args.rate_limit_kod,
            slots=max(args.rate_limit_slots, 1),
        ) if args.rate_limit else None,
    )


def run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    try:
        resolve(args.backend)
    except ValueError as error:
        parser.error(f"argument --backend: {error}")
    config = xdp_config(args)
    fmt = "%(levelname)s %(message)s"
    if not os.environ.get("JOURNAL_STREAM"):
        fmt = "%(asctime)s " + fmt
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format=fmt)
    if config.counters_file is not None:
        try:
            config.counters_file.parent.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            print(f"pyresponder xdp: cannot create {config.counters_file.parent}: "
                  f"{error.strerror}", file=sys.stderr)
            return EXIT_FAILED
    try:
        return XdpDaemon(config).run()
    except (BpfError, OSError) as error:
        print(f"pyresponder xdp: {error}", file=sys.stderr)
        return EXIT_FAILED
