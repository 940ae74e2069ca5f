"""Servers that never finish: a slow loris (one byte per second) and an endless body.

Each is bounded: by the total download timeout (the setting, or the job's own
download_timeout) and by the size cap. Meanwhile the worker's other download threads keep
working: normal jobs of another aggregation complete within a few seconds while the slow ones
hang. The servers are raw sockets in threads of the test (support.chaos.SlowServer).
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from support.chaos import SlowServer, print_figures
from support.procs import Stack, aggr_id, job_body
from support.servers import CallbackServer, FileServer, wait_until

pytestmark = pytest.mark.chaos

TIMEOUT = 4.0  # DOWNLOADER_DOWNLOAD_TIMEOUT_SECONDS
JOB_TIMEOUT = 2  # the job's own download_timeout, in seconds
MAX_BYTES = 1 << 20
#: How late past its deadline an attempt may end: the watchdog runs every 0.1 s, a trickled
#: byte arrives every second, and a busy 2-core host adds its share.
LATENESS = 1.5


@pytest.fixture
def slow() -> Iterator[SlowServer]:
    server = SlowServer()
    yield server
    server.stop()


def test_a_slow_loris_and_an_endless_body_are_cut_off_while_other_jobs_keep_flowing(
    stack: Stack, slow: SlowServer, files: FileServer, callbacks: CallbackServer
) -> None:
    stack.configure(download_timeout_seconds=TIMEOUT, max_download_bytes=MAX_BYTES, worker_concurrency=6)
    api = stack.api()
    stack.notifier()
    worker = stack.worker()
    slow_aggr, fast_aggr = aggr_id("slow"), aggr_id("fast")

    def slow_job(path: str, **fields: object) -> str:
        return api.post_job(
            job_body(slow.url(path), slow_aggr, callbacks.url, limit=4, max_retries=0, **fields)
        )

    loris = [slow_job("/trickle-body"), slow_job("/trickle-body")]
    loris_own_timeout = slow_job("/trickle-body", download_timeout=JOB_TIMEOUT)
    endless = slow_job("/endless")
    wait_until(lambda: len(slow.opened("/trickle-body")) == 3, 10, "the slow lorises to be connected")
    hanging_since = time.monotonic()

    # Two threads left for another aggregation: 20 downloads of ~100 ms each.
    fast = [
        api.post_job(job_body(files.url("sample-1.jpg", i=i, delay=0.01), fast_aggr, callbacks.url, limit=2))
        for i in range(20)
    ]
    fast_payloads = [callbacks.wait_for(job_id, timeout=15) for job_id in fast]
    fast_done = time.monotonic()
    still_hanging = [c for c in slow.opened("/trickle-body") if c.closed is None]

    payloads = {
        job_id: callbacks.wait_for(job_id, timeout=TIMEOUT + 10)
        for job_id in [*loris, loris_own_timeout, endless]
    }
    trickles = slow.opened("/trickle-body")
    (endless_conn,) = slow.opened("/endless")
    held = sorted(round(c.held, 1) for c in trickles)

    print_figures(
        "slow loris and endless body",
        {
            "download timeout (setting / job)": f"{TIMEOUT:g} s / {JOB_TIMEOUT} s",
            "slow loris connections held": f"{held} s",
            "slow loris errors": sorted({payloads[j]["error"] for j in [*loris, loris_own_timeout]}),
            "endless body: held / bytes sent": f"{endless_conn.held:.1f} s / {endless_conn.sent}",
            "endless body error": payloads[endless]["error"],
            "fast jobs done after the lorises hung": f"{len(fast)} in {fast_done - hanging_since:.1f} s",
            "lorises still hanging then": len(still_hanging),
        },
    )
    assert all(p["success"] for p in fast_payloads)
    assert fast_done - hanging_since < TIMEOUT - 0.5, "other jobs waited for the slow ones"
    assert len(still_hanging) >= 2, "the slow ones were not hanging while the fast ones ran"
    for job_id in [*loris, loris_own_timeout]:
        assert payloads[job_id]["success"] is False
        assert "download timeout exceeded" in payloads[job_id]["error"], payloads[job_id]
    assert len(trickles) == 3, "max_retries 0: one attempt each"
    by_job_timeout = min(trickles, key=lambda c: c.held)
    assert by_job_timeout.held <= JOB_TIMEOUT + LATENESS, (
        f"the job's own timeout: held {by_job_timeout.held:.1f} s"
    )
    assert all(c.held <= TIMEOUT + LATENESS for c in trickles), held
    assert payloads[endless]["success"] is False
    assert "413 Payload Too Large" in payloads[endless]["error"], payloads[endless]
    assert endless_conn.held < TIMEOUT, "the size cap, not the timeout, ended the endless body"
    worker.check_alive()


def test_a_server_that_trickles_its_headers_is_cut_off_by_the_download_timeout(
    stack: Stack, slow: SlowServer, callbacks: CallbackServer
) -> None:
    stack.configure(download_timeout_seconds=TIMEOUT)
    api = stack.api()
    stack.notifier()
    worker = stack.worker()
    job_id = api.post_job(
        job_body(slow.url("/trickle-headers"), aggr_id("hdr"), callbacks.url, max_retries=0)
    )
    wait_until(lambda: slow.opened("/trickle-headers"), 10, "the header trickle to be connected")

    # Far past the deadline: a download bounded by it has long been called back by then.
    deadline = time.monotonic() + TIMEOUT + 10
    while not callbacks.delivered(job_id) and time.monotonic() < deadline:
        time.sleep(0.1)
    (conn,) = slow.opened("/trickle-headers")
    delivered = callbacks.delivered(job_id)

    print_figures(
        "slow loris in the headers",
        {
            "download timeout": f"{TIMEOUT:g} s",
            "connection held": f"{conn.held:.1f} s" + ("" if conn.closed else " (still open)"),
            "header bytes trickled": conn.sent,
            "called back": delivered[0].payload["error"] if delivered else "no",
        },
    )
    assert delivered, f"still downloading {conn.held:.0f} s into a {TIMEOUT:g} s timeout"
    assert "download timeout exceeded" in delivered[0].payload["error"]
    assert conn.held <= TIMEOUT + LATENESS
    worker.check_alive()
