"""The client side of "nothing acknowledged is lost": post jobs while Redis fails over.

The posting is `posting.JobPoster`'s (shared with the chaos tests); `Figures` counts what
the callback server received against what the API acknowledged.
"""

from __future__ import annotations

import dataclasses

from support.posting import JobPoster
from support.servers import CallbackServer


@dataclasses.dataclass
class Figures:
    enqueued: int
    acknowledged: int
    completed: int
    lost: list[str]
    duplicate_callbacks: int
    unacknowledged_jobs_delivered: int
    retried_posts: int

    @classmethod
    def count(cls, poster: JobPoster, callbacks: CallbackServer) -> Figures:
        acked = list(poster.acknowledged.values())
        delivered = {job_id: len(callbacks.delivered(job_id)) for job_id in acked}
        all_ids = {c.payload.get("job_id") for c in callbacks.all() if 200 <= c.answered < 300}
        return cls(
            enqueued=len(poster.bodies),
            acknowledged=len(acked),
            completed=sum(1 for n in delivered.values() if n),
            lost=[job_id for job_id, n in delivered.items() if n == 0],
            duplicate_callbacks=sum(n - 1 for n in delivered.values() if n > 1),
            unacknowledged_jobs_delivered=len(all_ids - set(acked)),
            retried_posts=poster.retried_posts,
        )

    def report(self, title: str, **extra: object) -> str:
        rows = {
            "jobs enqueued": self.enqueued,
            "acknowledged (201)": self.acknowledged,
            "completed (callback delivered)": self.completed,
            "lost": len(self.lost),
            "duplicate callbacks": self.duplicate_callbacks,
            "delivered jobs never acknowledged": self.unacknowledged_jobs_delivered,
            "POSTs retried (5xx or no answer)": self.retried_posts,
            **extra,
        }
        lines = [f"== {title} =="] + [f"  {k:<36} {v}" for k, v in rows.items()]
        text = "\n".join(lines)
        print("\n" + text)
        return text
