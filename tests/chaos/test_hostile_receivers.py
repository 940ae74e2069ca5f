"""Callback receivers that never finish answering cannot stall the others.

Fifty receivers, each its own listening socket on 127.0.0.1: half trickle their status line
a byte at a time and never finish their headers, half answer 503 with a body without end.
Each delivery has one total deadline (DOWNLOADER_CALLBACK_TIMEOUT_SECONDS: connect, send,
status and a capped body read), and a delivery unanswered after a second leaves its slot to
healthy receivers: while all fifty hang, a healthy receiver's callbacks arrive as fast as
ever; the notifier's memory stays flat; the hostile callbacks time out, retry and end Failed.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.chaos import print_figures
from support.procs import Stack, aggr_id, job_body
from support.servers import CallbackServer, FileServer, RawServer, read_request_head, wait_until

pytestmark = pytest.mark.chaos

DEADLINE = 3.0  # DOWNLOADER_CALLBACK_TIMEOUT_SECONDS
HOSTILE = 50
HEALTHY = 20
#: Past its deadline a delivery ends within this: the watchdog wakes at the deadline itself,
#: and a busy 2-core host adds its share.
LATENESS = 1.5


class HostileReceiver:
    """A server of its own; every connection reads the request, then either trickles the
    status line (a byte every half second, headers never complete) or answers 503 with
    64 KiB blocks for as long as the client reads. Records connections and bytes sent."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.sent = 0
        self._stop = threading.Event()
        self.server = RawServer(self._serve)
        self.url = f"http://127.0.0.1:{self.server.port}/callback"

    @property
    def connections(self) -> int:
        return self.server.connections

    def stop(self) -> None:
        self._stop.set()
        self.server.close()

    def _serve(self, conn: socket.socket) -> None:
        if read_request_head(conn) is None:
            return
        if self.kind == "trickle":
            for byte in b"HTTP/1.1 200 OK\r\nX-Slow: " + b"a" * 10_000:
                if self._stop.wait(0.5):
                    return
                conn.sendall(bytes([byte]))
                self.sent += 1
        else:
            conn.sendall(b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\n\r\n")
            block = os.urandom(1 << 16)
            while not self._stop.is_set():
                conn.sendall(block)  # blocks while the client does not read; fails once it left
                self.sent += len(block)


@pytest.fixture
def hostile() -> Iterator[list[HostileReceiver]]:
    receivers = [HostileReceiver("trickle" if i % 2 else "endless") for i in range(HOSTILE)]
    yield receivers
    for receiver in receivers:
        receiver.stop()


def _rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_fifty_hostile_receivers_do_not_delay_a_healthy_one(
    stack: Stack, files: FileServer, callbacks: CallbackServer, hostile: list[HostileReceiver]
) -> None:
    stack.configure(callback_timeout_seconds=DEADLINE, callback_max_attempts=2, worker_concurrency=16)
    api = stack.api()
    notifier = stack.notifier()
    stack.worker()
    rss_before = _rss_kb(notifier.pid)

    bad_aggr, good_aggr = aggr_id("hostile"), aggr_id("healthy")
    bad = [api.post_job(job_body(files.url("sample-1.jpg", i=i), bad_aggr, r.url, limit=50))
           for i, r in enumerate(hostile)]  # fmt: skip
    wait_until(lambda: all(r.connections >= 1 for r in hostile), 20, "every hostile receiver to be called")

    # All fifty hang now (each for up to the deadline): healthy callbacks must not wait for them.
    posted: dict[str, float] = {}
    for i in range(HEALTHY):
        job_id = api.post_job(job_body(files.url("tiny.png", i=i), good_aggr, callbacks.url, limit=4))
        posted[job_id] = time.monotonic()
    for job_id in posted:
        callbacks.wait_for(job_id, timeout=DEADLINE)
    healthy_took = {
        job_id: callbacks.delivered(job_id)[0].at - posted[job_id] for job_id in posted
    }  # monotonic, as `at`
    rss_during = _rss_kb(notifier.pid)

    def all_failed() -> bool:
        return all(stack.db.hget(f"job:{job_id}", "CallbackState") == "Failed" for job_id in bad)

    wait_until(all_failed, 2 * (DEADLINE + LATENESS) + 10, "every hostile callback to end Failed")
    rss_after = _rss_kb(notifier.pid)
    errors = {stack.db.hget(f"job:{job_id}", "CallbackMeta") for job_id in bad}
    endless_sent = sum(r.sent for r in hostile if r.kind == "endless")

    print_figures(
        "fifty hostile callback receivers and a healthy one",
        {
            "healthy callbacks: slowest POST -> callback": f"{max(healthy_took.values()):.2f} s",
            "notifier RSS before / during / after (MB)": f"{rss_before / 1024:.0f} / {rss_during / 1024:.0f}"
            f" / {rss_after / 1024:.0f}",
            "hostile connections": sum(r.connections for r in hostile),
            "bytes the endless receivers got out": endless_sent,
            "hostile errors": sorted({e.split('": ')[-1] for e in errors if e}),
        },
    )
    assert max(healthy_took.values()) < DEADLINE
    # Two attempts each, no more; the endless bodies were cut after the capped read.
    assert all(r.connections == 2 for r in hostile), [r.connections for r in hostile]
    assert rss_after - rss_before < 30 * 1024 and rss_during - rss_before < 30 * 1024
    trickled = {
        stack.db.hget(f"job:{j}", "CallbackMeta")
        for j, r in zip(bad, hostile, strict=True)
        if r.kind == "trickle"
    }
    assert all(e and e.endswith("context deadline exceeded (Client.Timeout exceeded while awaiting headers)")
               for e in trickled), trickled  # fmt: skip
    endless = {
        stack.db.hget(f"job:{j}", "CallbackMeta")
        for j, r in zip(bad, hostile, strict=True)
        if r.kind == "endless"
    }
    assert endless == {"Received Status: 503 Service Unavailable"}


def test_shutdown_cuts_off_a_receiver_that_never_answers_and_queues_its_callback_again(
    stack: Stack, files: FileServer, hostile: list[HostileReceiver]
) -> None:
    """SIGTERM gives deliveries in flight the shutdown grace, not the callback timeout: a
    trickling receiver is cut off, and its callback goes back to the queue, the attempt
    not counted, for the next notifier."""
    stack.configure(callback_timeout_seconds=120, shutdown_grace_seconds=1)
    api = stack.api()
    notifier = stack.notifier()
    stack.worker()
    trickler = next(r for r in hostile if r.kind == "trickle")
    job_id = api.post_job(job_body(files.url("tiny.png"), aggr_id("cut"), trickler.url))
    wait_until(lambda: trickler.connections >= 1, 20, "the callback to reach the trickling receiver")
    time.sleep(0.5)
    assert stack.db.hget(f"job:{job_id}", "CallbackCount") == "1"  # the attempt under way

    asked = time.monotonic()
    notifier.signal(15)
    code = notifier.wait(timeout=15)
    took = time.monotonic() - asked
    job = stack.db.hgetall(f"job:{job_id}")
    print_figures("shutdown with a callback in flight", {"SIGTERM -> exit": f"{took:.2f} s", "job": job})
    assert code == 0 and took < 1 + LATENESS + 2  # the grace, then the cut
    assert job["CallbackState"] == "Pending" and job["CallbackCount"] == "0"
    assert stack.db.zscore("CallbackQueue", job_id) is not None
    assert stack.db.zscore("CallbackInflight", job_id) is None
