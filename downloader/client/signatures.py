"""Verifying a callback's `X-Downloader-Signature` on the receiving side: the service's own
check (`delivery.signing.verify`), so a receiver and the notifier cannot disagree on it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from downloader.delivery import signing

SIGNATURE_HEADER = signing.SIGNATURE_HEADER
DELIVERY_HEADER = signing.DELIVERY_HEADER
DEFAULT_TOLERANCE_SECONDS = signing.DEFAULT_TOLERANCE_SECONDS


def verify_signature(
    header: str | None,
    body: bytes,
    keys: str | Sequence[str],
    *,
    tolerance: float = DEFAULT_TOLERANCE_SECONDS,
    now: float | None = None,
) -> bool:
    """True when `header` (the X-Downloader-Signature value, None when the request had none)
    signs the raw `body` under one of `keys` (one key, or the list of those you accept while
    rotating) no more than `tolerance` seconds ago."""
    if not header:
        return False
    accepted = [keys] if isinstance(keys, str) else list(keys)
    return signing.verify(header, body, [k for k in accepted if k], tolerance=tolerance, now=now)


def verify_request(
    headers: Mapping[str, str],
    body: bytes,
    keys: str | Sequence[str],
    *,
    tolerance: float = DEFAULT_TOLERANCE_SECONDS,
) -> bool:
    """`verify_signature` of a request's headers (any mapping; names compared without case)."""
    wanted = SIGNATURE_HEADER.lower()
    header = next((value for name, value in headers.items() if name.lower() == wanted), None)
    return verify_signature(header, body, keys, tolerance=tolerance)
