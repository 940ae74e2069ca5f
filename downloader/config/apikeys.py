"""API keys: `DOWNLOADER_API_KEYS` parsed into bearer tokens and what each may reach.

An entry is `token` (every aggregation) or `token=prefix1|prefix2` (aggregation ids starting
with one of the prefixes). Pure and framework-free: the API's dependency looks a presented
token up with `KeyRing.find` and checks the returned `Grant` against aggregation ids.
"""

from __future__ import annotations

import dataclasses
import hmac

from downloader.errors import InvalidApiKeys as InvalidApiKeys


@dataclasses.dataclass(frozen=True)
class Grant:
    """The aggregations a caller may use: ids starting with one of `prefixes`, all when empty."""

    prefixes: tuple[str, ...] = ()

    def covers(self, aggr_id: str) -> bool:
        return not self.prefixes or aggr_id.startswith(self.prefixes)


#: What every caller has while the API is open (no keys configured).
ALL = Grant()


@dataclasses.dataclass(frozen=True)
class ApiKey:
    token: str = dataclasses.field(repr=False)  # kept out of reprs, so out of logs and tracebacks
    grant: Grant = ALL


@dataclasses.dataclass(frozen=True)
class KeyRing:
    keys: tuple[ApiKey, ...] = ()

    @property
    def enabled(self) -> bool:
        return bool(self.keys)

    def find(self, presented: str) -> Grant | None:
        """The grant of the key whose token is `presented`, None when there is none.

        Every key is compared, in constant time each: the answer's timing tells neither how
        much of a token was right nor which key matched.
        """
        found: Grant | None = None
        candidate = presented.encode()
        for key in self.keys:
            if hmac.compare_digest(key.token.encode(), candidate) and found is None:
                found = key.grant
        return found


def parse_api_keys(raw: str) -> KeyRing:
    """Comma-separated entries; blank entries are skipped, an empty setting leaves the API open."""
    entries = [_entry(text.strip(), number) for number, text in enumerate(raw.split(","), start=1)]
    return KeyRing(tuple(key for key in entries if key is not None))


def _entry(text: str, number: int) -> ApiKey | None:
    if not text:
        return None
    token, has_prefixes, rest = (part.strip() for part in text.partition("="))
    if not token or any(char.isspace() for char in token):
        raise InvalidApiKeys(f"API key entry {number}: the token is empty or contains white space")
    if not has_prefixes:
        return ApiKey(token)
    prefixes = tuple(prefix.strip() for prefix in rest.split("|") if prefix.strip())
    if not prefixes:
        # Most likely a base64 token's `=` padding, which would silently become a shorter
        # token with no restriction; refuse rather than guess.
        raise InvalidApiKeys(
            f"API key entry {number}: '=' without aggregation prefixes (tokens cannot contain '=')"
        )
    return ApiKey(token, Grant(prefixes))
