"""Politeness per origin host: which limit and request rate apply to a job's host.

The fleet enforces them in Redis (CLAIM_DOWNLOADS reads the host from the job's URL and this
policy, encoded by `HostPolicy.encode`, and resolves it the same way); `resolve` is the same
rule in Python, for the dashboard and the tests. Precedence: an exact `host:port`, then the
host name, then the longest matching `*.suffix`, then the global default.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from collections.abc import Mapping

from downloader.config.settings import FetchSettings

#: Ports a URL's host key leaves out: `http://h:80/` and `http://h/` are one host.
DEFAULT_PORTS = {"http": 80, "https": 443}


def host_of(url: str) -> str:
    """The host key of a URL, as the claim script computes it: the lower-cased authority
    without user info, its port kept unless it is the scheme's default; "" when unparsable."""
    scheme, _, rest = url.partition("://")
    if not rest or not (scheme[:1].isascii() and scheme[:1].isalpha()) or any(c in scheme for c in ":/?#"):
        return ""
    authority = rest.split("/", 1)[0].split("?", 1)[0].split("#", 1)[0]
    authority = authority.rpartition("@")[2].lower()
    name, sep, port = authority.rpartition(":")
    if sep and port.isdigit() and "]" not in port and DEFAULT_PORTS.get(scheme.lower()) == int(port):
        return name
    return authority


def host_name(host: str) -> str:
    """A host key without its port (`[::1]:8080` -> `[::1]`)."""
    name, sep, port = host.rpartition(":")
    return name if sep and port.isdigit() and not name.endswith(":") else host


@dataclasses.dataclass(frozen=True)
class HostRule:
    """What applies to one host: downloads at once (0 = unlimited) and requests per second
    (0 = no rate limit)."""

    limit: int = 0
    rate: float = 0.0


@dataclasses.dataclass(frozen=True)
class HostPolicy:
    default: HostRule = HostRule()
    limits: Mapping[str, int] = dataclasses.field(default_factory=dict)
    rates: Mapping[str, float] = dataclasses.field(default_factory=dict)

    @classmethod
    def from_settings(cls, settings: FetchSettings) -> HostPolicy:
        return cls(
            HostRule(settings.host_limit, settings.host_requests_per_second),
            dict(settings.host_limits),
            dict(settings.host_rates),
        )

    def resolve(self, host: str, job_limit: int = 0) -> HostRule:
        """The rule of `host`; a job's own `aggr_host_limit` (0 = none) can only lower it."""
        limit = int(_lookup(self.limits, host, self.default.limit))
        if job_limit > 0:
            limit = min(limit, job_limit) if limit > 0 else job_limit
        return HostRule(limit, _lookup(self.rates, host, self.default.rate))

    @functools.cached_property
    def encoded(self) -> str:
        """The policy as CLAIM_DOWNLOADS reads it: exact entries by key, suffixes longest first."""

        def table(values: Mapping[str, float]) -> dict[str, object]:
            exact = {k: v for k, v in values.items() if not k.startswith("*.")}
            suffixes = sorted(((k[1:], v) for k, v in values.items() if k.startswith("*.")), key=_longest)
            return {"exact": exact, "suffixes": [list(s) for s in suffixes]}

        return json.dumps(
            {
                "limit": self.default.limit,
                "rate": self.default.rate,
                "limits": table(self.limits),
                "rates": table(self.rates),
            },
            separators=(",", ":"),
        )


#: No limit, no rate: what a store without settings claims with.
UNLIMITED = HostPolicy()


def _longest(item: tuple[str, float]) -> int:
    return -len(item[0])


def _lookup(values: Mapping[str, float], host: str, default: float) -> float:
    if host in values:
        return values[host]
    name = host_name(host)
    if name in values:
        return values[name]
    for pattern in sorted((k for k in values if k.startswith("*.")), key=len, reverse=True):
        suffix = pattern[1:]
        if name.endswith(suffix) and len(name) > len(suffix):
            return values[pattern]
    return default
