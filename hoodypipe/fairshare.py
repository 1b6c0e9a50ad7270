"""Fair shares of the daemon-wide caps: a few heavy clients never starve a new one.

Every cap that one client could fill for everybody (pipes waiting for their
parties, transfers streaming, names watched, spectators of one name) is a
``Shares``: slots counted by *client*, where a client is an IPv4 address or
an IPv6 prefix (a /64 by default: one subscriber's network, which a single
attacker can fill with addresses at will).

The policy, for a cap of C slots with R of them reserved:

- while fewer than C - R slots are taken, anyone may take one (up to the
  per-client limit, if the cap has one);
- the last R slots go only to light clients: those holding fewer than
  L = R / 10 slots (at least 1), so a client that holds none always may.

So heavy clients can fill at most C - R slots between them, however many of
them come and in whatever order, and a newcomer, which holds nothing, finds
one of the R reserved slots unless R light clients took them (each with a
handful of slots). ``reserve_for`` gives R: a tenth of the cap, at least one.
With the defaults (1,000 pending pipes): 100 reserved slots, up to 9 each.
"""

from __future__ import annotations

import ipaddress
from collections import Counter

DEFAULT_IPV6_PREFIX = 64


def client_key(address: str | None, ipv6_prefix: int = DEFAULT_IPV6_PREFIX) -> str | None:
    """The unit that caps count: an IPv4 address, or an IPv6 network of ``ipv6_prefix`` bits."""
    if address is None:
        return None
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, ipv6_prefix), strict=False))
    return str(ip)


def reserve_for(cap: int) -> int:
    """The slots of a cap kept for clients below their fair share."""
    return max(1, cap // 10)


class Shares:
    """The slots of one cap, by client."""

    def __init__(self, cap: int, per_client: int | None = None, reserve: int | None = None) -> None:
        self.cap = cap
        self.per_client = per_client
        self.reserve = reserve_for(cap) if reserve is None else reserve
        self.held: Counter[str] = Counter()
        self.taken = 0

    @property
    def light(self) -> int:
        """Fewer slots than this, and a client may use the reserve."""
        return max(1, self.reserve // 10)

    def refusal(self, key: str | None) -> str | None:
        """Why ``key`` may not take a slot now ("full", "share" or "client"), or None."""
        if self.taken >= self.cap:
            return "full"
        if key is None:
            return None  # in memory, or a trusted front end that named nobody
        holding = self.held[key]
        if self.per_client is not None and holding >= self.per_client:
            return "client"
        if self.taken >= self.cap - self.reserve and holding >= self.light:
            return "share"
        return None

    def take(self, key: str | None) -> None:
        self.taken += 1
        if key is not None:
            self.held[key] += 1

    def give(self, key: str | None) -> None:
        self.taken -= 1
        if key is not None:
            self.held[key] -= 1
            if self.held[key] <= 0:
                del self.held[key]
