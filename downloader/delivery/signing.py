"""Signed callbacks: `X-Downloader-Signature: t=<unix>,v1=<hex>[,v1=<hex>...]`.

Each `v1` is the hex HMAC-SHA256 of `"<t>.<body>"` under one active key, so a receiver that
knows any one of them can verify, and keys rotate without a flag day. The timestamp lets
receivers refuse replays older than a tolerance. Pure functions: the notifier signs, and
`verify` is what a receiver runs (the README's example is this logic).
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Sequence

SIGNATURE_HEADER = "X-Downloader-Signature"
DELIVERY_HEADER = "X-Downloader-Delivery"
SCHEME = "v1"
#: How old a signature `verify` accepts by default (replay window), in seconds.
DEFAULT_TOLERANCE_SECONDS = 300


def parse_keys(setting: str) -> list[str]:
    """The active keys from `DOWNLOADER_CALLBACK_SIGNING_KEYS` (comma-separated)."""
    return [key.strip() for key in setting.split(",") if key.strip()]


def digest(key: str, timestamp: int, body: bytes) -> str:
    signed = str(timestamp).encode("ascii") + b"." + body
    return hmac.new(key.encode("utf-8"), signed, hashlib.sha256).hexdigest()


def sign(body: bytes, keys: Sequence[str], timestamp: int | None = None) -> str:
    """The header value; one `v1` per key, in the order given."""
    t = int(time.time()) if timestamp is None else timestamp
    return ",".join([f"t={t}", *(f"{SCHEME}={digest(key, t, body)}" for key in keys)])


def delivery_id(job_id: str, download_count: int) -> str:
    """Names one notification: the same for every retry and duplicate of it (receivers may
    deduplicate on it), new when a job is downloaded again."""
    return f"{job_id}.{download_count}"


def headers(body: bytes, keys: Sequence[str], delivery: str, timestamp: int | None = None) -> dict[str, str]:
    """The headers every callback carries; no signature when no key is configured."""
    out = {DELIVERY_HEADER: delivery}
    if keys:
        out[SIGNATURE_HEADER] = sign(body, keys, timestamp)
    return out


def verify(
    header: str,
    body: bytes,
    keys: Sequence[str],
    *,
    tolerance: float = DEFAULT_TOLERANCE_SECONDS,
    now: float | None = None,
) -> bool:
    """True when `header` carries a fresh `v1` signature of `body` under one of `keys`."""
    fields = [part.split("=", 1) for part in header.split(",") if "=" in part]
    stamps = [value for name, value in fields if name.strip() == "t"]
    candidates = [value.strip() for name, value in fields if name.strip() == SCHEME]
    if len(stamps) != 1 or not stamps[0].strip().isdigit() or not candidates:
        return False
    timestamp = int(stamps[0])
    current = time.time() if now is None else now
    if abs(current - timestamp) > tolerance:
        return False
    expected = [digest(key, timestamp, body) for key in keys]
    return any(hmac.compare_digest(e, c) for e in expected for c in candidates)
