"""One shared socket for all workers, or one SO_REUSEPORT socket per worker: which is faster?

pyresponder with 2 workers in both layouts (``--worker-sockets shared`` with one socket read by
both workers; ``--worker-sockets spread`` with two SO_REUSEPORT sockets on the same port, one per
worker), offered the same loads by ``ntpload`` in interleaved repetitions. For each layout it
prints the share of requests lost or answered later than 20 ms at each rate, and the highest rate
under 1%, as medians over the repetitions. Traffic stays on 127.0.0.1; ntpload bounds every step.

Usage: python bench/sockets.py [--reps N] [--rates 60000,90000,...] [--duration S]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
for path in (str(ROOT), str(BENCH)):
    if path not in sys.path:
        sys.path.insert(0, path)

from run import build_ntpload  # noqa: E402

from tests.support.chronyd import Chronyd, free_udp_port  # noqa: E402
from tests.support.responder import Responder  # noqa: E402

LAYOUTS = {"shared": 1, "spread": 2}  # layout -> sockets on the port


def step(ntpload: Path, port: int, rate: int, duration: float) -> float:
    out = subprocess.run(
        [str(ntpload), "-r", str(rate), "-d", str(duration), "127.0.0.1", str(port)],
        capture_output=True, text=True, timeout=duration + 30, check=False,
    ).stdout.strip().splitlines()
    return float(json.loads(out[-1])["loss_or_late"]) if out else 1.0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--rates", default="60000,80000,100000,120000,140000,160000")
    parser.add_argument("--duration", type=float, default=2.0)
    args = parser.parse_args(argv)
    rates = [int(rate) for rate in args.rates.split(",")]
    ntpload = build_ntpload(BENCH / "out")
    failed: dict[str, dict[int, list[float]]] = {name: {r: [] for r in rates} for name in LAYOUTS}
    with Chronyd() as chronyd:
        for rep in range(args.reps):
            order = list(LAYOUTS) if rep % 2 == 0 else list(reversed(LAYOUTS))
            for name in order:
                port = free_udp_port()
                listen = ["--listen", f"127.0.0.1:{port}"] * LAYOUTS[name]
                with Responder([*listen, "--reuse-port", "--backend",
                                f"127.0.0.1:{chronyd.port}", "--workers", "2",
                                "--worker-sockets", name]) as responder:
                    responder.wait_answering(("127.0.0.1", port))
                    for rate in rates:
                        failed[name][rate].append(step(ntpload, port, rate, args.duration))
    print(f"share lost or late (>20 ms), medians of {args.reps} interleaved repetitions")
    print("rate/s   " + "  ".join(f"{name:>8}" for name in LAYOUTS))
    best = dict.fromkeys(LAYOUTS, 0)
    for rate in rates:
        cells = []
        for name in LAYOUTS:
            share = statistics.median(failed[name][rate])
            cells.append(f"{share * 100:7.2f}%")
            if share < 0.01:
                best[name] = max(best[name], rate)
        print(f"{rate:<8} " + "  ".join(cells))
    for name in LAYOUTS:
        print(f"{name}: highest offered rate with median < 1% lost or late: {best[name]}/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
