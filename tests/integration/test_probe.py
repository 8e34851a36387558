"""`pyresponder probe` against real servers: exit 0 synchronized, 1 unsynchronized, 2 no answer."""

from __future__ import annotations

import json
import subprocess
import sys
import time

from tests.integration.conftest import StartResponder
from tests.support.chronyd import Chronyd, free_udp_port
from tests.support.responder import ntp_request, query

KEYS = {"host", "port", "synchronized", "leap", "version", "mode", "stratum", "poll",
        "precision", "refid", "root_delay", "root_dispersion", "offset", "delay"}


def probe(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pyresponder", "probe", *args],
                          capture_output=True, text=True, timeout=30, check=False)


def test_synchronized_chronyd_and_pyresponder(chronyd: Chronyd,
                                              start_responder: StartResponder) -> None:
    direct = probe(f"127.0.0.1:{chronyd.port}", "--json")
    assert direct.returncode == 0, direct.stderr
    answer = json.loads(direct.stdout)
    assert set(answer) == KEYS
    assert answer["synchronized"] is True
    assert answer["stratum"] == 9
    assert abs(answer["offset"]) < 0.01
    port = free_udp_port()
    start_responder("--listen", f"127.0.0.1:{port}", "--backend", f"127.0.0.1:{chronyd.port}",
                    "--workers", "1").wait_answering(("127.0.0.1", port))
    text = probe(f"127.0.0.1:{port}")
    assert text.returncode == 0
    assert "synchronized stratum 9 leap 0" in text.stdout


def test_unsynchronized_answer_exits_1(start_responder: StartResponder) -> None:
    port = free_udp_port()
    start_responder("--listen", f"127.0.0.1:{port}", "--backend",
                    f"127.0.0.1:{free_udp_port()}", "--workers", "1", "--ready-timeout", "0.5")
    deadline = time.monotonic() + 10
    while query(("127.0.0.1", port), ntp_request(), timeout=0.2) is None:
        assert time.monotonic() < deadline
    result = probe(f"127.0.0.1:{port}", "--json")
    assert result.returncode == 1
    assert json.loads(result.stdout)["leap"] == 3


def test_no_answer_exits_2() -> None:
    result = probe(f"127.0.0.1:{free_udp_port()}", "--timeout", "0.5")
    assert result.returncode == 2
    assert "no answer" in result.stderr
