"""GET /ui/overview in-process on a real Redis: what the dashboard's data says, and keeps
to itself. Heartbeats expire, per-minute counts add up, scoped API keys see only their
aggregations, records that cannot be read are skipped, and the page itself is served open.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest
import redis
from fastapi.testclient import TestClient
from support.redis_state import record_attempt

from downloader.api.main import create_app
from downloader.config.settings import Settings
from downloader.jobs.models import Aggregation, Job
from downloader.store import Instance, Store, keys

pytestmark = pytest.mark.ui

KEYS = "all-key,shop-key=shop-"
ALL = {"Authorization": "Bearer all-key"}
SHOP = {"Authorization": "Bearer shop-key"}


@pytest.fixture
def db(redis_url: str) -> Iterator[Store]:
    store = Store.from_url(redis_url)
    yield store
    store.close()


@pytest.fixture
def api(redis_url: str) -> Iterator[TestClient]:
    app = create_app(Settings(redis_url=redis_url, api_keys=KEYS))  # type: ignore[call-arg]
    with TestClient(app) as client:
        yield client


def enqueue(db: Store, aggr_id: str, limit: int, count: int) -> None:
    for n in range(count):
        db.enqueue_many(
            [(Job(id="", url=f"http://127.0.0.1:9/{n}", aggr_id=aggr_id), Aggregation(aggr_id, limit))]
        )


def test_heartbeats_list_live_instances_and_forget_stopped_ones(db: Store, rdb: redis.Redis) -> None:
    now = time.time()
    alive, stopped = Instance.here("worker", "w-alive"), Instance.here("worker", "w-stopped")
    db.heartbeat(stopped, now=now - keys.INSTANCE_TTL_SECONDS - 1)
    db.heartbeat(alive, now=now)
    members = rdb.zrange(keys.instances("worker"), 0, -1)
    assert [json.loads(m)["id"] for m in members] == ["w-alive"]  # the stale entry was pruned
    assert 0 < rdb.ttl(keys.instances("worker")) <= keys.INSTANCE_KEY_TTL_SECONDS
    db.heartbeat(alive, now=now + 1)
    assert rdb.zcard(keys.instances("worker")) == 1  # renewing moves the score, adds nothing


def test_overview_counts_backlog_rates_and_failures(api: TestClient, db: Store, rdb: redis.Redis) -> None:
    enqueue(db, "shop-a", limit=7, count=3)
    enqueue(db, "blog-b", limit=2, count=1)
    for kind in ("ok", "ok", "ok", "failed", "retried"):
        record_attempt(db, "shop-a", kind, json.dumps({"id": "J1", "aggr_id": "shop-a", "url": "u",
                                                      "error": "boom", "code": "404", "at": time.time()})
                          if kind == "failed" else "")  # fmt: skip
    record_attempt(db, "blog-b", "failed", json.dumps({"id": "J2", "aggr_id": "blog-b", "error": "bad"}))
    rdb.lpush(keys.RECENT_FAILURES, "not json")
    assert 0 < rdb.ttl(keys.throughput(int(time.time() // 60))) <= keys.THROUGHPUT_TTL_SECONDS

    body = api.get("/ui/overview", headers=ALL).json()
    rows = {row["id"]: row for row in body["aggregations"]}
    assert rows["shop-a"]["limit"] == 7 and rows["shop-a"]["pending"] == 3
    assert (rows["shop-a"]["succeeded"], rows["shop-a"]["failed"], rows["shop-a"]["retried"]) == (3, 1, 1)
    assert rows["shop-a"]["error_rate"] == 0.4
    assert [row["id"] for row in body["aggregations"]] == ["shop-a", "blog-b"]  # largest backlog first
    assert (
        body["totals"]["pending"] == 4 and body["totals"]["failed"] == 2 and body["totals"]["succeeded"] == 3
    )
    assert len(body["series"]) == keys.THROUGHPUT_MINUTES
    assert [f["job_id"] for f in body["recent_failures"]] == ["J2", "J1"]  # newest first, junk skipped
    assert body["recent_failures"][1]["response_code"] == 404

    scoped = api.get("/ui/overview", headers=SHOP).json()
    assert [row["id"] for row in scoped["aggregations"]] == ["shop-a"]
    assert [f["job_id"] for f in scoped["recent_failures"]] == ["J1"]
    assert scoped["totals"]["pending"] == 3 and scoped["totals"]["failed"] == 1
    assert scoped["totals"]["callbacks_queued"] is None


def test_failures_list_is_capped(db: Store, rdb: redis.Redis) -> None:
    for n in range(keys.RECENT_FAILURES_KEPT + 10):
        record_attempt(db, "x", "failed", json.dumps({"id": f"J{n}", "aggr_id": "x"}))
    assert rdb.llen(keys.RECENT_FAILURES) == keys.RECENT_FAILURES_KEPT
    assert json.loads(rdb.lindex(keys.RECENT_FAILURES, 0))["id"] == f"J{keys.RECENT_FAILURES_KEPT + 9}"


def test_the_page_is_open_and_the_data_is_not(api: TestClient) -> None:
    page = api.get("/")
    assert page.status_code == 200 and "<title>Downloader</title>" in page.text
    assert "default-src 'none'" in page.headers["content-security-policy"]
    for asset in ("dashboard.js", "dashboard.css", "favicon.svg"):
        assert api.get(f"/static/{asset}").status_code == 200, asset
    assert api.get("/ui/overview").status_code == 401
    assert "http" not in page.text.replace('"http://www.w3.org', "")  # nothing loaded from elsewhere


def test_overview_is_documented(api: TestClient) -> None:
    spec = api.get("/openapi.json", headers=ALL).json()
    ref = spec["paths"]["/ui/overview"]["get"]["responses"]["200"]["content"]["application/json"]["schema"]
    assert ref["$ref"].endswith("/Overview")
    assert {"instances", "aggregations", "totals", "series", "recent_failures"} <= set(
        spec["components"]["schemas"]["Overview"]["properties"]
    )


def test_overview_adds_latency_series_and_callbacks_per_destination_host(
    api: TestClient, db: Store, rdb: redis.Redis
) -> None:
    enqueue(db, "shop-a", limit=7, count=2)
    minute = int(time.time() // 60)
    rdb.hset(keys.latency(minute), mapping={"shop-a:2": 9, "shop-a:60": 1, "other-z:1": 3})
    rdb.hset(keys.throughput(minute), mapping={"shop-a:ok": 10, "drained-c:ok": 1, "drained-c:limit": 12})
    rdb.hset(
        keys.callback_hosts(minute), mapping={"hooks.example.com:failed": 2, "hooks.example.com:retried": 3}
    )

    body = api.get("/ui/overview", headers=ALL).json()
    rows = {row["id"]: row for row in body["aggregations"]}
    assert (rows["shop-a"]["latency_p50"], rows["shop-a"]["latency_p95"]) == (2.0, 60.0)
    assert rows["drained-c"]["limit"] == 12 and rows["drained-c"]["latency_p50"] is None
    series = {s["id"]: s["points"] for s in body["aggregation_series"]}
    assert next(iter(series)) == "shop-a" and len(series["shop-a"]) == keys.THROUGHPUT_MINUTES
    assert series["shop-a"][-1] == {"minute": series["shop-a"][-1]["minute"], "finished": 10, "failed": 0,
                                    "latency_p50": 2.0, "latency_p95": 60.0}  # fmt: skip
    assert body["callback_hosts"] == [{"host": "hooks.example.com", "pending": 0, "retried": 3, "failed": 2}]
    assert body["callback_hosts_sampled"] is False and body["operator_expected"] is False

    scoped = api.get("/ui/overview", headers=SHOP).json()
    assert scoped["callback_hosts"] is None  # fleet-wide: not for a key scoped to some aggregations
    assert [s["id"] for s in scoped["aggregation_series"]] == ["shop-a"]

    rdb.hset(keys.latency(minute), "shop-a:5", "many")  # written by hand: not a count
    resp = api.get("/ui/overview", headers=ALL)
    assert resp.status_code == 409 and "not a number" in resp.text
