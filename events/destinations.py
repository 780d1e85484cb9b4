"""Where a job may fetch from: http(s) only, and never this cloud's own private network or metadata service,
unless the operator allows it. Intake checks literal addresses; the worker checks what a name resolves to,
right before the fetch."""

from __future__ import annotations

import ipaddress
import os
import socket
from collections.abc import Callable
from urllib.parse import urlsplit

ENV_ALLOWED_SCHEMES = "BUCKETRUN_ALLOW_URL_SCHEMES"  # operator opt-in, e.g. "file"
ENV_ALLOW_PRIVATE = "BUCKETRUN_ALLOW_PRIVATE_URLS"  # "1": loopback, private and link-local hosts may be fetched

Resolver = Callable[[str], list[str]]


def allowed_schemes() -> set[str]:
    extra = {s.strip().lower() for s in os.environ.get(ENV_ALLOWED_SCHEMES, "").split(",") if s.strip()}
    return {"http", "https"} | extra


def private_allowed() -> bool:
    return os.environ.get(ENV_ALLOW_PRIVATE, "").strip().lower() in ("1", "true", "yes")


def is_internal(address: str) -> bool:
    """Loopback, private, link-local (169.254.169.254 is the metadata service), multicast, reserved."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    return (ip.is_private or ip.is_loopback or ip.is_link_local or ip.is_multicast or ip.is_reserved
            or ip.is_unspecified)


def url_problem(url: str) -> str | None:
    """What intake can tell from the URL alone: its scheme, and a literal internal address."""
    try:
        parts = urlsplit(url)
        host = parts.hostname
    except ValueError:
        return "is not a valid URL"
    scheme = parts.scheme.lower()
    if scheme not in allowed_schemes():
        return (f"scheme {scheme or '(none)'!r} is not allowed; use http(s) "
                f"(an operator can allow more with {ENV_ALLOWED_SCHEMES})")[:200]
    if scheme in ("http", "https") and not host:
        return "has no host"
    if host and is_internal(host) and not private_allowed():
        return (f"points at a private, loopback or link-local address; an operator can allow that with "
                f"{ENV_ALLOW_PRIVATE}=1")
    return None


def system_resolver(host: str) -> list[str]:
    return sorted({info[4][0] for info in socket.getaddrinfo(host, None)})


def resolved_problem(url: str, resolve: Resolver = system_resolver) -> str | None:
    """The worker's check, just before fetching: every address the host resolves to must be public."""
    if private_allowed():
        return None
    host = urlsplit(url).hostname
    if not host or urlsplit(url).scheme.lower() not in ("http", "https"):
        return None
    try:
        addresses = resolve(host)
    except OSError:
        return None  # unresolvable: the fetch itself reports it (a download error, retried)
    internal = [a for a in addresses if is_internal(a)]
    if internal:
        return (f"host resolves to a private, loopback or link-local address ({internal[0]}); an operator can "
                f"allow that with {ENV_ALLOW_PRIVATE}=1")
    return None
