from __future__ import annotations

import socket

import pytest

from pyresponder.endpoints import Endpoint, parse_endpoint


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0.0.0.0:123", Endpoint("0.0.0.0", 123)),
        ("127.0.0.1", Endpoint("127.0.0.1", 9)),
        ("[::]:123", Endpoint("::", 123)),
        ("[::1]", Endpoint("::1", 9)),
        ("[2001:db8::0001]:5", Endpoint("2001:db8::1", 5)),
        ("localhost:11123", Endpoint("localhost", 11123)),
    ],
)
def test_parse(text: str, expected: Endpoint) -> None:
    assert parse_endpoint(text, 9) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty"),
        ("::1", "brackets"),
        ("[::1", "missing"),
        ("1.2.3.4:99999", "port"),
        ("1.2.3.4:x", "port"),
        (":123", "missing address"),
        ("[::1]x", "expected"),
    ],
)
def test_parse_errors_name_the_problem(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_endpoint(text, 123)


def test_listen_addresses_must_be_ip_literals() -> None:
    with pytest.raises(ValueError, match="not an IP address"):
        parse_endpoint("example.org:123", 123, require_ip=True)


def test_family_and_text() -> None:
    assert parse_endpoint("[::]:123", 1).family == socket.AF_INET6
    assert str(parse_endpoint("[::]:123", 1)) == "[::]:123"
    assert str(parse_endpoint("10.0.0.1:5", 1)) == "10.0.0.1:5"
