"""Addresses and networks: who is at the other end of a connection, and where the registry is.

The client's address decides network rules and throttling, and the `X-Forwarded-For` the proxy
sends tells the registry the same story: both come from one reading (`origin`), so they can
never disagree. Pure: no I/O.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from functools import lru_cache
from urllib.parse import urlsplit

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def parse_upstream(value: object) -> str:
    """A registry base URL: scheme://host[:port] and nothing else."""
    text = str(value).rstrip("/")
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"expected http:// or https:// URL, got {text!r}")
    if parts.path or parts.query or parts.fragment or "@" in parts.netloc:
        raise ValueError(f"upstream must be scheme://host[:port] only, got {text!r}")
    if parts.port == 0:  # .port raises ValueError itself for other bad ports
        raise ValueError(f"upstream port 0 is not a port, got {text!r}")
    return text


def parse_networks(value: object) -> tuple[IPNetwork, ...]:
    """CIDR networks from one string or a list; host bits set is an error (a likely typo)."""
    items = value if isinstance(value, list) else [value]
    if not items or not all(isinstance(v, str) for v in items):
        raise ValueError(f"expected a CIDR network or a list of them, got {value!r}")
    return tuple(ipaddress.ip_network(str(v)) for v in items)


def ip_address(text: str) -> IPAddress:
    """An address as rules read it: an IPv4-mapped IPv6 address (`::ffff:10.0.0.5`, how a
    socket listening on `[::]` sees an IPv4 client) is the IPv4 address it carries, so that
    IPv4 networks in rules, `trusted_proxies` and throttle counts hold on such a listener.
    ValueError if it is not an address."""
    address = ipaddress.ip_address(text)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


@lru_cache(maxsize=4096)
def peer_address(text: str | None) -> tuple[IPAddress | None, str]:
    """The connected peer and its normalised text, worked out once per distinct peer
    (ipaddress costs more than the rest of an anonymous request)."""
    try:
        peer = ip_address(text or "")
    except ValueError:
        return None, "unknown"
    return peer, str(peer)


@lru_cache(maxsize=4096)
def address_text(address: IPAddress) -> str:
    """An address as text, worked out once per distinct address (the access log writes it for
    every request, and ipaddress's str() costs more than the rest of a refusal's line)."""
    return str(address)


@dataclass(frozen=True)
class Origin:
    """Where a request comes from: the client's address (None if unknown), the
    `X-Forwarded-For` to send upstream, and what the client is counted under (`throttle_key`:
    the address, or its IPv6 /64)."""

    address: IPAddress | None
    forwarded_for: str
    client: str


def origin(remote: str | None, forwarded_for: list[str], trusted: tuple[IPNetwork, ...]) -> Origin:
    """The peer (`remote`, as the socket gives it), unless it is a trusted proxy: then
    X-Forwarded-For is walked from the right past trusted hops, and a malformed entry stops the
    walk at the last address known for sure. The chain is passed on only when the peer is
    trusted, always ending with the peer."""
    peer, own = peer_address(remote)
    if peer is None or not forwarded_for or not _trusted(peer, trusted):
        return Origin(peer, own, throttle_key(peer))
    current = peer
    hops = [h.strip(" \t") for value in forwarded_for for h in value.split(",")]
    while hops and _trusted(current, trusted):
        try:
            current = ip_address(hops.pop())
        except ValueError:
            break
    return Origin(current, f"{', '.join(forwarded_for)}, {own}", throttle_key(current))


def _trusted(address: IPAddress, trusted: tuple[IPNetwork, ...]) -> bool:
    return any(address in network for network in trusted)


@lru_cache(maxsize=4096)
def throttle_key(address: IPAddress | None) -> str:
    """What the throttle and the per-address cap count a client under: its IPv4 address, or
    its IPv6 /64 (a client usually holds a whole /64, and could otherwise try from each of its
    addresses in turn)."""
    if address is None:
        return "unknown"
    if address.version == 6:
        return str(ipaddress.ip_network(f"{address}/64", strict=False))
    return str(address)
