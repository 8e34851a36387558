"""The backend monitor: polls chronyd, keeps what it learned, and says what replies should say.

It owns the poller, the ``BackendView`` (latest reply, last synchronized reply) and the state the
workers serve; it publishes the view to the workers' shared memory (when given one) and logs every
change of state, holdover included. Time comes in as an argument (monotonic seconds). Any control
plane can drive it: select on ``fileno()``, call ``poll_if_due``, ``receive`` and ``update``, and
serve ``state.header``.
"""

from __future__ import annotations

import logging

from .backend import BackendPoller, PollError
from .endpoints import Endpoint
from .shared import SharedState
from .syncstate import NO_BACKEND, BackendSample, BackendView, ServerState, SyncPolicy, evaluate
from .syncstate import remember as remember_sample

log = logging.getLogger(__name__)


class BackendMonitor:
    def __init__(self, endpoint: Endpoint, policy: SyncPolicy, shared: SharedState | None,
                 poll_interval: float, now: float) -> None:
        self.endpoint = endpoint
        self.policy = policy
        self.shared = shared
        self.poll_interval = poll_interval
        self.poller = BackendPoller(endpoint)
        self.view = NO_BACKEND
        self.state: ServerState | None = None
        self.next_poll = now
        self._last_error: str | None = None

    def fileno(self) -> int:
        return self.poller.fileno()

    def poll_if_due(self, now: float) -> None:
        if now < self.next_poll:
            return
        if self.poller.awaiting_reply:
            self._failed(f"no reply from backend {self.endpoint} in time")
        error = self.poller.send_request()
        if error is not None:
            self._failed(error.message)
        self.next_poll = max(self.next_poll + self.poll_interval, now)

    def receive(self) -> None:
        """Read the backend's replies (call when its socket is readable)."""
        result = self.poller.receive()
        if isinstance(result, PollError):
            self._failed(result.message)
        elif result is not None:
            self.remember(result)

    def remember(self, sample: BackendSample) -> None:
        self.view = remember_sample(self.view, sample, self.policy)
        if self.shared is not None:
            self.shared.record_poll(ok=True)
            self.shared.publish(self.view)
        if self._last_error is not None:
            log.info("backend %s answers again", self.endpoint)
            self._last_error = None

    def _failed(self, message: str) -> None:
        if self.shared is not None:
            self.shared.record_poll(ok=False)
        if message != self._last_error:
            log.warning("%s", message)
            self._last_error = message

    def update(self, now: float) -> bool:
        """Re-evaluate the served state at ``now``; True when it changed in a way worth telling."""
        state = evaluate(self.view, now, self.policy)
        previous, self.state = self.state, state
        if previous is not None and (
            previous.synchronized, previous.stratum, previous.leap, previous.holdover
        ) == (state.synchronized, state.stratum, state.leap, state.holdover):
            return False
        _log_change(previous, state, self.view, self.endpoint, self.policy)
        return True

    def close(self) -> None:
        self.poller.close()


def _log_change(previous: ServerState | None, state: ServerState, view: BackendView,
                endpoint: Endpoint, policy: SyncPolicy) -> None:
    if state.holdover and not (previous and previous.holdover):
        log.warning("holdover started: %s; serving the last synchronized state for at most "
                    "%g s after it", state.reason, policy.holdover)
        return
    if previous is not None and previous.holdover and not state.holdover:
        log.warning("holdover ended: %s", "backend synchronized again" if state.synchronized
                    else state.reason)
    if previous is None and not state.synchronized:
        log.info("waiting for backend %s: %s", endpoint, state.reason)
    elif state.synchronized:
        offset = view.latest.offset if view.latest else 0.0
        log.info("synchronized: %s, local clock offset %+.6f s", state.reason, offset)
    else:
        log.warning("unsynchronized: %s; replies say LI=3 stratum 0", state.reason)
