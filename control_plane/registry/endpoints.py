"""Where an external pool's backends may live: the admin's allow-list patterns and the URL check.

A version's backends receive live user traffic, so a publisher may register
only URLs whose host (and port) an admin listed on the pool. Patterns:

    triton.internal          that host, any port
    triton.internal:8000     that host and port
    *.triton.internal        any name under that domain (not the domain itself)
    10.0.0.7  10.0.0.0/8     an address, or a network (CIDR)
    [fd00::1]:8000  [fd00::/8]  IPv6, bracketed when a port follows or for clarity

A name pattern never matches an address and the reverse, so ``*.internal``
does not admit ``http://127.0.0.1``. An empty list admits nothing.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from urllib.parse import urlsplit

_LABEL = r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?"
_NAME = re.compile(rf"^(\*\.)?{_LABEL}(\.{_LABEL})*$")
IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
_EXPECTED = "expected host, host:port, *.domain, an IP address or a CIDR network"


@dataclass(frozen=True, slots=True)
class EndpointPattern:
    name: str | None  # a DNS name, "*." for a wildcard
    network: IpNetwork | None
    port: int | None  # None: any port

    def admits(self, host: str, port: int) -> bool:
        if self.port is not None and port != self.port:
            return False
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            address = None
        if address is not None:
            return self.network is not None and address in self.network
        if self.name is None:
            return False
        if self.name.startswith("*."):
            return host.endswith(self.name[1:])
        return host == self.name


def parse_pattern(text: str) -> EndpointPattern:
    """One allow-list entry; ValueError says what is wrong with it."""
    text = text.strip().lower()
    if "://" in text or "@" in text:
        raise ValueError(f"{_EXPECTED}, not a URL")
    host, port = text, None
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        if rest:
            if not rest.startswith(":"):
                raise ValueError("expected [address]:port")
            port = _port(rest[1:])
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
        port = _port(port_text)
    try:
        network = ipaddress.ip_network(host, strict=False)
    except ValueError:
        network = None
    if network is not None:
        return EndpointPattern(None, network, port)
    if not _NAME.match(host) or len(host) > 253:
        raise ValueError(_EXPECTED)
    return EndpointPattern(host, None, port)


def _port(text: str) -> int:
    if not text.isascii() or not text.isdigit() or not 0 < int(text) < 65536:
        raise ValueError(f"port {text!r} is not between 1 and 65535")
    return int(text)


def url_problem(url: str, allowed: list[str]) -> str | None:
    """Why ``url`` may not be registered on a pool with this allow-list, or None when it may."""
    parts = urlsplit(url)
    if parts.username is not None or parts.password is not None or "@" in parts.netloc:
        return "must not carry user:password (credentials would reach every reader of the registry)"
    try:
        host, port = parts.hostname, parts.port
    except ValueError as exc:
        return f"invalid host or port: {exc}"
    if not host:
        return "has no host"
    port = port or (443 if parts.scheme == "https" else 80)
    if not any(parse_pattern(p).admits(host, port) for p in allowed):
        shown = f"[{host}]" if ":" in host else host
        return (f"{shown}:{port} is not in the pool's allowed_endpoints {allowed} "
                "(an admin sets them with PUT /api/v1/pools/{pool})")
    return None
