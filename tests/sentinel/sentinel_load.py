"""The client side of "nothing acknowledged is lost": post jobs while Redis fails over.

`Poster` posts from a few threads at a steady pace and retries a POST that fails with a
connection error or a 5xx until it gets its 201, as a careful client would. `Figures` counts
what the callback server received against what the API acknowledged.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Sequence
from typing import Any

import httpx
from servers import CallbackServer


class Poster:
    def __init__(
        self, api_url: str, bodies: Sequence[dict[str, Any]], threads: int = 4, pace: float = 0.1
    ) -> None:
        self.api_url = api_url
        self.bodies = list(bodies)
        self.pace = pace  # seconds between two POSTs of one thread
        self.acked: dict[int, str] = {}
        self.failed_posts = 0  # answers that were retried (5xx or no answer)
        self.rejected: list[str] = []
        self.errors: list[str] = []  # the 5xx answers (retried)
        self._lock = threading.Lock()
        self._threads = [
            threading.Thread(target=self._run, args=(i, threads), daemon=True) for i in range(threads)
        ]

    def start(self) -> Poster:
        for t in self._threads:
            t.start()
        return self

    def join(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))
        assert not any(t.is_alive() for t in self._threads), "posting did not finish"

    @property
    def acknowledged(self) -> list[str]:
        with self._lock:
            return list(self.acked.values())

    def _run(self, first: int, step: int) -> None:
        with httpx.Client(base_url=self.api_url, timeout=10.0, trust_env=False) as http:
            for i in range(first, len(self.bodies), step):
                self._post(http, i)
                time.sleep(self.pace)

    def _post(self, http: httpx.Client, i: int, give_up: float = 90.0) -> None:
        deadline = time.monotonic() + give_up
        while time.monotonic() < deadline:
            try:
                resp = http.post("/download", json=self.bodies[i])
            except httpx.TransportError:
                resp = None
            if resp is not None and resp.status_code == 201:
                with self._lock:
                    self.acked[i] = resp.json()["id"]
                return
            if resp is not None and resp.status_code < 500:
                with self._lock:
                    self.rejected.append(f"{resp.status_code} {resp.text}")
                return
            with self._lock:
                self.failed_posts += 1
                if resp is not None:
                    self.errors.append(f"{resp.status_code} {resp.text.strip()}")
            time.sleep(0.2)
        with self._lock:
            self.rejected.append(f"job {i}: no 201 within {give_up:g}s")


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
    def count(cls, poster: Poster, callbacks: CallbackServer) -> Figures:
        acked = poster.acknowledged
        delivered = {job_id: len(callbacks.delivered(job_id)) for job_id in acked}
        all_ids = {c.payload.get("job_id") for c in callbacks.all() if 200 <= c.answered < 300}
        return cls(
            enqueued=len(poster.bodies),
            acknowledged=len(acked),
            completed=sum(1 for n in delivered.values() if n),
            lost=[job_id for job_id, n in delivered.items() if n == 0],
            duplicate_callbacks=sum(n - 1 for n in delivered.values() if n > 1),
            unacknowledged_jobs_delivered=len(all_ids - set(acked)),
            retried_posts=poster.failed_posts,
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
