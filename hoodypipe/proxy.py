"""Who the client is: the peer, or what a reverse proxy we trust says it is.

``--trusted-proxy`` names the proxies whose ``X-Forwarded-For`` and
``X-Forwarded-Proto`` we believe. Everything else a client sends about
itself is ignored, and every forwarded value must be an address.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Sequence

# werkzeug (inside Klein) answers 500 to a Host that is no hostname.
_HOSTNAME = re.compile(
    rb"(?=.{1,253}$)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?"
    rb"|\[[0-9A-Fa-f:.]+\]"
)


def normal_address(text: str) -> str | None:
    """An IP address in one spelling (IPv4-mapped IPv6 as IPv4), else None."""
    try:
        address = ipaddress.ip_address(text.strip())
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return str(address)


def trusted(peer: str | None, proxies: frozenset[str]) -> bool:
    """Whether the peer is one of our proxies (``proxies`` in ``normal_address`` form)."""
    return peer is not None and normal_address(peer) in proxies


def client_host(peer: str | None, forwarded_for: Iterable[bytes], proxies: frozenset[str]) -> str | None:
    """The client's address: the nearest hop left of our proxies.

    Hops further left are whatever the client chose to send; a hop that is
    no address ends the walk, and the last proxy we trust is the client.
    """
    if not trusted(peer, proxies):
        return peer
    hops = [hop.strip() for value in forwarded_for for hop in value.split(b",") if hop.strip()]
    client = peer
    for hop in reversed(hops):
        address = normal_address(hop.decode("latin-1"))
        if address is None:
            break
        client = address
        if address not in proxies:
            break
    return client


def forwarded_secure(peer: str | None, forwarded_proto: Sequence[bytes] | None, proxies: frozenset[str]) -> bool | None:
    """``X-Forwarded-Proto`` from a trusted proxy: True for https, None if not said."""
    if not forwarded_proto or not trusted(peer, proxies):
        return None
    return forwarded_proto[-1].strip().lower() == b"https"


def clean_hostname(host: bytes) -> bytes:
    """The Host's hostname if it is one, else ``localhost``."""
    return host if _HOSTNAME.fullmatch(host) else b"localhost"
