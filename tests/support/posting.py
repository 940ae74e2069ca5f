"""The client side of "nothing acknowledged is lost": post jobs while processes die or Redis
fails, retrying as a careful client would. Shared by the chaos and the Sentinel tests.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from typing import Any

import httpx


class JobPoster:
    """POSTs bodies from a few threads; a POST that gets no answer or a 5xx is retried until
    it gets its 201 (as a client riding out an outage would). Only 201s count as acknowledged."""

    def __init__(self, api_url: str, bodies: Sequence[dict[str, Any]], threads: int = 4, pace: float = 0.0):
        self.api_url = api_url
        self.bodies = list(bodies)
        self.pace = pace
        self.acked: dict[int, str] = {}  # body index -> job id
        self.retried_posts = 0
        self.errors: list[str] = []  # the 5xx answers that were retried
        self.refused: list[str] = []  # 4xx answers, or no 201 before giving up
        self._lock = threading.Lock()
        self._threads = [
            threading.Thread(target=self._run, args=(i, threads), daemon=True) for i in range(threads)
        ]

    def start(self) -> JobPoster:
        for t in self._threads:
            t.start()
        return self

    def join(self, timeout: float) -> JobPoster:
        deadline = time.monotonic() + timeout
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))
        assert not any(t.is_alive() for t in self._threads), f"posting did not finish within {timeout:g}s"
        assert not self.refused, f"{len(self.refused)} POSTs refused, first: {self.refused[:3]}"
        return self

    @property
    def acknowledged(self) -> dict[int, str]:
        with self._lock:
            return dict(self.acked)

    def _run(self, first: int, step: int) -> None:
        with httpx.Client(base_url=self.api_url, timeout=10.0, trust_env=False) as http:
            for i in range(first, len(self.bodies), step):
                self._post(http, i)
                if self.pace:
                    time.sleep(self.pace)

    def _post(self, http: httpx.Client, i: int, give_up: float = 90.0) -> None:
        deadline = time.monotonic() + give_up
        while time.monotonic() < deadline:
            try:
                resp: httpx.Response | None = http.post("/download", json=self.bodies[i])
            except httpx.TransportError:
                resp = None
            if resp is not None and resp.status_code == 201:
                with self._lock:
                    self.acked[i] = resp.json()["id"]
                return
            if resp is not None and resp.status_code < 500:
                with self._lock:
                    self.refused.append(f"job {i}: {resp.status_code} {resp.text}")
                return
            with self._lock:
                self.retried_posts += 1
                if resp is not None:
                    self.errors.append(f"{resp.status_code} {resp.text.strip()}")
            time.sleep(0.2)
        with self._lock:
            self.refused.append(f"job {i}: no 201 within {give_up:g}s")
