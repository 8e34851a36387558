"""Parsing of ``ADDR:PORT`` arguments: ``0.0.0.0:123``, ``[::]:123``, ``[::1]``, ``host:11123``."""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Endpoint:
    host: str
    port: int

    @property
    def family(self) -> socket.AddressFamily:
        return socket.AF_INET6 if ":" in self.host else socket.AF_INET

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_endpoint(text: str, default_port: int, *, require_ip: bool = False) -> Endpoint:
    """Split ``text`` into host and port; raises ValueError with a message naming the problem."""
    text = text.strip()
    if not text:
        raise ValueError("empty address")
    host, port_text = text, ""
    if text.startswith("["):
        close = text.find("]")
        if close < 0:
            raise ValueError(f"{text!r}: missing ']' after an IPv6 address")
        host, rest = text[1:close], text[close + 1 :]
        if rest and not rest.startswith(":"):
            raise ValueError(f"{text!r}: expected ':PORT' after ']'")
        port_text = rest[1:]
    elif text.count(":") == 1:
        host, port_text = text.split(":")
    elif text.count(":") > 1:
        raise ValueError(f"{text!r}: write IPv6 addresses in brackets, as [ADDR]:PORT")
    port = default_port
    if port_text:
        if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
            raise ValueError(f"{text!r}: port must be a number from 0 to 65535")
        port = int(port_text)
    if not host:
        raise ValueError(f"{text!r}: missing address")
    try:
        host = str(ipaddress.ip_address(host))
    except ValueError:
        if require_ip:
            raise ValueError(f"{text!r}: {host!r} is not an IP address") from None
    return Endpoint(host, port)


def resolve(endpoint: Endpoint) -> tuple[socket.AddressFamily, tuple[str, int]]:
    """The family and socket address of ``endpoint`` (resolving a host name once)."""
    try:
        infos = socket.getaddrinfo(endpoint.host, endpoint.port, type=socket.SOCK_DGRAM)
    except socket.gaierror as error:
        raise ValueError(f"cannot resolve {endpoint.host!r}: {error.strerror}") from None
    family, _, _, _, sockaddr = infos[0]
    return family, (str(sockaddr[0]), int(sockaddr[1]))
