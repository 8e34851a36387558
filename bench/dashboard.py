"""Render the Grafana dashboard's queries from a real run into docs/img/dashboard.png.

Grafana is not in Debian, so this runs what the dashboard would show with real parts: a chronyd
(-x, loopback), a pyresponder ("blue") with metrics, a Prometheus (1 s scrape) with the shipped
rules, and about four minutes of scripted events: steady traffic, malformed requests, a stall that
overflows the receive buffer, a killed worker, chronyd stopped for a while, and a swap to "green"
by socket takeover. Then every panel's queries are read back with query_range and drawn in the
dashboard's layout with matplotlib.

    python bench/dashboard.py [--out docs/img/dashboard.png] [--minutes 4]
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.support.chronyd import Chronyd, free_udp_port  # noqa: E402
from tests.support.dashboard import expand, load_dashboard  # noqa: E402
from tests.support.prometheus import Prometheus, free_tcp_port  # noqa: E402
from tests.support.responder import Responder, ntp_request  # noqa: E402


class Traffic:
    """Client requests at a settable rate (bounded by a deadline), replies drained and dropped."""

    def __init__(self, address: tuple[str, int], deadline: float) -> None:
        self.address = address
        self.deadline = deadline
        self.rate = 0.0
        self.malformed_share = 0.0
        self.stop = threading.Event()
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.settimeout(0.2)
        self.threads = [threading.Thread(target=self._send, daemon=True),
                        threading.Thread(target=self._drain, daemon=True)]

    def start(self) -> Traffic:
        for thread in self.threads:
            thread.start()
        return self

    def _send(self) -> None:
        sent = 0
        bad = (ntp_request(mode=6), ntp_request(mode=7), ntp_request()[:40],
               ntp_request(version=6))
        while not self.stop.is_set() and time.monotonic() < self.deadline:
            if self.rate <= 0:
                time.sleep(0.1)
                continue
            sent += 1
            malformed = self.malformed_share and sent % max(1, round(1 / self.malformed_share)) == 0
            packet = bad[sent % len(bad)] if malformed else ntp_request()
            self.sock.sendto(packet, self.address)
            time.sleep(1 / self.rate)

    def _drain(self) -> None:
        while not self.stop.is_set():
            try:
                self.sock.recv(1024)
            except OSError:
                continue

    def burst(self, count: int) -> None:
        for _ in range(count):
            self.sock.sendto(ntp_request(), self.address)

    def close(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(2)
        self.sock.close()


def run_scenario(minutes: float, log: Callable[[str], None],
                 cleanup: list[Any]) -> tuple[Prometheus, float, float]:
    """Run the events; return the still-running Prometheus and the time range. Everything started
    is appended to ``cleanup`` at once, so the caller stops it even when this fails."""
    chronyd = Chronyd(stratum=3).start()
    cleanup.append(chronyd)
    port, metrics_port = free_udp_port(), free_tcp_port()
    control = Path(tempfile.mkdtemp(prefix="pyresponder-render-")) / "control"
    common = ["--backend", f"127.0.0.1:{chronyd.port}", "--workers", "2",
              "--metrics", f"127.0.0.1:{metrics_port}", "--backend-timeout", "10",
              "--control", str(control)]
    blue = Responder(["--listen", f"127.0.0.1:{port}", "--receive-buffer", "0", *common],
                     env={**os.environ, "PYRESPONDER_COLOUR": "blue",
                          "PYRESPONDER_RELEASE": "0.1.0-demo1"}).start()
    cleanup.append(blue)
    blue.wait_answering(("127.0.0.1", port))
    prometheus = Prometheus([f"127.0.0.1:{metrics_port}"],
                            rule_files=[ROOT / "monitoring" / "pyresponder-rules.yml"]).start()
    cleanup.append(prometheus)
    start = time.time()
    total = minutes * 60
    traffic = Traffic(("127.0.0.1", port), time.monotonic() + total + 30).start()
    cleanup.append(traffic)

    def at(fraction: float) -> None:
        target = start + fraction * total
        while time.time() < target:
            time.sleep(0.2)

    traffic.rate = 150
    at(0.15)
    log("malformed requests")
    traffic.malformed_share = 0.2
    at(0.25)
    traffic.malformed_share = 0.0
    traffic.rate = 300
    at(0.32)
    log("workers stalled: the receive buffer overflows")
    workers = blue.workers()
    for pid in workers:
        os.kill(pid, signal.SIGSTOP)
    traffic.burst(5000)
    for pid in workers:
        os.kill(pid, signal.SIGCONT)
    at(0.40)
    log("a worker is killed and restarted")
    os.kill(blue.workers()[0], signal.SIGKILL)
    at(0.48)
    log("chronyd stopped")
    backend_port = chronyd.port
    chronyd.stop()
    at(0.62)
    log("chronyd back")
    chronyd = Chronyd(port=backend_port, stratum=3).start()
    cleanup.append(chronyd)
    at(0.72)
    log("swap to green (socket takeover)")
    traffic.rate = 220
    green = Responder(["--takeover", str(control), *common],
                      env={**os.environ, "PYRESPONDER_COLOUR": "green",
                           "PYRESPONDER_RELEASE": "0.1.0-demo2"}).start()
    cleanup.append(green)
    deadline = time.monotonic() + 30
    assert blue.process is not None
    while blue.process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    at(1.0)
    return prometheus, start, time.time()


def legend(template: str, metric: dict[str, str]) -> str:
    text = template
    for key, value in metric.items():
        text = text.replace("{{" + key + "}}", value)
    text = re.sub(r"\{\{\w+\}\}", "", text).strip()  # a label the series lacks: empty
    return text or "{" + ", ".join(f"{k}={v}" for k, v in metric.items() if k != "__name__") + "}"


def render(prometheus: Prometheus, start: float, end: float, out: Path) -> None:
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415
    from matplotlib.ticker import EngFormatter, FuncFormatter  # noqa: PLC0415

    dashboard = load_dashboard()
    items = dashboard["panels"]
    height = max(p["gridPos"]["y"] + p["gridPos"]["h"] for p in items)
    fig = plt.figure(figsize=(18, height * 0.62))
    grid = fig.add_gridspec(height, 24, hspace=1.4, wspace=1.2, top=0.965, bottom=0.02)
    step = max(1.0, (end - start) / 240)
    for panel in items:
        pos = panel["gridPos"]
        if panel["type"] == "row":
            ax = fig.add_subplot(grid[pos["y"]:pos["y"] + 1, :])
            ax.axis("off")
            ax.text(0, 0.2, panel["title"], fontsize=13, fontweight="bold")
            continue
        ax = fig.add_subplot(grid[pos["y"] + 1:pos["y"] + pos["h"], pos["x"]:pos["x"] + pos["w"]])
        ax.set_title(panel["title"], fontsize=10, loc="left")
        if panel["type"] == "table":
            rows = []
            for target in panel["targets"]:
                for entry in prometheus.query(expand(target["expr"])):
                    rows.append(", ".join(f"{k}={v}" for k, v in sorted(entry["metric"].items())
                                          if k not in {"__name__", "job"}))
            ax.axis("off")
            ax.text(0, 0.95, "\n".join(rows) or "(no data)", va="top", family="monospace",
                    fontsize=8, transform=ax.transAxes)
            continue
        defaults = panel.get("fieldConfig", {}).get("defaults", {})
        unit = defaults.get("unit", "short")
        for target in panel["targets"]:
            series = prometheus.query_range(expand(target["expr"]), start, end, step)
            for entry in series:
                times = [(float(t) - start) / 60 for t, _ in entry["values"]]
                values = [float(v) for _, v in entry["values"]]
                ax.plot(times, values, linewidth=1,
                        label=legend(target.get("legendFormat", ""), entry["metric"]))
        if unit == "percentunit":
            ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v * 100:.3g}%"))
        elif unit == "s":
            ax.yaxis.set_major_formatter(EngFormatter(unit="s"))
        elif unit in {"reqps", "pps"}:
            ax.yaxis.set_major_formatter(EngFormatter(unit="/s"))
        ax.set_xlim(0, (end - start) / 60)
        if "min" in defaults:
            ax.set_ylim(bottom=defaults["min"])
        if "max" in defaults:
            ax.set_ylim(top=defaults["max"] * 1.05)
        ax.set_xlabel("minutes", fontsize=8)
        ax.tick_params(labelsize=8)
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=7, loc="upper left")
    fig.suptitle(f"{dashboard['title']}: the dashboard's queries from a real run "
                 "(pyresponder, chronyd, Prometheus 1 s scrape)", fontsize=14)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=80, bbox_inches="tight")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "img" / "dashboard.png")
    parser.add_argument("--minutes", type=float, default=4.0)
    args = parser.parse_args()
    began = time.monotonic()

    def log(text: str) -> None:
        print(f"{time.monotonic() - began:6.1f} s  {text}", flush=True)

    cleanup: list[Any] = []
    try:
        prometheus, start, end = run_scenario(args.minutes, log, cleanup)
        render(prometheus, start, end, args.out)
        log(f"wrote {args.out}")
    finally:
        for item in reversed(cleanup):
            if hasattr(item, "cleanup"):
                item.cleanup()
            else:
                item.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
