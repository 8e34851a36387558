"""The ``pyresponder xdp`` subcommand: its arguments and its entry point.

cli.py calls :func:`add_xdp_command` once; the parsed namespace carries ``run`` for dispatch.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Any

from ..endpoints import resolve
from . import counters
from .daemon import XdpConfig, XdpDaemon
from .libbpf import BpfError

EXIT_FAILED = 1


def add_xdp_command(commands: Any) -> None:
    """Add ``xdp`` to the subcommands of cli.build_parser (``commands`` is its subparsers)."""
    from ..cli import (  # noqa: PLC0415 (cli imports this module)
        add_backend_options,
        add_rate_limit_options,
        whole,
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
    xdp.add_argument("--port", type=whole(1, 65535), default=123,
                     help="UDP port to answer (default 123)")
    add_backend_options(xdp)
    xdp.add_argument(
        "--counters-file", type=Path, default=counters.DEFAULT_PATH, metavar="PATH",
        help=f"write a counters snapshot here every second for the metrics endpoint of "
        f"serve (default {counters.DEFAULT_PATH}); '-' for none",
    )
    add_rate_limit_options(xdp)
    xdp.set_defaults(run=run)


def xdp_config(args: argparse.Namespace) -> XdpConfig:
    """The XdpConfig of parsed ``xdp`` arguments; ValueError names a bad setting."""
    from ..cli import (  # noqa: PLC0415 (cli imports this module)
        rate_limit_policy_from_args,
        sync_policy_from_args,
    )

    counters_file = None if str(args.counters_file) == "-" else args.counters_file
    return XdpConfig(
        interface=args.interface,
        mode=args.xdp_mode,
        port=args.port,
        backend=args.backend,
        policy=sync_policy_from_args(args),
        counters_file=counters_file,
        rate_limit=rate_limit_policy_from_args(args),
    )


def run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    try:
        resolve(args.backend)
    except ValueError as error:
        parser.error(f"argument --backend: {error}")
    try:
        config = xdp_config(args)
    except ValueError as error:  # e.g. rate-limit settings that would refuse the pool monitor
        parser.error(str(error))
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
