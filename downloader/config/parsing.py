"""Parsers of the setting values that other rooms act on: one place decides what a valid value
is, so `load()` refuses at start-up exactly what the Redis client and the outbound guard would
refuse later, and this room imports neither of them.
"""

from __future__ import annotations

import ipaddress
import urllib.parse
from typing import Union

from downloader.errors import ConfigurationError

DEFAULT_SENTINEL_PORT = 26379
IPNetwork = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]  # noqa: UP007 (a runtime alias)


def sentinel_addresses(text: str) -> tuple[tuple[str, int], ...]:
    """`"h1:26379, h2:26380,[::1]:26381"` -> ((host, port), ...); a bare host gets 26379."""
    if not text.strip():
        return ()
    return tuple(_parse_address(item.strip(), text) for item in text.split(","))


def _parse_address(item: str, whole: str) -> tuple[str, int]:
    def bad(why: str) -> ConfigurationError:
        return ConfigurationError(f"DOWNLOADER_REDIS_SENTINELS={whole!r}: {why} (expected host:port,...)")

    if not item:
        raise bad("empty entry")
    try:
        parsed = urllib.parse.urlsplit(f"//{item}")
        port = parsed.port
    except ValueError as exc:
        raise bad(f"invalid address {item!r}: {exc}") from None
    host = parsed.hostname or ""
    if not host or parsed.path or parsed.query or parsed.fragment or parsed.username:
        raise bad(f"invalid address {item!r}")
    if port == 0:
        raise bad(f"invalid port in {item!r}")
    return host, port or DEFAULT_SENTINEL_PORT


def cpus(text: str, setting: str) -> frozenset[int]:
    """`DOWNLOADER_WORKER_CPUS`, `DOWNLOADER_NOTIFIER_CPUS`: CPU numbers and ranges as taskset -c
    takes them (`0,2-3`); "" is none (the kernel chooses)."""
    found: set[int] = set()
    for item in filter(None, (part.strip() for part in text.split(","))):
        first, dash, last = item.partition("-")
        try:
            low, high = int(first), int(last if dash else first)
        except ValueError:
            raise ConfigurationError(
                f"invalid setting {setting}={text!r}: {item!r} is not a CPU number or range"
            ) from None
        if low < 0 or high < low:
            raise ConfigurationError(f"invalid setting {setting}={text!r}: bad range {item!r}")
        found.update(range(low, high + 1))
    return frozenset(found)


def networks(text: str) -> tuple[IPNetwork, ...]:
    """`DOWNLOADER_ALLOWED_NETWORKS`: comma-separated CIDRs (`10.0.0.0/8, fd00::/8`)."""
    parsed = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        try:
            parsed.append(ipaddress.ip_network(item))
        except ValueError as exc:
            raise ConfigurationError(f"invalid setting DOWNLOADER_ALLOWED_NETWORKS: {exc}") from exc
    return tuple(parsed)
