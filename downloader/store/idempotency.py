"""Idempotent enqueue: what a client's `Idempotency-Key` is bound to, and whose it is.

A key names one job for `idempotency_window_seconds`: ENQUEUE records the job's id and the
request's fingerprint under `keys.idempotency(scope, key)` in the same step that queues it, so
a retried request gets the first job back and a different request with the key is refused.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import NamedTuple

from downloader.config.apikeys import Grant
from downloader.errors import StoreError
from downloader.jobs.models import Aggregation, Job

#: Longest key (Stripe's limit too): room for a UUID, a hash or a prefix and a line number.
MAX_KEY_LENGTH = 255
#: The scope of callers that may use every aggregation (no API keys, or an unrestricted key).
ALL_SCOPE = "*"
#: Job fields that later stages write: never part of what a client asked for.
_STATE_FIELDS = frozenset(
    {
        "ID",
        "DownloadState",
        "DownloadCount",
        "DownloadMeta",
        "CallbackState",
        "DownloadURL",
        "CallbackMeta",
        "CallbackCount",
        "ResponseCode",
        "ImageSize",
    }
)


class Idempotency(NamedTuple):
    """A request's key, the scope it is looked up in, and how long it names its job."""

    scope: str
    key: str
    window_seconds: int


class Enqueued(NamedTuple):
    """A job's id, and whether an earlier request with the same key queued it (`replayed`), or
    another request did (`conflict`: nothing was queued, `id` is that request's job)."""

    id: str
    replayed: bool = False
    conflict: bool = False


class IdempotencyConflict(StoreError):
    """The key already names another job, of a different request, within its window."""

    def __init__(self, key: str, earlier_id: str, window_seconds: int) -> None:
        super().__init__(
            f"Idempotency-Key '{key}' was used within the last {window_seconds} s for a different "
            f"request (job {earlier_id}); send this job with a new key"
        )
        self.key = key
        self.earlier_id = earlier_id


def key_problem(key: str) -> str:
    """Why `key` cannot be an idempotency key ("" when it can): 1 to MAX_KEY_LENGTH visible
    ASCII characters, so it is safe in a Redis key name, a header and a log line."""
    if not key:
        return "Idempotency-Key is empty"
    if len(key) > MAX_KEY_LENGTH:
        return f"Idempotency-Key is longer than {MAX_KEY_LENGTH} characters"
    if not all("!" <= char <= "~" for char in key):
        return "Idempotency-Key may contain only visible ASCII characters (no spaces or controls)"
    return ""


def scope_of(grant: Grant) -> str:
    """The key space of a caller: one per set of aggregation prefixes, so that callers whose
    keys reach different aggregations can neither collide nor learn of each other's keys,
    while a rotated token with the same reach still finds its earlier requests."""
    if not grant.prefixes:
        return ALL_SCOPE
    return hashlib.sha256("\n".join(sorted(grant.prefixes)).encode()).hexdigest()[:32]


def fingerprint(job: Job, aggregation: Aggregation) -> str:
    """sha256 of the request as validated (its job fields, options and aggregation), so that
    the same job sent with other white space, key order or ignored fields is the same request."""
    fields = {k: v for k, v in dataclasses.replace(job, id="").to_hash().items() if k not in _STATE_FIELDS}
    canonical = {
        "job": fields,
        "options": job.options.encode(),
        "aggregation": [aggregation.id, aggregation.limit, aggregation.proxy],
    }
    text = json.dumps(canonical, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()
