"""How accurate are pyresponder's timestamps, seen from a client on the same clock?

On loopback the client and the server read the same clock, so every error shows up directly:

- offset: what an NTP client computes, ((T2 - T1) + (T3 - T4)) / 2; the truth is 0, so its
  distribution is the error a client would see;
- receive lateness: T2 (server receive timestamp) - T1 (client send): the loopback trip plus, for
  user-space timestamps, the time the request waited in the socket before a worker read it;
- transmit staleness: T4 (client's kernel receive timestamp) - T3 (server transmit timestamp):
  the trip back plus how early T3 was taken before the reply really left;
- hold: T3 - T2, how long the server had each request (an upper bound on the error of a
  receive timestamp taken when the code sees the packet).

It runs pyresponder (1 worker) with kernel and with user-space receive timestamps, each idle and
under load from ``ntpload``, while a probe sends one request every 2 ms and records all four
timestamps of every reply. Traffic stays on 127.0.0.1; every load is bounded by ntpload itself.

Usage: python bench/timestamps.py [--load-rate R] [--seconds S] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import struct
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
for path in (str(ROOT), str(BENCH)):
    if path not in sys.path:
        sys.path.insert(0, path)

from run import build_ntpload  # noqa: E402

from pyresponder import wire  # noqa: E402
from tests.support.chronyd import Chronyd, free_udp_port  # noqa: E402
from tests.support.responder import Responder  # noqa: E402

SO_TIMESTAMPNS = 35
PROBE_INTERVAL = 0.002


def probe(port: int, seconds: float) -> list[tuple[int, int, int, int]]:
    """(T1, T2, T3, T4) in Unix ns for every reply to a paced stream of requests."""
    samples = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        sock.settimeout(0.5)
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            transmit = os.urandom(8)
            t1 = time.time_ns()
            sock.sendto(wire.client_request(transmit), ("127.0.0.1", port))
            try:
                data, ancillary, _, _ = sock.recvmsg(512, socket.CMSG_SPACE(16))
            except TimeoutError:
                continue
            if data[24:32] != transmit:
                continue
            t4 = next(
                (seconds_ * 1_000_000_000 + nanos
                 for level, kind, payload in ancillary
                 if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS
                 for seconds_, nanos in [struct.unpack("@qq", payload)]),
                time.time_ns(),
            )
            t2 = wire.unix_ns_from_ntp(struct.unpack("!Q", data[32:40])[0], t1)
            t3 = wire.unix_ns_from_ntp(struct.unpack("!Q", data[40:48])[0], t1)
            samples.append((t1, t2, t3, t4))
            time.sleep(PROBE_INTERVAL)
    return samples


def percentiles(values: list[float]) -> dict[str, float]:
    values = sorted(values)
    if not values:
        return {}
    def at(q: float) -> float:
        return values[min(len(values) - 1, int(q * len(values)))]
    return {"p50": at(0.5), "p99": at(0.99), "max": values[-1],
            "mean": statistics.fmean(values)}


def measure(chronyd: Chronyd, mode: str, load_rate: int, seconds: float,
            ntpload: Path) -> dict[str, object]:
    port = free_udp_port()
    with Responder(["--listen", f"127.0.0.1:{port}", "--backend", f"127.0.0.1:{chronyd.port}",
                    "--workers", "1", "--timestamps", mode]) as responder:
        responder.wait_answering(("127.0.0.1", port))
        load = None
        if load_rate:
            load = subprocess.Popen(
                [str(ntpload), "-r", str(load_rate), "-d", str(seconds + 1), "127.0.0.1",
                 str(port)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
            )
            time.sleep(0.5)
        samples = probe(port, seconds)
        load_result: dict[str, object] = {}
        if load is not None:
            out, _ = load.communicate(timeout=seconds + 30)
            lines = out.strip().splitlines()
            load_result = json.loads(lines[-1]) if lines else {}
    offsets = [((t2 - t1) + (t3 - t4)) / 2 / 1000 for t1, t2, t3, t4 in samples]
    return {
        "timestamps": mode,
        "load_rate": load_rate,
        "load_replies_per_s": load_result.get("reply_rate") or load_result.get("received"),
        "samples": len(samples),
        "offset_us": percentiles([abs(o) for o in offsets]),
        "offset_bias_us": statistics.fmean(offsets) if offsets else None,
        "receive_lateness_us": percentiles([(t2 - t1) / 1000 for t1, t2, _, _ in samples]),
        "transmit_staleness_us": percentiles([(t4 - t3) / 1000 for _, _, t3, t4 in samples]),
        "hold_us": percentiles([(t3 - t2) / 1000 for _, t2, t3, _ in samples]),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--load-rate", type=int, default=50_000,
                        help="requests/s of background load (default 50000)")
    parser.add_argument("--seconds", type=float, default=4.0, help="per case (default 4)")
    parser.add_argument("--out", type=Path, default=BENCH / "out" / "timestamps.json")
    args = parser.parse_args(argv)
    ntpload = build_ntpload(args.out.parent)
    results = []
    with Chronyd() as chronyd:
        for load_rate in (0, args.load_rate):
            for mode in ("kernel", "user"):
                results.append(measure(chronyd, mode, load_rate, args.seconds, ntpload))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    print(f"{'receive ts':<10} {'load/s':>8} {'n':>6}  {'|offset| p50/p99 us':>20}  "
          f"{'bias us':>8}  {'rx late p50/p99':>16}  {'tx stale p50/p99':>17}  "
          f"{'hold p50/p99':>13}")
    for r in results:
        def pair(key: str, result: dict[str, object] = r) -> str:
            stats = result[key]
            assert isinstance(stats, dict)
            return f"{stats.get('p50', 0):.0f}/{stats.get('p99', 0):.0f}" if stats else "-"
        bias = r["offset_bias_us"]
        print(f"{r['timestamps']:<10} {r['load_rate']:>8} {r['samples']:>6}  "
              f"{pair('offset_us'):>20}  {bias if bias is None else f'{bias:+.1f}':>8}  "
              f"{pair('receive_lateness_us'):>16}  {pair('transmit_staleness_us'):>17}  "
              f"{pair('hold_us'):>13}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
