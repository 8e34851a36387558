from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from tests.support.chronyd import Chronyd, find_chronyd, free_udp_port
from tests.support.responder import Responder

pytestmark = pytest.mark.integration


@pytest.fixture(scope="session", autouse=True)
def _require_chronyd() -> None:
    if find_chronyd() is None:
        pytest.fail("chronyd is needed for the integration tests: run scripts/install-chrony")


@pytest.fixture(scope="module")
def chronyd() -> Iterator[Chronyd]:
    with Chronyd(stratum=9) as server:
        yield server


StartResponder = Callable[..., Responder]


@pytest.fixture
def start_responder() -> Iterator[StartResponder]:
    """Start pyresponder processes; every one is stopped when the test ends."""
    started: list[Responder] = []

    def start(
        *args: str, pass_fd: int | None = None, env: dict[str, str] | None = None
    ) -> Responder:
        responder = Responder(args, env=env, pass_fd=pass_fd).start()
        started.append(responder)
        return responder

    yield start
    for responder in started:
        responder.cleanup()


@pytest.fixture
def port() -> int:
    return free_udp_port()
