"""The Redis layer: every read and write of jobs, queues, leases and stats goes through here.

`Store` (blocking) and `AsyncStore` (asyncio) are composed in `stores` from one module per
concern (`queue`, `callbacks`, `deletions`, `aggregations`, `dashboard`, `wakeups`); state
changes run as the Lua `scripts`, each through its wrapper in `calls`, with key names from
`keys`. Redis errors leave the package as `StoreError`. This module only re-exports.
"""

from __future__ import annotations

from downloader.store import idempotency, keys, redis_client, scripts
from downloader.store.calls import ScriptCall, enqueue_call
from downloader.store.idempotency import Enqueued, Idempotency, IdempotencyConflict
from downloader.store.queue import HOLD_SECONDS, ID_ATTEMPTS, NotReplicated
from downloader.store.records import (
    ATTEMPT_KINDS,
    CallbackClaim,
    Claim,
    ClaimedJob,
    DeadLetter,
    HostLoad,
    Instance,
    JobStatus,
    NextStep,
    Outcome,
    Recovered,
    new_job_id,
    new_token,
)
from downloader.store.stores import AsyncStore, Store

__all__ = [
    "ATTEMPT_KINDS",
    "HOLD_SECONDS",
    "ID_ATTEMPTS",
    "AsyncStore",
    "CallbackClaim",
    "Claim",
    "ClaimedJob",
    "DeadLetter",
    "Enqueued",
    "HostLoad",
    "Idempotency",
    "IdempotencyConflict",
    "Instance",
    "JobStatus",
    "NextStep",
    "NotReplicated",
    "Outcome",
    "Recovered",
    "ScriptCall",
    "Store",
    "enqueue_call",
    "idempotency",
    "keys",
    "new_job_id",
    "new_token",
    "redis_client",
    "scripts",
]
