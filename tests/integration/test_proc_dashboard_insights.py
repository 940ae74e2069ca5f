"""What GET /ui/overview adds for operators, through real api/worker/notifier processes: the
limit of an aggregation whose queue drained (its `aggr:` hash is deleted then, as the original
did), end-to-end latency p50/p95 and per-minute series per aggregation (with and without a
callback), callbacks pending and failed per destination host, and whether an operator is
expected at all.
"""

from __future__ import annotations

from typing import Any

import pytest
from support.procs import Stack, aggr_id, free_port, job_body
from support.servers import CallbackServer, FileServer, wait_until

from downloader.store import keys

pytestmark = pytest.mark.integration


def overview(stack_api: Any) -> dict[str, Any]:
    resp = stack_api.http.get("/ui/overview")
    assert resp.status_code == 200, resp.text
    data: dict[str, Any] = resp.json()
    return data


def row_of(data: dict[str, Any], aggr: str) -> dict[str, Any] | None:
    return next((row for row in data["aggregations"] if row["id"] == aggr), None)


def test_a_drained_aggregation_keeps_its_limit_and_shows_latency_and_series(
    stack: Stack, files: FileServer, callbacks: CallbackServer
) -> None:
    api, _, _ = stack.all_three()
    with_callback = aggr_id("insights")
    ids = [api.post_job(job_body(files.url("tiny.png", n=n), with_callback, callbacks.url, limit=7))
           for n in range(3)]  # fmt: skip
    for job_id in ids:
        callbacks.wait_for(job_id)
    wait_until(lambda: not stack.db.exists(keys.aggregation(with_callback)), 20, "the idle hash to go")

    data = wait_until(
        lambda: (d := overview(api)) and (r := row_of(d, with_callback)) and r["latency_p95"] and d,
        10,
        "the overview to show the drained aggregation's latency",
    )
    row = row_of(data, with_callback)
    assert row is not None
    assert row["limit"] == 7, "the limit of a drained aggregation, not '–'"
    assert row["pending"] == 0 and row["in_flight"] == 0 and row["succeeded"] == 3
    assert 0 < row["latency_p50"] <= row["latency_p95"] <= 30  # bucket bounds, in seconds

    series = {s["id"]: s["points"] for s in data["aggregation_series"]}
    assert with_callback in series
    points = series[with_callback]
    assert len(points) == data["series_minutes"]
    assert sum(p["finished"] for p in points) == 3 and sum(p["failed"] for p in points) == 0
    assert any(p["latency_p95"] for p in points)
    assert all(p["latency_p50"] is None for p in points if not p["finished"])
    assert data["operator_expected"] is False  # plain processes: no Kubernetes, nothing managed

    stack.db.sadd(keys.MANAGED_AGGREGATIONS, "managed-somewhere")
    assert overview(api)["operator_expected"] is True


def test_callbacks_are_counted_pending_and_failed_per_destination_host(
    stack: Stack, files: FileServer, callbacks: CallbackServer
) -> None:
    api, _, _ = stack.all_three(callback_max_attempts=2, callback_backoff_seconds=0.2)
    aggr = aggr_id("cb-hosts")
    nowhere = f"http://localhost:{free_port()}/callback"  # refused: retried once, then Failed
    failing = api.post_job(job_body(files.url("tiny.png", n=1), aggr, nowhere))
    # The receiver is slow (under the callback timeout): this callback stays in flight a while.
    callbacks.hold_next(1, 3.0)
    slow = api.post_job(job_body(files.url("tiny.png", n=2), aggr, callbacks.url))

    wait_until(lambda: stack.db.hget(keys.job(failing), "CallbackState") == "Failed", 20, "a failed callback")
    hosts = wait_until(
        lambda: {h["host"]: h for h in overview(api)["callback_hosts"]} or None, 10, "callback hosts"
    )
    assert hosts["localhost"]["retried"] == 1 and hosts["localhost"]["failed"] == 1
    assert hosts["localhost"]["pending"] == 0
    assert hosts["127.0.0.1"]["pending"] == 1, "the slow receiver's callback, being delivered"
    callbacks.wait_for(slow, timeout=15)
    settled = wait_until(
        lambda: (h := {h["host"]: h for h in overview(api)["callback_hosts"]}).get("127.0.0.1") is None and h,
        10,
        "the delivered callback to leave the pending count",
    )
    assert settled["localhost"]["failed"] == 1
    assert overview(api)["callback_hosts_sampled"] is False
