"""Callbacks from claim to delivery: claim and renew their leases, record a delivery or a
failed one, and put Failed callbacks back in their queue (POST /retry/<id>, `downloader retry`).

`CallbacksMixin` serves the notifier and the CLI, `AsyncCallbacksMixin` the API.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, cast

from downloader.store import calls, keys
from downloader.store.base import AsyncStoreBase, StoreBase, pairs, translated
from downloader.store.records import CallbackClaim, ClaimedJob


class CallbacksMixin(StoreBase):
    def claim_callbacks(
        self, wanted: int, token: str, lease_seconds: float, now: float | None = None
    ) -> CallbackClaim:
        """Claim up to `wanted` callbacks due by `now`, count their attempt and read them."""
        now = time.time() if now is None else now
        call = calls.claim_callbacks_call(wanted=wanted, token=token, lease_seconds=lease_seconds, now=now)
        with translated():
            reply = cast(list[Any], self.run_script(call))
        left, *per_job = reply
        jobs: dict[str, ClaimedJob | None] = {
            job_id: ClaimedJob(pairs(flat), options[0], result[0]) if flat else None
            for job_id, flat, options, result in zip(
                per_job[::4], per_job[1::4], per_job[2::4], per_job[3::4], strict=True
            )
        }
        if left == "more":
            return CallbackClaim(jobs, more=True)
        return CallbackClaim(jobs, float(left) if left else None)

    def renew_callbacks(self, ids: Sequence[str], token: str, lease_seconds: float) -> list[str]:
        """Extend the leases of callbacks being delivered; returns those no longer ours."""
        if not ids:
            return []
        call = calls.renew_call(aggr_id=None, ids=ids, token=token, lease_seconds=lease_seconds)
        with translated():
            return cast(list[str], self.run_script(call))

    def callback_delivered(
        self, job_id: str, token: str, delete_at: float, location: str, now: float | None = None
    ) -> int:
        """`location`: the encoded storage Location the reaper deletes at `delete_at`, with
        what GET /jobs/<id> shows of the delivered job until then."""
        now = time.time() if now is None else now
        # Kept past the deletion as a safety net only: the reaper deletes it with the file.
        kept_ttl = max(self.meta_ttl, int(delete_at - now) + 86400)
        call = calls.callback_delivered_call(
            job_id=job_id, token=token, delete_at=delete_at, location=location, now=now, kept_ttl=kept_ttl
        )
        with translated():
            return int(self.run_script(call))

    def callback_undelivered(
        self,
        job_id: str,
        token: str,
        fields: Mapping[str, str],
        retry_at: float | None,
        now: float | None = None,
        *,
        delete_at: float | None = None,
        location: str = "",
    ) -> int:
        """Record a failed delivery (`fields`), queued again at `retry_at`; or, Failed for good,
        kept until `delete_at` and then deleted with its file at `location`."""
        now = time.time() if now is None else now
        # The meta (timestamps /jobs shows) must not expire before the hash it describes.
        meta_ttl = self.meta_ttl if delete_at is None else max(self.meta_ttl, int(delete_at - now) + 86400)
        call = calls.callback_undelivered_call(
            job_id=job_id,
            token=token,
            fields=fields,
            retry_at=retry_at,
            now=now,
            meta_ttl=meta_ttl,
            delete_at=delete_at,
            location=location,
        )
        with translated():
            return int(self.run_script(call))

    def drop_callback_claim(self, job_id: str, token: str) -> None:
        with translated():
            pipe = self.redis.pipeline(transaction=True)
            pipe.zrem(keys.CALLBACK_INFLIGHT, job_id)
            pipe.hdel(keys.CALLBACK_LEASES, job_id)
            pipe.execute()

    def scan_callback_states(self, batch: int = 1000) -> Iterator[list[tuple[str, str, str]]]:
        """(job id, aggregation, CallbackState) of every `job:*` hash, one SCAN batch at a time
        (`downloader retry` picks the Failed ones)."""
        cursor = 0
        with translated():
            while True:
                cursor, scanned = self.redis.scan(cursor, match=keys.JOB_PATTERN, count=batch)
                found = cast(list[str], scanned)
                pipe = self.redis.pipeline(transaction=False)
                for job_key in found:
                    pipe.hmget(job_key, ["AggrID", "CallbackState"])
                rows = pipe.execute() if found else []
                yield [
                    (k[len(keys.JOB_PREFIX) :], a or "", c or "")
                    for k, (a, c) in zip(found, rows, strict=True)
                ]
                if cursor == 0:
                    return

    def retry_callbacks(self, ids: Sequence[str], now: float | None = None) -> list[str | None]:
        """POST /retry's script for each id, pipelined: "OK", the state when not Failed, or
        None for a job that does not exist."""
        now = time.time() if now is None else now
        with translated():
            pipe = self.redis.pipeline(transaction=False)
            for job_id in ids:
                self.run_script(calls.retry_callback_call(job_id=job_id, now=now), client=pipe)
            replies = pipe.execute() if ids else []
        return [None if r is None else str(r) for r in replies]


class AsyncCallbacksMixin(AsyncStoreBase):
    async def retry_callback(self, job_id: str, now: float | None = None) -> str | None:
        """ "OK" when rescheduled, the callback state when it is not Failed, None if no job."""
        now = time.time() if now is None else now
        with translated():
            reply = await self.run_script(calls.retry_callback_call(job_id=job_id, now=now))
        return None if reply is None else str(reply)
