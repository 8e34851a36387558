"""Run a real Prometheus (Debian's package, the binary only) on loopback for tests and the docs.

The packaged service is never used: each run gets a config and a data directory of its own in a
temporary folder, listens on 127.0.0.1 at a free port, and is stopped by its pid.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Self

from tests.support.scoped import Scoped

PROMETHEUS_CANDIDATES = ("/usr/bin/prometheus",)


def find_prometheus() -> str | None:
    found = shutil.which("prometheus")
    if found:
        return found
    for candidate in PROMETHEUS_CANDIDATES:
        if Path(candidate).exists():
            return candidate
    return None


def free_tcp_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


class Prometheus(Scoped):
    """A Prometheus scraping ``targets`` (job "pyresponder"; or the targets in a ``file_sd`` file)
    every ``interval`` seconds and evaluating ``rule_files`` at the same interval."""

    def __init__(
        self,
        targets: Sequence[str],
        rule_files: Sequence[Path] = (),
        interval: float = 1.0,
        job: str = "pyresponder",
        binary: str | None = None,
        file_sd: Path | None = None,
    ) -> None:
        self.targets = list(targets)
        self.file_sd = file_sd
        self.rule_files = [Path(path).resolve() for path in rule_files]
        self.interval = interval
        self.job = job
        self.binary = binary or find_prometheus()
        if self.binary is None:
            raise FileNotFoundError("prometheus not found: run scripts/install-prometheus")
        self.port = free_tcp_port()
        self.workdir = Path(tempfile.mkdtemp(prefix="pyresponder-prometheus-"))
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def config_text(self) -> str:
        # JSON is YAML: no YAML writer needed.
        interval = f"{int(self.interval * 1000)}ms"
        config = {
            "global": {"scrape_interval": interval, "evaluation_interval": interval,
                       "scrape_timeout": interval},
            "rule_files": [str(path) for path in self.rule_files],
            "scrape_configs": [
                {"job_name": self.job, "static_configs": [{"targets": self.targets}]}
                if self.file_sd is None else
                {"job_name": self.job, "file_sd_configs": [{"files": [str(self.file_sd)],
                                                            "refresh_interval": "1s"}]}
            ],
        }
        return json.dumps(config, indent=2)

    def start(self, wait: float = 20.0) -> Self:
        config = self.workdir / "prometheus.yml"
        config.write_text(self.config_text())
        assert self.binary is not None
        with (self.workdir / "prometheus.log").open("wb") as log:
            self.process = subprocess.Popen(
                [
                    self.binary,
                    f"--config.file={config}",
                    f"--storage.tsdb.path={self.workdir / 'data'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                    "--storage.tsdb.retention.time=1d",
                    "--log.level=warn",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"prometheus exited early:\n{self.log()}")
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=1) as response:
                    if response.status == 200:
                        return self
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.2)
        raise TimeoutError(f"prometheus was not ready in {wait} s:\n{self.log()}")

    def api(self, path: str, **params: str) -> Any:
        query = urllib.parse.urlencode(params)
        with urllib.request.urlopen(f"{self.url}/api/v1/{path}?{query}", timeout=10) as response:
            body = json.load(response)
        if body.get("status") != "success":
            raise RuntimeError(f"{path} {params}: {body}")
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """Instant query: the result vector (a list of {metric, value})."""
        data = self.api("query", query=expr)
        result: list[dict[str, Any]] = data["result"]
        return result

    def query_range(self, expr: str, start: float, end: float,
                    step: float) -> list[dict[str, Any]]:
        data = self.api("query_range", query=expr, start=f"{start:.3f}", end=f"{end:.3f}",
                        step=f"{step}")
        result: list[dict[str, Any]] = data["result"]
        return result

    def alerts(self) -> list[dict[str, Any]]:
        """Active alerts (pending and firing) with their labels and state."""
        alerts: list[dict[str, Any]] = self.api("alerts")["alerts"]
        return alerts

    def active_targets(self) -> list[dict[str, Any]]:
        targets: list[dict[str, Any]] = self.api("targets")["activeTargets"]
        return targets

    def log(self) -> str:
        path = self.workdir / "prometheus.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        self.process = None

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)
