"""sd_notify messages from ServiceControl on a real AF_UNIX socket; the watchdog gate."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from pyresponder.control import ServiceControl
from pyresponder.notify import Notifier


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    path = str(tmp_path / "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(path)
        sock.settimeout(0.2)
        yield sock, path


def received(sock: socket.socket) -> list[bytes]:
    messages = []
    while True:
        try:
            messages.append(sock.recv(4096))
        except TimeoutError:
            return messages


def test_watchdog_pings_only_while_working_and_at_its_interval(
    listener: tuple[socket.socket, str],
) -> None:
    sock, path = listener
    control = ServiceControl(Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "2000000"}))
    assert control.interval == 1.0
    assert control.watchdog(0.0, working=True)
    assert not control.watchdog(0.5, working=True)  # not due yet
    assert control.next_ping() == 1.0
    assert not control.watchdog(1.0, working=False)  # due, but no worker serves
    assert not control.watchdog(5.0, working=False)
    assert control.watchdog(5.1, working=True)
    assert received(sock) == [b"WATCHDOG=1", b"WATCHDOG=1"]
    control.close()


def test_status_is_sent_only_when_it_changes(listener: tuple[socket.socket, str]) -> None:
    sock, path = listener
    control = ServiceControl(Notifier({"NOTIFY_SOCKET": path}))
    control.ready("synchronized; 1/1 workers", 42)
    control.status("synchronized; 1/1 workers")
    control.status("unsynchronized (x); 1/1 workers")
    control.stopping()
    assert received(sock) == [
        b"READY=1\nSTATUS=synchronized; 1/1 workers\nMAINPID=42",
        b"STATUS=unsynchronized (x); 1/1 workers",
        b"STOPPING=1\nSTATUS=stopping",
    ]
    control.close()


def test_without_watchdog_nothing_is_due() -> None:
    control = ServiceControl(Notifier({}))
    assert control.next_ping() is None
    assert not control.watchdog(100.0, working=True)
