"""What the service manager hears from us: READY, STATUS, STOPPING and the watchdog ping.

WATCHDOG=1 means "this service works". Before READY the supervisor is waiting for the backend on
purpose, so it pings; once serving, it pings only while some worker has stayed up for a while.
A crash loop therefore stops the pings and systemd's WatchdogSec= acts on it (restart, or fail),
instead of being told all is well by a supervisor that merely loops.
"""

from __future__ import annotations

from .notify import Notifier


class ServiceControl:
    def __init__(self, notifier: Notifier | None = None) -> None:
        self.notifier = notifier if notifier is not None else Notifier()
        self.interval = self.notifier.watchdog_interval
        self._next_ping = 0.0
        self._last_status = ""

    def ready(self, status: str, pid: int) -> None:
        self._last_status = status
        self.notifier.send(READY=1, STATUS=status, MAINPID=pid)

    def status(self, status: str) -> None:
        if status != self._last_status:
            self._last_status = status
            self.notifier.send(STATUS=status)

    def stopping(self) -> None:
        self.notifier.send(STOPPING=1, STATUS="stopping")

    def watchdog(self, now: float, working: bool) -> bool:
        """Ping if one is due and ``working``; True when a ping was sent."""
        if self.interval is None or now < self._next_ping or not working:
            return False
        self.notifier.send(WATCHDOG=1)
        self._next_ping = now + self.interval
        return True

    def next_ping(self) -> float | None:
        """When the next ping is due (None without a watchdog)."""
        return None if self.interval is None else self._next_ping

    def close(self) -> None:
        self.notifier.close()
