"""Addresses and networks: who is at the other end of a connection, and where the registry is.
Pure."""

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
    """An address as rules read it (an IPv4-mapped IPv6 address as its IPv4 address);
    ValueError if it is not one."""
    address = ipaddress.ip_address(text)
    # A socket listening on [::] sees an IPv4 client as ::ffff:10.0.0.5: IPv4 networks in
    # rules, trusted_proxies and throttle counts must still hold for it.
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


@lru_cache(maxsize=4096)  # ipaddress costs more than the rest of an anonymous request
def peer_address(text: str | None) -> tuple[IPAddress | None, str]:
    """The connected peer and its normalised text."""
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
    """Where a request comes from."""

    address: IPAddress | None  # None if unknown
    forwarded_for: str  # the X-Forwarded-For to send upstream
    client: str  # what the client is counted under (`throttle_key`)


def origin(remote: str | None, forwarded_for: list[str], trusted: tuple[IPNetwork, ...]) -> Origin:
    """The peer (`remote`), or, when it is a trusted proxy, the first untrusted hop of its
    X-Forwarded-For read from the right."""
    peer, own = peer_address(remote)
    if peer is None or not forwarded_for or not _trusted(peer, trusted):
        # The chain is passed on only when the peer is trusted.
        return Origin(peer, own, throttle_key(peer))
    current = peer
    hops = [h.strip(" \t") for value in forwarded_for for h in value.split(",")]
    while hops and _trusted(current, trusted):
        try:
            current = ip_address(hops.pop())
        except ValueError:
            break  # a malformed entry: the last address known for sure stands
    return Origin(current, f"{', '.join(forwarded_for)}, {own}", throttle_key(current))


def _trusted(address: IPAddress, trusted: tuple[IPNetwork, ...]) -> bool:
    return any(address in network for network in trusted)


@lru_cache(maxsize=4096)
def throttle_key(address: IPAddress | None) -> str:
    """What the throttle and the per-address cap count a client under: its IPv4 address, or
    its IPv6 /64."""
    if address is None:
        return "unknown"
    if address.version == 6:  # a client usually holds a whole /64 and could try from each
        return str(ipaddress.ip_network(f"{address}/64", strict=False))
    return str(address)
