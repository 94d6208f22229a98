"""The client's IP address, as far as it can be trusted.

Without a proxy in front (``trusted_hops = 0``) the TCP peer is the client. Behind the Heroku router
(``trusted_hops = 1``) the peer is the router and the client is the right-most ``X-Forwarded-For`` entry:
the router *appends* the address that connected to it, while everything to the left of that entry was
sent by the client and can be anything (spoofing it is the classic way to burn a free quota). With a CDN
in front of the router, ``trusted_hops = 2`` takes the second entry from the right, and so on.

Several ``X-Forwarded-For`` headers are joined in order before counting, which is what RFC 7230 says
they mean (and the legacy Heroku router appended to the *first* of several headers, so joining is the
only reading that is right under both routers).
"""

from __future__ import annotations

import functools
import ipaddress


def client_ip(peer: str | None, forwarded_for: list[str], trusted_hops: int) -> str | None:
    """The client address in canonical form, or None when it cannot be determined.

    None means the caller answers 400 ``missing_client_ip``: no peer, fewer forwarding entries than
    trusted hops (a request that bypassed the proxy), or an entry that is not an IP address.
    """
    if trusted_hops <= 0:
        return normalize_ip(peer) if peer else None
    entries = [item.strip() for header in forwarded_for for item in header.split(",")]
    if len(entries) < trusted_hops:
        return None
    return normalize_ip(entries[-trusted_hops])


def normalize_ip(raw: str) -> str | None:
    """``1.2.3.4``, ``1.2.3.4:5678``, ``[2001:db8::1]:443``, ``2001:DB8::1`` → canonical text, else None.

    IPv4-mapped IPv6 (``::ffff:1.2.3.4``, what dual-stack sockets report) becomes the IPv4 address so one
    client has one identity.
    """
    text = raw.strip().strip('"')
    if not text:
        return None
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            return None
        text = text[1:end]
    elif text.count(":") == 1:
        text = text.split(":", 1)[0]  # IPv4 with a port
    text = text.split("%", 1)[0]  # an IPv6 zone id says nothing about the client
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return str(address)


@functools.lru_cache(maxsize=4096)
def rate_limit_subject(ip: str) -> str:
    """What per-IP limits count against: the address for IPv4, the /64 network for IPv6.

    An IPv6 end user is normally handed a whole /64 and can rotate through it at will, so counting single
    IPv6 addresses would let anyone dodge the per-IP limits. Cached: the same clients come back, and parsing
    an address was ~1 % of the web tier's CPU.
    """
    address = ipaddress.ip_address(ip)
    if isinstance(address, ipaddress.IPv6Address):
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)
