"""Benchmark: pyresponder against chronyd on loopback, side by side.

For each server (chronyd itself, pyresponder with 1 worker, pyresponder with 2 workers) the offered
load is swept upwards with ``bench/ntpload`` (a C sendmmsg/recvmmsg generator) to find the largest
reply rate at less than 1% loss. Servers are interleaved within each repetition and the medians over
the repetitions are reported, with the replies per second of server CPU time at that peak, the p99
response time at half of that peak, and the ratios against chronyd.

Usage: python bench/run.py [--quick] [--reps N] [--duration S] [--out DIR] [--xdp]

With --xdp (root, kernel >= 6.1, the XDP object built) every server runs in a network namespace and
the generator in another, joined by a veth pair, and the XDP fast path (``pyresponder xdp``) is
swept beside them: its CPU is the machine's softirq time (an upper bound: it includes the veth
delivery of the other side too), and its program time per packet comes from BPF run-time stats
(BPF_ENABLE_STATS: on while this process holds the fd; no sysctl is changed).

Safety: traffic goes to 127.0.0.1, or with --xdp only inside the namespaces made here (deleted at
the end, which also detaches the XDP programs); chronyd runs with -x (never touches the clock);
every step of load is bounded in time and count by ntpload itself; only processes started here
are stopped.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.support.chronyd import Chronyd, free_udp_port  # noqa: E402

LOSS_LIMIT = 0.01  # a step passes when fewer than 1% of the requests got no on-time reply
NOISE_CORES = 0.25  # other processes using more than this meanwhile make a step "noisy"
SEND_SHORTFALL = 0.95  # below this fraction of the target the generator could not offer the load
CLK_TCK = os.sysconf("SC_CLK_TCK")


# ---- configuration -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Config:
    reps: int
    duration: float
    start_rate: int
    factor: float
    max_rate: int
    bisections: int
    gen_threads: int
    gen_cpu: int | None  # pin the generator to this CPU (None: let the scheduler place it)
    gen_sockets: int
    drain_ms: int
    late_ms: int
    quiet_wait: float  # before a sweep, wait up to this long for other processes to calm down
    retries: int  # extra attempts at a step disturbed by other processes
    patience: float  # total seconds the run may spend on such waits and extra attempts
    settle: float
    servers: tuple[str, ...]
    pyresponder_args: tuple[str, ...]
    out: Path
    quick: bool
    replot: Path | None = None
    combine: tuple[Path, ...] = ()
    xdp: bool = False  # servers in a namespace behind a veth pair, plus the XDP path
    xdp_mode: str = "native"
    baseline: Path | None = None  # another checkout's source tree, served as base<N>


def pyresponder_workers(name: str) -> int | None:
    """N of a pyresponder server name (py<N>, or base<N> for the --baseline checkout)."""
    for prefix in ("py", "base"):
        if name.startswith(prefix) and name[len(prefix) :].isdigit():
            return int(name[len(prefix) :])
    return None


def parse_args(argv: Sequence[str] | None = None) -> Config:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="short smoke run (< 60 s)")
    parser.add_argument("--reps", type=int, help="repetitions per server (default 3; quick 1)")
    parser.add_argument(
        "--duration", type=float, help="seconds of load per step (default 2; quick 0.5; max 30)"
    )
    parser.add_argument("--out", type=Path, default=BENCH / "out", help="output folder")
    parser.add_argument(
        "--servers",
        default=None,
        help="comma-separated subset of chronyd,py1,py2,xdp (py<N> = pyresponder with N workers;"
        " xdp needs --xdp; base<N> needs --baseline); default chronyd,py1,py2 (with --xdp: and"
        " xdp)",
    )
    parser.add_argument(
        "--baseline",
        type=Path,
        metavar="CHECKOUT",
        help="another checkout of this repository (e.g. a git worktree of an older commit): "
        "servers base<N> run its pyresponder with N workers, side by side with this one's",
    )
    parser.add_argument(
        "--xdp",
        action="store_true",
        help="run the servers in a network namespace behind a veth pair and add the XDP fast "
        "path (root, kernel >= 6.1)",
    )
    parser.add_argument("--xdp-mode", choices=("native", "generic"), default="native")
    parser.add_argument(
        "--pyresponder-args",
        default="",
        help='extra arguments for "pyresponder serve", e.g. "--io plain"',
    )
    parser.add_argument(
        "--replot",
        type=Path,
        metavar="RESULTS_JSON",
        help="only redraw the chart (into --out) from an earlier run's results.json",
    )
    parser.add_argument(
        "--combine",
        type=Path,
        nargs="+",
        metavar="RESULTS_JSON",
        help="only report: pool the sweeps of earlier runs' results.json files, medians over all",
    )
    parser.add_argument("--start-rate", type=int, help="first offered rate, requests/s")
    parser.add_argument("--max-rate", type=int, default=600_000, help="highest offered rate")
    parser.add_argument(
        "--gen-threads",
        type=int,
        default=1,
        choices=(1, 2),
        help="ntpload threads (default 1: the generator takes at most one core)",
    )
    parser.add_argument(
        "--gen-cpu",
        type=int,
        default=None,
        help="pin the generator to this CPU number (default: not pinned)",
    )
    parser.add_argument("--gen-sockets", type=int, default=16, help="ntpload source sockets")
    parser.add_argument(
        "--late-ms",
        type=int,
        default=20,
        help="a reply later than this counts as lost (default 20 ms): deep receive buffers "
        "queue rather than drop when a server cannot keep up",
    )
    args = parser.parse_args(argv)
    quick: bool = args.quick
    reps = args.reps if args.reps is not None else (1 if quick else 3)
    duration = args.duration if args.duration is not None else (0.5 if quick else 2.0)
    if reps < 1 or not 0 < duration <= 30:
        parser.error("--reps must be >= 1 and --duration in (0, 30]")
    names = args.servers or ("chronyd,py1,py2,xdp" if args.xdp else "chronyd,py1,py2")
    servers = tuple(s.strip() for s in names.split(",") if s.strip())
    for name in servers:
        if name == "xdp" and not args.xdp:
            parser.error("server xdp needs --xdp")
        if name.startswith("base") and args.baseline is None:
            parser.error(f"server {name} needs --baseline")
        if name not in ("chronyd", "xdp") and pyresponder_workers(name) is None:
            parser.error(f"unknown server {name!r}")
    if args.baseline is not None and not (args.baseline / "src" / "pyresponder").is_dir():
        parser.error(f"--baseline {args.baseline}: no src/pyresponder there")
    return Config(
        reps=reps,
        duration=duration,
        start_rate=args.start_rate or (20_000 if quick else 30_000),
        factor=1.5 if quick else 1.25,
        max_rate=args.max_rate,
        bisections=1 if quick else 2,
        gen_threads=args.gen_threads,
        gen_cpu=args.gen_cpu,
        gen_sockets=args.gen_sockets,
        drain_ms=200 if quick else 300,
        late_ms=args.late_ms,
        quiet_wait=0.0 if quick else 10.0,
        retries=0 if quick else 1,
        patience=0.0 if quick else 60.0,
        settle=0.1 if quick else 0.3,
        servers=servers,
        pyresponder_args=tuple(shlex.split(args.pyresponder_args)),
        baseline=args.baseline.resolve() if args.baseline is not None else None,
        out=args.out,
        quick=quick,
        replot=args.replot,
        combine=tuple(args.combine or ()),
        xdp=args.xdp,
        xdp_mode=args.xdp_mode,
    )


# ---- the load generator ------------------------------------------------------------------------


def build_ntpload(out: Path) -> Path:
    """Compile bench/ntpload.c into OUT when the binary is missing or older than the source."""
    source = BENCH / "ntpload.c"
    binary = out / "ntpload"
    if not binary.exists() or binary.stat().st_mtime < source.stat().st_mtime:
        out.mkdir(parents=True, exist_ok=True)
        cc = shutil.which("gcc") or shutil.which("cc")
        if cc is None:
            raise SystemExit("bench: gcc is needed to build bench/ntpload.c (apt-get install gcc)")
        subprocess.run([cc, "-O2", "-Wall", "-pthread", "-o", str(binary), str(source)], check=True)
    return binary


@dataclass
class Step:
    """One bounded burst of load at one offered rate, as ntpload and /proc saw it."""

    target: int
    send_rate: float
    reply_rate: float
    loss: float
    loss_or_late: float
    sent: int
    matched: int
    late: int
    unsync: int  # replies that said "unsynchronized"
    p50_us: int
    p99_us: int
    gen_cpu_s: float
    server_cpu_s: float
    duration_s: float  # of sending
    wall_s: float  # of the whole step, sending and draining: the CPU times cover this
    other_cores: float  # CPU used meanwhile by other processes on the machine (noise)
    softirq_cores: float  # softirq time, charged to no process (loopback delivery, mostly)
    kind: str = "grid"  # grid, bisect (refining the knee) or half (latency at half the max)
    prog_ns_per_packet: float = 0.0  # XDP only: BPF run time per program run

    @property
    def gen_limited(self) -> bool:
        return self.send_rate < SEND_SHORTFALL * self.target

    @property
    def served(self) -> bool:
        """The server answered all but < 1% of what was sent, on time."""
        return self.loss_or_late < LOSS_LIMIT

    @property
    def ok(self) -> bool:
        return self.served and not self.gen_limited

    @property
    def verdict(self) -> str:
        if not self.served:
            return "LOSS" if self.loss >= LOSS_LIMIT else "LATE"
        return "GEN-LIMITED" if self.gen_limited else "ok"

    @property
    def ontime_rate(self) -> float:
        """Replies per second that came back within the late limit."""
        return (self.matched - self.late) / self.duration_s if self.duration_s > 0 else 0.0

    @property
    def per_cpu_s(self) -> float:
        return self.matched / self.server_cpu_s if self.server_cpu_s > 0 else 0.0


def proc_tree(root: int) -> list[int]:
    """ROOT and all its descendants, found by scanning /proc for parent ids."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents.setdefault(int(fields[1]), []).append(int(entry))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(parents.get(pid, []))
    return tree


def cpu_times(root: int) -> dict[int, float]:
    """utime + stime in seconds of ROOT and each of its descendants."""
    times: dict[int, float] = {}
    for pid in proc_tree(root):
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        times[pid] = (int(fields[11]) + int(fields[12])) / CLK_TCK
    return times


def cpu_used(before: dict[int, float], after: dict[int, float]) -> float:
    return sum(t - before.get(pid, 0.0) for pid, t in after.items())


def system_cpu() -> tuple[float, float]:
    """Machine-wide (task time, softirq time) in seconds, from the first line of /proc/stat."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    user, nice, system, _idle, _iowait, _irq, softirq, steal = v[:8]
    return (user + nice + system + steal) / CLK_TCK, softirq / CLK_TCK


@dataclass
class Net:
    """Where the generator sends: loopback, or (--xdp) the server side of a veth pair."""

    host: str = "127.0.0.1"
    listen_host: str = "127.0.0.1"
    client_ns: str | None = None
    server_ns: str | None = None
    xdp_pids: dict[int, int] = field(default_factory=dict)  # server pid -> XDP program fd

    def prefix(self) -> list[str]:
        return ["ip", "netns", "exec", self.client_ns] if self.client_ns else []


NET = Net()


def run_step(cfg: Config, binary: Path, port: int, server_pid: int, rate: int) -> Step:
    cmd = [
        *NET.prefix(),
        str(binary),
        "-r", str(rate),
        "-d", str(cfg.duration),
        "-s", str(cfg.gen_sockets),
        "-t", str(cfg.gen_threads),
        "-w", str(cfg.drain_ms),
        "-l", str(cfg.late_ms),
        *(["-N"] if NET.client_ns else []),
        NET.host, str(port),
    ]  # fmt: skip
    prog_fd = NET.xdp_pids.get(server_pid)
    prog_before = program_run_stats(prog_fd) if prog_fd is not None else (0, 0)
    before = cpu_times(server_pid)
    sys_before = system_cpu()
    cpu = cfg.gen_cpu
    pin = None if cpu is None else (lambda: os.sched_setaffinity(0, {cpu}))
    proc = subprocess.run(
        cmd,
        check=False,
        capture_output=True,
        text=True,
        timeout=cfg.duration + 15,
        preexec_fn=pin,
    )
    after = cpu_times(server_pid)
    sys_after = system_cpu()
    if proc.returncode != 0:
        raise RuntimeError(f"ntpload failed ({proc.returncode}): {proc.stderr.strip()}")
    r: dict[str, Any] = json.loads(proc.stdout)
    time.sleep(cfg.settle)
    server_cpu = cpu_used(before, after)
    prog_ns = 0.0
    if prog_fd is not None:
        # The XDP program runs in softirq context, charged to no process: count that time.
        server_cpu += sys_after[1] - sys_before[1]
        prog_after = program_run_stats(prog_fd)
        runs = prog_after[1] - prog_before[1]
        prog_ns = (prog_after[0] - prog_before[0]) / runs if runs > 0 else 0.0
    wall = float(r["wall_s"])
    tasks = sys_after[0] - sys_before[0]
    other = max(tasks - server_cpu - float(r["gen_cpu_s"]), 0.0)
    return Step(
        target=rate,
        send_rate=float(r["send_rate"]),
        reply_rate=float(r["reply_rate"]),
        loss=float(r["loss"]),
        loss_or_late=float(r["loss_or_late"]),
        sent=int(r["sent"]),
        matched=int(r["matched"]),
        late=int(r["late"]),
        unsync=int(r["unsync"]),
        p50_us=int(r["p50_us"]),
        p99_us=int(r["p99_us"]),
        gen_cpu_s=float(r["gen_cpu_s"]),
        server_cpu_s=server_cpu,
        duration_s=float(r["duration_s"]),
        wall_s=wall,
        other_cores=other / wall,
        softirq_cores=(sys_after[1] - sys_before[1]) / wall,
        prog_ns_per_packet=prog_ns,
    )


# ---- servers -----------------------------------------------------------------------------------


@dataclass
class Server:
    key: str
    label: str
    port: int
    pid: int


def pyresponder_bin() -> str | None:
    beside = Path(sys.executable).parent / "pyresponder"
    if beside.exists():
        return str(beside)
    return shutil.which("pyresponder")


def probe_ok(port: int) -> bool:
    """True when 127.0.0.1:PORT answers a client request with a synchronized mode-4 reply."""
    request = bytes([0x23]) + bytes(39) + os.urandom(8)
    with in_namespace(NET.client_ns):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with sock:
        sock.settimeout(0.3)
        try:
            sock.sendto(request, (NET.host, port))
            reply = sock.recv(1024)
        except OSError:
            return False
    return (
        len(reply) >= 48
        and reply[0] & 7 == 4
        and reply[0] >> 6 != 3
        and reply[1] != 0
        and reply[24:32] == request[40:48]
    )


class PyResponder:
    """``pyresponder serve`` on 127.0.0.1 with N workers, fed by the benchmark's chronyd."""

    def __init__(
        self,
        command: Sequence[str],
        workers: int,
        backend_port: int,
        log_path: Path,
        extra: Sequence[str] = (),
        env: dict[str, str] | None = None,
    ) -> None:
        self.port = free_udp_port()
        self.workers = workers
        self.log_path = log_path
        cmd = [
            *command, "serve",
            "--listen", f"{NET.listen_host}:{self.port}",
            "--backend", f"127.0.0.1:{backend_port}",
            "--workers", str(workers),
            *extra,
        ]  # fmt: skip
        with self.log_path.open("wb") as log, in_namespace(NET.server_ns):
            self.process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)

    def wait_ready(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"pyresponder exited early:\n{self.log()}")
            if probe_ok(self.port):
                return
            time.sleep(0.2)
        raise TimeoutError(f"pyresponder did not serve within {timeout} s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-2000:]

    def stop(self) -> None:
        """SIGTERM the process we started; then SIGKILL, by pid, whatever of its tree remains."""
        tree = proc_tree(self.process.pid)
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        for pid in tree[1:]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def in_namespace(name: str | None) -> contextlib.AbstractContextManager[None]:
    """Enter a test namespace for the moment (sockets and processes made meanwhile stay there)."""
    if name is None:
        return contextlib.nullcontext()
    from tests.support.netns import entered  # noqa: PLC0415 (only with --xdp)

    return entered(name)


class NamespaceChronyd(Chronyd):
    """The benchmark's chronyd inside the server namespace, answering on every address there."""

    def config_text(self) -> str:
        return super().config_text().replace("bindaddress 127.0.0.1\n", "").replace(
            "allow 127.0.0.1\n", "allow all\n"
        )


@contextlib.contextmanager
def xdp_bed(cfg: Config, notes: list[str]) -> Iterator[Any]:
    """With --xdp: the veth pair, the peer's pass program and BPF run-time stats, else nothing."""
    if not cfg.xdp:
        yield None
        return
    from pyresponder.xdp import libbpf  # noqa: PLC0415
    from tests.support.netns import VethPair  # noqa: PLC0415
    from tests.support.xdp import PeerPass, skip_reason  # noqa: PLC0415

    reason = skip_reason()
    if reason is not None:
        raise SystemExit(f"bench: --xdp is not possible here: {reason}")
    pair = VethPair("b").start()
    peer = None
    stats_fd = -1
    try:
        if cfg.xdp_mode == "native":
            peer = PeerPass(pair.client)
        stats_fd = libbpf.enable_run_time_stats()
        NET.host, NET.listen_host = pair.server.ipv4, "0.0.0.0"
        NET.client_ns, NET.server_ns = pair.client.ns, pair.server.ns
        notes.append(
            f"--xdp: servers in namespace {pair.server.ns} ({pair.server.ipv4}), generator in "
            f"{pair.client.ns}, one veth pair; XDP in {cfg.xdp_mode} mode"
        )
        yield pair
    finally:
        NET.host, NET.listen_host, NET.client_ns, NET.server_ns = (
            "127.0.0.1", "127.0.0.1", None, None
        )
        for fd in NET.xdp_pids.values():
            os.close(fd)
        NET.xdp_pids.clear()
        if stats_fd >= 0:
            os.close(stats_fd)
        if peer is not None:
            peer.close()
        pair.cleanup()


def program_run_stats(fd: int) -> tuple[int, int]:
    from pyresponder.xdp.libbpf import program_run_stats as stats  # noqa: PLC0415

    return stats(fd)


def start_xdp(cfg: Config, pair: Any, backend_port: int, port: int) -> subprocess.Popen[bytes]:
    """``pyresponder xdp`` on the server's veth end, answering ``port``; registers its program."""
    from pyresponder.xdp import libbpf  # noqa: PLC0415

    log_path = cfg.out / "pyresponder-xdp.log"
    cmd = [
        sys.executable, "-m", "pyresponder", "xdp",
        "--interface", pair.server.dev, "--xdp-mode", cfg.xdp_mode, "--port", str(port),
        "--backend", f"127.0.0.1:{backend_port}", "--counters-file", "-",
    ]  # fmt: skip
    with log_path.open("wb") as log, in_namespace(NET.server_ns):
        process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 20
    while "kernel replies synchronized" not in log_path.read_text(errors="replace"):
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise RuntimeError(f"pyresponder xdp did not start: {log_path.read_text()[-500:]}")
        time.sleep(0.1)
    shown = subprocess.run(["ip", "-n", pair.server.ns, "-j", "-d", "link", "show", "dev",
                            pair.server.dev], capture_output=True, text=True, check=True)
    link = json.loads(shown.stdout)[0]
    program_id = int(link["xdp"]["prog"]["id"])
    NET.xdp_pids[process.pid] = libbpf.program_fd_by_id(program_id)
    return process


@contextlib.contextmanager
def servers_running(cfg: Config, notes: list[str]) -> Iterator[tuple[list[Server], Server]]:
    """Start chronyd and the pyresponder instances; yield (servers to sweep, chronyd)."""
    with xdp_bed(cfg, notes) as pair, _servers_running(cfg, notes, pair) as running:
        yield running


@contextlib.contextmanager
def _servers_running(
    cfg: Config, notes: list[str], pair: Any
) -> Iterator[tuple[list[Server], Server]]:
    chronyd = NamespaceChronyd() if pair is not None else Chronyd()
    started: list[PyResponder] = []
    xdp_process: subprocess.Popen[bytes] | None = None
    try:
        with in_namespace(NET.server_ns):
            chronyd.start()
        servers: list[Server] = []
        binary = pyresponder_bin()
        chronyd_server = Server("chronyd", "chronyd", chronyd.port, chronyd.pid())
        for key in cfg.servers:
            if key == "chronyd":
                servers.append(chronyd_server)
                continue
            if key == "xdp":
                port = free_udp_port()
                xdp_process = start_xdp(cfg, pair, chronyd.port, port)
                label = f"XDP ({cfg.xdp_mode})"
                servers.append(Server("xdp", label, port, xdp_process.pid))
                continue
            workers = pyresponder_workers(key)
            assert workers is not None  # parse_args checked the names
            env: dict[str, str] | None = None
            if key.startswith("base"):
                assert cfg.baseline is not None
                label = f"baseline {workers}w"
                # The same interpreter, importing the other checkout's package first.
                command: list[str] = [sys.executable, "-m", "pyresponder"]
                env = {**os.environ, "PYTHONPATH": str(cfg.baseline / "src")}
            elif binary is None:
                notes.append(f"pyresponder {workers}w: skipped, no pyresponder executable here")
                continue
            else:
                label = f"pyresponder {workers}w"
                command = [binary]
            log_path = cfg.out / f"{key}.log"
            resp = PyResponder(command, workers, chronyd.port, log_path, cfg.pyresponder_args, env)
            started.append(resp)
            try:
                resp.wait_ready()
            except (RuntimeError, TimeoutError) as exc:
                said = [line for line in str(exc).splitlines() if line.strip()]
                why = said[0] + (f" ... {said[-1].strip()}" if len(said) > 1 else "")
                notes.append(f"{label}: skipped, it did not serve: {why}")
                resp.stop()
                continue
            servers.append(Server(key, label, resp.port, resp.process.pid))
        yield servers, chronyd_server
    finally:
        for resp in started:
            resp.stop()
        if xdp_process is not None and xdp_process.poll() is None:
            xdp_process.terminate()
            try:
                xdp_process.wait(10)
            except subprocess.TimeoutExpired:
                xdp_process.kill()
                xdp_process.wait(5)
        chronyd.cleanup()


# ---- the sweep ---------------------------------------------------------------------------------


@dataclass
class Sweep:
    server: str
    rep: int
    steps: list[Step] = field(default_factory=list)
    best: Step | None = None
    half: Step | None = None
    gen_bound: bool = False

    @property
    def other_cores(self) -> float:
        """Median CPU (cores) that other processes used during this sweep's steps."""
        return statistics.median(st.other_cores for st in self.steps) if self.steps else 0.0

    @property
    def quiet(self) -> bool:
        return self.other_cores < NOISE_CORES


def rate_grid(cfg: Config) -> list[int]:
    rates, rate = [], float(cfg.start_rate)
    while rate <= cfg.max_rate:
        rates.append(int(round(rate, -3)))
        rate *= cfg.factor
    return rates


def sweep(cfg: Config, binary: Path, server: Server, rep: int) -> Sweep:
    """Raise the offered load along the grid until the server fails, then bisect the knee."""
    result = Sweep(server.key, rep)

    def step(rate: int, kind: str) -> Step:
        tries: list[Step] = []
        for attempt in range(cfg.retries + 1):
            if attempt:
                PATIENCE.spend(cfg.duration + 0.5)
                wait_quiet(3.0)
            s = run_step(cfg, binary, server.port, server.pid, rate)
            tries.append(s)
            s.kind = kind
            result.steps.append(s)
            noisy = (
                s.other_cores > NOISE_CORES
                and (kind == "half" or not s.ok)
                and attempt < cfg.retries
                and PATIENCE.left() > cfg.duration + 0.5
            )
            print(
                f"  {server.label:15s} rep {rep + 1} {rate:>7d}/s: sent {s.send_rate:>7.0f}/s "
                f"replies {s.reply_rate:>7.0f}/s loss {s.loss:6.2%} "
                f"late {s.late / max(s.sent, 1):6.2%} p99 {s.p99_us / 1000:7.2f} ms "
                f"CPU server {s.server_cpu_s / s.wall_s:4.2f} gen {s.gen_cpu_s / s.wall_s:4.2f} "
                f"other {s.other_cores:4.2f}  {s.verdict}" + (" (noisy: again)" if noisy else ""),
                flush=True,
            )
            if not noisy:
                break
            s.kind = "noisy"  # another process took the CPU: measure this step once more
        if kind == "half" and len(tries) > 1:
            quietest = min(tries, key=lambda t: t.other_cores)  # the quietest one counts
            for t in tries:
                t.kind = "half" if t is quietest else "noisy"
            return quietest
        return s

    # Walk up the grid; stop after two failed steps in a row or one clear collapse. A single
    # failed step below a passing one is noise on this shared machine (a few ms of descheduling
    # overflows chronyd's default receive buffer), so the sweep goes on past it.
    failures = 0
    gen_stop = False
    for rate in rate_grid(cfg):
        s = step(rate, "grid")
        if s.ok:
            failures = 0
            continue
        if s.served and s.gen_limited:
            gen_stop = True
            break
        failures += 1
        if failures >= 2 or s.loss_or_late > 0.2:
            break
    passing = [st for st in result.steps if st.ok and st.kind != "noisy"]
    best = max(passing, key=lambda st: st.reply_rate, default=None)
    lo = best.target if best else 0
    above = [
        st.target for st in result.steps if not st.ok and st.kind != "noisy" and st.target > lo
    ]
    hi = min(above, default=0)
    result.gen_bound = gen_stop and not any(
        not st.served and st.kind != "noisy" and st.target > lo for st in result.steps
    )
    # Bisect between the best passing rate and the next failing one.
    for _ in range(cfg.bisections if hi else 0):
        mid = int(round((lo + hi) / 2, -3))
        if mid <= lo or mid >= hi:
            break
        s = step(mid, "bisect")
        if s.ok:
            lo = mid
            if best is None or s.reply_rate > best.reply_rate:
                best = s
        else:
            hi = mid
    result.best = best
    if best is not None:
        half = int(round(best.reply_rate / 2, -2))
        result.half = step(max(half, 1000), "half")
    return result


class Patience:
    """A budget of seconds for waiting out other processes, so a busy machine cannot stretch
    the run without bound."""

    def __init__(self) -> None:
        self.remaining = 0.0

    def left(self) -> float:
        return max(self.remaining, 0.0)

    def spend(self, seconds: float) -> None:
        self.remaining -= seconds


PATIENCE = Patience()


def wait_quiet(max_wait: float) -> float:
    """Wait up to MAX_WAIT s (within the patience budget) until other processes use less than
    NOISE_CORES; return the last reading, in cores."""
    started = time.monotonic()
    deadline = started + min(max_wait, PATIENCE.left())
    while True:
        before = system_cpu()[0]
        time.sleep(0.5)
        busy = (system_cpu()[0] - before) / 0.5
        if busy < NOISE_CORES or time.monotonic() >= deadline:
            PATIENCE.spend(max(time.monotonic() - started - 0.5, 0.0))
            return busy


def generator_check(cfg: Config, binary: Path, chronyd: Server) -> dict[str, Any]:
    """The generator's own ceiling: flat out into a sink that never reads, then against chronyd."""
    flat_out = 1_000_000  # ntpload's cap: it sends as fast as it can
    with in_namespace(NET.server_ns):
        sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with sink:
        sink.bind((NET.host, 0))
        sink_port: int = sink.getsockname()[1]
        # The sink's pid is ours; its CPU is not what is measured here.
        alone = run_step(cfg, binary, sink_port, os.getpid(), flat_out)
    against = run_step(cfg, binary, chronyd.port, chronyd.pid, flat_out)
    # Cores while sending: the drain after it is short and nearly idle at chronyd's small queue.
    gen_share = against.gen_cpu_s / against.duration_s
    srv_share = against.server_cpu_s / against.duration_s
    if srv_share >= 0.8 and gen_share >= 0.8 * cfg.gen_threads:
        bottleneck = "both: each had (nearly) a full core, the cores were the limit"
    elif srv_share >= 0.85:
        bottleneck = "server (chronyd is single-threaded and had a full core)"
    elif gen_share >= 0.85 * cfg.gen_threads:
        bottleneck = "generator (it had all the CPU it may use)"
    else:
        bottleneck = "the shared cores (neither had all the CPU it could use)"
    check = {
        "send_only_rate": round(alone.send_rate),
        "send_only_gen_cores": round(alone.gen_cpu_s / alone.duration_s, 2),
        "vs_chronyd_send_rate": round(against.send_rate),
        "vs_chronyd_reply_rate": round(against.reply_rate),
        "vs_chronyd_loss": round(against.loss, 4),
        "vs_chronyd_gen_cores": round(gen_share, 2),
        "vs_chronyd_server_cores": round(srv_share, 2),
        "bottleneck": bottleneck,
    }
    print(
        f"  generator flat out: alone {check['send_only_rate']}/s sent "
        f"({check['send_only_gen_cores']} cores); against chronyd {check['vs_chronyd_send_rate']}"
        f"/s sent, {check['vs_chronyd_reply_rate']}/s replies, generator "
        f"{check['vs_chronyd_gen_cores']} cores, chronyd {check['vs_chronyd_server_cores']} cores"
        f" -> bottleneck: {bottleneck}",
        flush=True,
    )
    return check


# ---- summary -----------------------------------------------------------------------------------


def med(values: Sequence[float]) -> float | None:
    return statistics.median(values) if values else None


def summarize(cfg: Config, servers: list[Server], sweeps: list[Sweep]) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    for srv in servers:
        mine = [s for s in sweeps if s.server == srv.key]
        bests = [s.best for s in mine if s.best is not None]
        halves = [s.half for s in mine if s.half is not None]
        summary[srv.key] = {
            "label": srv.label,
            "max_replies_per_s": med([b.reply_rate for b in bests]),
            "max_replies_per_s_each": [round(b.reply_rate) for b in bests],
            "per_sweep": [
                {
                    "rep": s.rep + 1,
                    "max_replies_per_s": round(s.best.reply_rate) if s.best else None,
                    "replies_per_cpu_s": round(s.best.per_cpu_s) if s.best else None,
                    "p99_us_at_half_max": s.half.p99_us if s.half else None,
                    "other_cores": round(s.other_cores, 2),
                    "quiet": s.quiet,
                }
                for s in mine
            ],
            "quiet_sweeps": sum(1 for s in mine if s.quiet),
            "quiet_max_replies_per_s": med([s.best.reply_rate for s in mine if s.quiet and s.best]),
            "quiet_replies_per_cpu_s": med([s.best.per_cpu_s for s in mine if s.quiet and s.best]),
            "replies_per_cpu_s": med([b.per_cpu_s for b in bests]),
            "server_cpu_share_at_max": med([b.server_cpu_s / b.wall_s for b in bests]),
            "gen_cpu_share_at_max": med([b.gen_cpu_s / b.wall_s for b in bests]),
            "p99_us_at_half_max": med([float(h.p99_us) for h in halves]),
            "p50_us_at_half_max": med([float(h.p50_us) for h in halves]),
            "prog_ns_per_packet_at_max": med(
                [b.prog_ns_per_packet for b in bests if b.prog_ns_per_packet > 0]
            ),
            "gen_bound_sweeps": sum(1 for s in mine if s.gen_bound),
            "unsync_replies": sum(st.unsync for s in mine for st in s.steps),
            "other_cores_median": med([st.other_cores for s in mine for st in s.steps]),
            "noisy_steps_repeated": sum(1 for s in mine for st in s.steps if st.kind == "noisy"),
            "sweeps": len(mine),
        }
    base = summary.get("chronyd")
    for entry in summary.values():
        ratios: dict[str, float | None] = {}
        for k in ("max_replies_per_s", "replies_per_cpu_s", "p99_us_at_half_max"):
            a, b = entry[k], base[k] if base else None
            ratios[k] = round(a / b, 3) if a and b else None
        entry["vs_chronyd"] = ratios
    return summary


@dataclass
class ChartPoint:
    """Medians over the repetitions at one grid rate."""

    offered: float  # achieved send rate
    ontime: float  # replies/s within the late limit
    replies: float  # all matched replies/s
    failed: float  # fraction of requests lost or late
    few: bool  # fewer than half of the sweeps got this far (the quieter ones, mostly)


def chart_points(sweeps: list[Sweep], key: str) -> list[ChartPoint]:
    by_rate: dict[int, list[Step]] = {}
    total = sum(1 for sw in sweeps if sw.server == key)
    for sw in sweeps:
        if sw.server != key:
            continue
        for st in sw.steps:
            if st.kind == "grid":
                by_rate.setdefault(st.target, []).append(st)
    return [
        ChartPoint(
            offered=statistics.median(s.send_rate for s in steps),
            ontime=statistics.median(s.ontime_rate for s in steps),
            replies=statistics.median(s.reply_rate for s in steps),
            failed=statistics.median(s.loss_or_late for s in steps),
            few=2 * len(steps) < total,
        )
        for _, steps in sorted(by_rate.items())
    ]


def write_chart(path: Path, servers: list[Server], sweeps: list[Sweep], title: str) -> bool:
    """Left: replies/s against offered load. Right: the share lost or late, on a log scale."""
    try:
        import matplotlib  # noqa: PLC0415 (optional: the bench extra)

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # noqa: PLC0415
    except ImportError:
        return False
    fig, (ax, ax_fail) = plt.subplots(1, 2, figsize=(12, 5), dpi=90)
    top = 0.0
    floor = 1e-4  # 0.01%: where "nothing lost" is drawn on the log scale
    for srv in servers:
        pts = chart_points(sweeps, srv.key)
        if not pts:
            continue
        xs = [p.offered / 1000 for p in pts]
        top = max(top, *xs, *(p.replies / 1000 for p in pts))
        (line,) = ax.plot(xs, [p.ontime / 1000 for p in pts], marker="o", markersize=3)
        line.set_label(srv.label)
        color = line.get_color()
        ax.plot(xs, [p.replies / 1000 for p in pts], "--", linewidth=1, color=color, alpha=0.5)
        fails = [max(p.failed, floor) * 100 for p in pts]
        ax_fail.plot(xs, fails, marker="o", markersize=3, color=color, label=srv.label)
        for p, x, f in zip(pts, xs, fails, strict=True):
            if p.few:  # hollow: medians of fewer than half of the sweeps
                ax.plot([x], [p.ontime / 1000], "o", markersize=7, mfc="white", color=color)
                ax_fail.plot([x], [f], "o", markersize=7, mfc="white", color=color)
    ax.plot([0, top], [0, top], linestyle=":", color="grey", label="replies = offered")
    ax.plot([], [], linestyle="--", color="grey", alpha=0.5, label="dashed: all replies, late too")
    ax.plot([], [], "o", mfc="white", color="grey", label="hollow: < half the sweeps got there")
    ax.set_xlabel("offered load (thousand requests/s, achieved)")
    ax.set_ylabel("replies/s within the late limit (thousands)")
    ax.set_ylim(bottom=0)
    ax.set_xlim(left=0)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    ax_fail.axhline(LOSS_LIMIT * 100, color="red", linestyle=":", label="1% limit")
    ax_fail.set_yscale("log")
    ax_fail.set_ylim(floor * 100 / 2, 100)
    ax_fail.set_xlim(left=0)
    ax_fail.set_xlabel("offered load (thousand requests/s, achieved)")
    ax_fail.set_ylabel("requests lost or late, % (0 drawn at 0.01%)")
    ax_fail.grid(True, alpha=0.3, which="both")
    ax_fail.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True


def machine_info() -> dict[str, Any]:
    info: dict[str, Any] = {
        "cores": os.cpu_count(),
        "kernel": platform.release(),
        "python": platform.python_version(),
    }
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    chronyd = shutil.which("chronyd") or "/usr/sbin/chronyd"
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(
            [chronyd, "-v"], check=False, capture_output=True, text=True, timeout=5
        )
        words = out.stdout.split()
        if "version" in words:  # "chronyd (chrony) version 4.3 (+CMDMON ...)"
            info["chronyd"] = words[words.index("version") + 1]
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
            check=False,
            capture_output=True,
            text=True,
            timeout=5,
        )
        info["commit"] = out.stdout.strip()
    return info


def fmt_rate(v: float | None) -> str:
    return "-" if v is None else f"{v / 1000:.0f}k"


def fmt_ms(us: float | None) -> str:
    return "-" if us is None else f"{us / 1000:.2f} ms"


def fmt_ratio(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}"


def report(
    cfg: Config, summary: dict[str, Any], notes: list[str], gen_check: dict[str, Any]
) -> str:
    lines = [
        "",
        f"Medians of {cfg.reps} interleaved repetition(s); max = highest matched replies/s "
        f"with < {LOSS_LIMIT:.0%} of requests lost or answered later than {cfg.late_ms} ms; "
        f"{cfg.duration:g} s per step.",
        f"{'server':16s} {'max/s':>8s} {'per CPU-s':>10s} {'p99@half':>10s} "
        f"{'each max/s':>24s}  {'vs chronyd (max / per CPU-s / p99)':s}",
    ]
    for entry in summary.values():
        r = entry["vs_chronyd"]
        each = ",".join(fmt_rate(v) for v in entry["max_replies_per_s_each"])
        lines.append(
            f"{entry['label']:16s} {fmt_rate(entry['max_replies_per_s']):>8s} "
            f"{fmt_rate(entry['replies_per_cpu_s']):>10s} "
            f"{fmt_ms(entry['p99_us_at_half_max']):>10s} {each:>24s}  "
            f"{fmt_ratio(r['max_replies_per_s'])} / {fmt_ratio(r['replies_per_cpu_s'])} / "
            f"{fmt_ratio(r['p99_us_at_half_max'])}"
        )
    lines.append("")
    lines.append(
        "per sweep (rep: max/s, per CPU-s, p99 at half max, other processes' load in cores):"
    )
    for entry in summary.values():
        parts = [
            f"{p['rep']}: {fmt_rate(p['max_replies_per_s'])} {fmt_rate(p['replies_per_cpu_s'])} "
            f"{fmt_ms(p['p99_us_at_half_max'])} other {p['other_cores']:.2f}"
            for p in entry["per_sweep"]
        ]
        lines.append(f"  {entry['label']:16s} " + " | ".join(parts))
    quiet = [
        f"{e['label']} {fmt_rate(e['quiet_max_replies_per_s'])}/s, "
        f"{fmt_rate(e['quiet_replies_per_cpu_s'])} per CPU-s ({e['quiet_sweeps']} sweep(s))"
        for e in summary.values()
        if e["quiet_sweeps"]
    ]
    lines.append(
        f"quiet sweeps only (other load < {NOISE_CORES} cores), medians: "
        + ("; ".join(quiet) if quiet else "none")
    )
    lines.append("")
    gen_shares = [e["gen_cpu_share_at_max"] for e in summary.values() if e["gen_cpu_share_at_max"]]
    srv_shares = [
        f"{e['label']} {e['server_cpu_share_at_max']:.2f}"
        for e in summary.values()
        if e["server_cpu_share_at_max"] is not None
    ]
    lines.append(
        f"note: the load generator shares the {os.cpu_count()} cores with the server; at the peaks "
        f"it used {min(gen_shares, default=0):.2f}-{max(gen_shares, default=0):.2f} cores, the "
        f"servers used (cores): {', '.join(srv_shares) or '-'}."
    )
    others = [e["other_cores_median"] for e in summary.values() if e["other_cores_median"]]
    repeated = sum(e["noisy_steps_repeated"] for e in summary.values())
    lines.append(
        f"note: other processes used a median {statistics.median(others) if others else 0:.2f} "
        f"cores during the steps; {repeated} step(s) disturbed by more than {NOISE_CORES} cores "
        "of such load were measured again."
    )
    lines.append(
        f"note: generator ceiling ({cfg.gen_threads} thread(s)): {gen_check['send_only_rate']}/s "
        f"sent into a sink; flat out against chronyd {gen_check['vs_chronyd_send_rate']}/s sent, "
        f"{gen_check['vs_chronyd_reply_rate']}/s answered (generator "
        f"{gen_check['vs_chronyd_gen_cores']} cores, chronyd "
        f"{gen_check['vs_chronyd_server_cores']} cores): bottleneck = {gen_check['bottleneck']}."
    )
    gen_bound = [e["label"] for e in summary.values() if e["gen_bound_sweeps"]]
    if gen_bound:
        lines.append(
            "note: the generator could not offer the next load step in some sweeps of: "
            + ", ".join(gen_bound)
            + " (their max is a lower bound)."
        )
    lines.extend(f"note: {n}" for n in notes)
    for entry in summary.values():
        if entry.get("prog_ns_per_packet_at_max"):
            lines.append(
                f"{entry['label']}: program time {entry['prog_ns_per_packet_at_max']:.0f} ns per "
                "packet at the max (BPF run-time stats); its CPU is the machine's softirq time"
            )
    for entry in summary.values():
        if entry["unsync_replies"]:
            lines.append(
                f"WARNING: {entry['label']} sent {entry['unsync_replies']} replies saying "
                "unsynchronized (LI=3 or stratum 0) during the run"
            )
    base = summary.get("chronyd")
    for key, entry in summary.items():
        if key == "chronyd" or base is None:
            continue
        r = entry["vs_chronyd"]
        lines.append(
            f"ratio {entry['label']} / chronyd: max replies/s {fmt_ratio(r['max_replies_per_s'])}, "
            f"replies per CPU-s {fmt_ratio(r['replies_per_cpu_s'])}, "
            f"p99 at half max {fmt_ratio(r['p99_us_at_half_max'])}"
        )
    return "\n".join(lines)


def chart_title(
    cores: int | None, reps: int, duration: float, late_ms: int, veth: bool = False
) -> str:
    where = "a veth pair" if veth else "loopback"
    return (
        f"NTP replies vs offered load on {where}, {cores} cores shared with the generator "
        f"(medians of {reps} rep(s), {duration:g} s steps; solid: replies within {late_ms} ms)"
    )


def load_results(path: Path, rep_offset: int = 0) -> tuple[dict[str, Any], list[Sweep]]:
    """An earlier run's results.json, with its sweeps rebuilt (best and half steps included)."""
    data: dict[str, Any] = json.loads(path.read_text())
    sweeps = []
    for sw in data["sweeps"]:
        steps = [Step(**st) for st in sw["steps"]]
        sweep_ = Sweep(sw["server"], sw["rep"] + rep_offset, steps=steps)
        sweep_.gen_bound = sw["gen_bound"]
        sweep_.best = Step(**sw["best"]) if sw["best"] else None
        sweep_.half = Step(**sw["half"]) if sw["half"] else None
        sweeps.append(sweep_)
    return data, sweeps


def combine(cfg: Config) -> int:
    """Report the medians over all sweeps of several earlier runs."""
    all_sweeps: list[Sweep] = []
    labels: dict[str, str] = {}
    data: dict[str, Any] = {}
    for path in cfg.combine:
        data, sweeps = load_results(
            path, rep_offset=1 + max((s.rep for s in all_sweeps), default=-1)
        )
        all_sweeps.extend(sweeps)
        labels.update({k: v["label"] for k, v in data["summary"].items()})
    servers = [Server(key, label, 0, 0) for key, label in labels.items()]
    c = data["config"]
    per_server = max((sum(1 for s in all_sweeps if s.server == k) for k in labels), default=0)
    pooled = replace(cfg, reps=per_server, duration=c["duration"], late_ms=c["late_ms"])
    summary = summarize(pooled, servers, all_sweeps)
    notes = [f"pooled from {len(cfg.combine)} runs: " + ", ".join(str(p) for p in cfg.combine)]
    cfg.out.mkdir(parents=True, exist_ok=True)
    chart = cfg.out / "combined_replies_vs_offered.png"
    title = chart_title(
        data["machine"].get("cores"), per_server, c["duration"], c["late_ms"], bool(c.get("xdp"))
    )
    if write_chart(chart, servers, all_sweeps, title.replace("rep(s)", "sweeps pooled")):
        print(f"bench: wrote {chart}")
    print(report(pooled, summary, notes, data["generator_check"]))
    return 0


def replot(results_path: Path, out: Path) -> int:
    """Redraw the chart from a results.json written by an earlier run."""
    data, sweeps = load_results(results_path)
    servers = [Server(key, entry["label"], 0, 0) for key, entry in data["summary"].items()]
    c = data["config"]
    chart = out / "replies_vs_offered.png"
    title = chart_title(
        data["machine"].get("cores"), c["reps"], c["duration"], c["late_ms"], bool(c.get("xdp"))
    )
    if not write_chart(chart, servers, sweeps, title):
        print("bench: matplotlib is missing", file=sys.stderr)
        return 1
    print(f"bench: wrote {chart}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    cfg = parse_args(argv)
    if cfg.replot is not None:
        cfg.out.mkdir(parents=True, exist_ok=True)
        return replot(cfg.replot, cfg.out)
    if cfg.combine:
        return combine(cfg)
    PATIENCE.remaining = cfg.patience
    cfg.out.mkdir(parents=True, exist_ok=True)
    binary = build_ntpload(cfg.out)
    started = time.monotonic()
    notes: list[str] = []
    sweeps: list[Sweep] = []
    print(
        f"bench: {'quick' if cfg.quick else 'full'} run, {cfg.reps} rep(s), {cfg.duration:g} s "
        f"per step, generator {cfg.gen_threads} thread(s) x {cfg.gen_sockets} sockets, "
        f"{os.cpu_count()} cores shared by generator and server",
        flush=True,
    )
    with servers_running(cfg, notes) as (servers, chronyd):
        for n in notes:
            print(f"bench: {n}", flush=True)
        wait_quiet(cfg.quiet_wait)
        gen_check = generator_check(cfg, binary, chronyd)
        for rep in range(cfg.reps):
            # Interleave the servers and rotate their order, so slow drifts of the shared machine
            # fall on every server alike.
            order = servers[rep % len(servers) :] + servers[: rep % len(servers)]
            for srv in order:
                busy = wait_quiet(cfg.quiet_wait)
                if busy >= NOISE_CORES:
                    print(f"bench: the machine is busy ({busy:.2f} cores in use); going on")
                sweeps.append(sweep(cfg, binary, srv, rep))
    elapsed = time.monotonic() - started
    summary = summarize(cfg, servers, sweeps)
    text = report(cfg, summary, notes, gen_check)
    chart = cfg.out / "replies_vs_offered.png"
    title = chart_title(os.cpu_count(), cfg.reps, cfg.duration, cfg.late_ms, cfg.xdp)
    charted = write_chart(chart, servers, sweeps, title)
    results = {
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(cfg).items()},
        "machine": machine_info(),
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "elapsed_s": round(elapsed, 1),
        "notes": notes,
        "generator_check": gen_check,
        "summary": summary,
        "sweeps": [
            {
                "server": sw.server,
                "rep": sw.rep,
                "gen_bound": sw.gen_bound,
                "best": asdict(sw.best) if sw.best else None,
                "half": asdict(sw.half) if sw.half else None,
                "steps": [asdict(st) for st in sw.steps],
            }
            for sw in sweeps
        ],
    }
    (cfg.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print(
        f"\nbench: {elapsed:.0f} s; wrote {cfg.out / 'results.json'}"
        + (f" and {chart}" if charted else " (no chart: matplotlib missing)")
    )
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
