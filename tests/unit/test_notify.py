"""sd_notify against a real AF_UNIX datagram socket, as systemd listens on one."""

from __future__ import annotations

import os
import socket
from pathlib import Path

from pyresponder.notify import Notifier


def test_sends_fields_as_one_datagram(tmp_path: Path) -> None:
    path = str(tmp_path / "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener:
        listener.bind(path)
        notifier = Notifier({"NOTIFY_SOCKET": path})
        assert notifier.enabled
        assert notifier.send(READY=1, STATUS="synchronized")
        assert listener.recv(4096) == b"READY=1\nSTATUS=synchronized"
        notifier.close()


def test_abstract_namespace_socket() -> None:
    name = f"pyresponder-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener:
        listener.bind("\0" + name)
        notifier = Notifier({"NOTIFY_SOCKET": "@" + name})
        assert notifier.send(STOPPING=1)
        assert listener.recv(4096) == b"STOPPING=1"
        notifier.close()


def test_disabled_without_notify_socket() -> None:
    notifier = Notifier({})
    assert not notifier.enabled
    assert not notifier.send(READY=1)
    assert notifier.watchdog_interval is None


def test_watchdog_interval_is_half_the_deadline() -> None:
    notifier = Notifier({"WATCHDOG_USEC": "4000000", "WATCHDOG_PID": str(os.getpid())})
    assert notifier.watchdog_interval == 2.0
    assert Notifier({"WATCHDOG_USEC": "4000000", "WATCHDOG_PID": "1"}).watchdog_interval is None


def test_successor_survives_a_predecessor_that_cannot_be_told(tmp_path: Path) -> None:
    """handoff.replace_predecessor logs instead of raising, and takes the control path."""
    from pyresponder import handoff  # noqa: PLC0415

    path = str(tmp_path / "control")
    Path(path).touch()  # a stale file where the predecessor's socket was: nobody listens
    server = handoff.ControlServer(path, lambda: ([], []), dict, lambda: None)
    try:
        assert handoff.replace_predecessor(path, server) is False
        assert Path(path).is_socket()
    finally:
        server.close()
