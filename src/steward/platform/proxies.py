"""The client's address: the socket peer, or X-Forwarded-For when the peer is a trusted proxy."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence

from starlette.types import Scope

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(values: Iterable[str]) -> tuple[Network, ...]:
    return tuple(ipaddress.ip_network(value.strip(), strict=False) for value in values)


def _trusted(address: str, networks: Sequence[Network]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in network for network in networks)


def client_ip(scope: Scope, trusted: Sequence[Network]) -> str | None:
    """The socket peer, unless it is a trusted proxy: then the right-most address in
    X-Forwarded-For that is not itself trusted (left-most entries are client-controlled)."""
    client = scope.get("client")
    peer: str | None = client[0] if client else None
    if peer is None or not trusted or not _trusted(peer, trusted):
        return peer
    forwarded: list[str] = []
    for name, value in scope["headers"]:
        if name == b"x-forwarded-for":
            forwarded.extend(part.strip() for part in value.decode("latin-1").split(","))
    for address in reversed(forwarded):
        if not address:
            continue
        if not _trusted(address, trusted):
            try:
                return str(ipaddress.ip_address(address))
            except ValueError:
                return peer
    return peer
