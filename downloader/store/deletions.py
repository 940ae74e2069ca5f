"""The reaper's queue: file deletions due at a time, claimed (pushed back until done), their
files' locations, and the end of what is left of their jobs.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import cast

from downloader.store import calls, keys
from downloader.store.base import StoreBase, translated


class DeletionsMixin(StoreBase):
    def claim_deletions(
        self, wanted: int, retry_after: float, now: float | None = None
    ) -> tuple[list[str], float | None]:
        """File deletions due by `now` (pushed back by `retry_after` until done), and when the
        next one is due if none is due now."""
        now = time.time() if now is None else now
        call = calls.claim_deletions_call(wanted=wanted, now=now, retry_at=now + retry_after)
        with translated():
            next_due, *ids = cast(list[str], self.run_script(call))
        return ids, float(next_due) if next_due else None

    def deletion_targets(self, ids: Sequence[str]) -> dict[str, str]:
        """The encoded file Location of each id that has one recorded."""
        if not ids:
            return {}
        with translated():
            found = cast(list[str | None], self.redis.hmget(keys.DELETION_TARGETS, list(ids)))
        return {job_id: target for job_id, target in zip(ids, found, strict=True) if target}

    def deletions_done(self, ids: Sequence[str]) -> None:
        """Forget the deletions of `ids` (their files are gone) and whatever is left of their
        jobs: three commands however many. Not atomic, and need not be: an entry left by a
        crash half-way is deleted again later, which is harmless."""
        if not ids:
            return
        per_job = (keys.job, keys.job_meta, keys.job_errors, keys.job_options)
        doomed = [key_of(job_id) for job_id in ids for key_of in per_job]
        with translated():
            pipe = self.redis.pipeline(transaction=False)
            pipe.zrem(keys.DELETION_QUEUE, *ids)
            pipe.hdel(keys.DELETION_TARGETS, *ids)
            pipe.delete(*doomed)
            pipe.execute()
