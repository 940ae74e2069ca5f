"""A Sentinel failover under load, through real api, worker and notifier processes.

The primary is SIGKILLed while jobs are being posted and downloaded; the Sentinels promote
the replica and every process follows them without a restart. Every job the API
acknowledged must complete with a delivered callback, and no lease may be left behind.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.sentinel
from support.posting import JobPoster
from support.procs import Stack, aggr_id, job_body
from support.sentinel_cluster import MASTER_NAME, Cluster
from support.sentinel_load import Figures
from support.servers import CallbackServer, FileServer, wait_until

from downloader.store import redis_client

pytestmark = pytest.mark.sentinel

JOBS = 200
KILL_AFTER = 60  # acknowledged jobs before the primary dies


def _sentinel_client(cluster: Cluster) -> redis.Redis:
    sentinel = redis.sentinel.Sentinel(
        [("127.0.0.1", s.port) for s in cluster.sentinels], socket_timeout=1, socket_connect_timeout=1
    )
    return sentinel.master_for(MASTER_NAME, decode_responses=True, socket_timeout=2, socket_connect_timeout=1)


def _stack(tmp_path: Path, cluster: Cluster) -> Stack:
    stack = Stack(
        tmp_path,
        cluster.primary.url,  # only its db number is used in Sentinel mode
        redis_sentinels=cluster.sentinel_list,
        redis_master_name=MASTER_NAME,
        redis_wait_replicas=1,
        redis_wait_timeout_ms=1000,
        lease_seconds=3,  # leases written to the dead primary only come back quickly
    )
    stack.db.close()
    stack.db = _sentinel_client(cluster)  # the test's reads follow the failover too
    return stack


def _bodies(files: FileServer, callbacks: CallbackServer, count: int) -> list[dict[str, object]]:
    aggrs = [aggr_id("fo") for _ in range(4)]
    return [
        # 32 KB in 8 KB chunks, 80 ms apart: about 0.3 s per download, so some are always running.
        job_body(files.url("sample-1.jpg", i=i, delay=0.08, chunk=8192), aggrs[i % 4], callbacks.url, limit=8)
        for i in range(count)
    ]


def _replicas(db: redis.Redis) -> int:
    """Replicas of the primary that are in sync (those WAIT can count)."""
    info = db.info("replication")
    return sum(1 for k, v in info.items() if k.startswith("slave") and isinstance(v, dict)
               and v.get("state") == "online")  # fmt: skip


def _no_leases_left(db: redis.Redis) -> bool:
    return not list(db.scan_iter(match="inflight:*")) and db.zcard("CallbackInflight") == 0


def test_a_sentinel_failover_under_load_loses_no_acknowledged_job(
    tmp_path: Path, cluster: Cluster, files: FileServer, callbacks: CallbackServer, watched: list[Any]
) -> None:
    stack = _stack(tmp_path, cluster)
    watched.append(stack)
    try:
        api, worker, notifier = stack.all_three()
        poster = JobPoster(api.url, _bodies(files, callbacks, JOBS), pace=0.1).start()
        wait_until(lambda: len(poster.acknowledged) >= KILL_AFTER and files.in_flight > 0, 60,
                   "jobs acknowledged and downloads running")  # fmt: skip

        old = cluster.kill_primary()
        in_flight_at_kill = files.in_flight
        new = cluster.wait_for_failover(old)
        failover_seconds = time.monotonic() - (cluster.killed_at or 0)
        cluster.restart_old_primary_as_replica()
        poster.join(120)

        acked = list(poster.acknowledged.values())
        for job_id in acked:
            wait_until(lambda j=job_id: callbacks.delivered(j), 120, f"the callback of job {job_id}")
        wait_until(lambda: _no_leases_left(stack.db), 30, "every lease to be released")
        figures = Figures.count(poster, callbacks)
        figures.report(
            "Sentinel failover",
            **{"downloads running at the kill": in_flight_at_kill,
               "failover seconds (kill -> promoted)": f"{failover_seconds:.1f}",
               "new primary": f"{new[0]}:{new[1]}"},
        )  # fmt: skip

        assert poster.refused == []
        assert figures.acknowledged == JOBS
        assert figures.lost == []
        assert all(callbacks.wait_for(j)["success"] for j in acked)
        for proc in (api, worker, notifier):
            proc.check_alive()
        logs = worker.output() + notifier.output()
        assert "Sentinel mode" in logs
        assert f"127.0.0.1:{cluster.sentinels[0].port}" in logs
    finally:
        stack.stop_all()


def test_a_graceful_failover_moves_every_process_to_the_new_primary(
    tmp_path: Path, cluster: Cluster, files: FileServer, callbacks: CallbackServer, watched: list[Any]
) -> None:
    """SENTINEL FAILOVER leaves the old primary alive and writable for seconds: every process
    must move to the new one on its own (it re-asks the Sentinels every second), and the
    connections still open to the old one must move once it is demoted (READONLY)."""
    stack = _stack(tmp_path, cluster)
    watched.append(stack)
    try:
        api, worker, notifier = stack.all_three()
        aggr = aggr_id("graceful")
        before = api.post_job(job_body(files.url("tiny.png"), aggr, callbacks.url))
        assert callbacks.wait_for(before)["success"] is True
        old = ("127.0.0.1", cluster.primary.port)

        with cluster.sentinels[0].client() as s:
            assert s.execute_command("SENTINEL", "FAILOVER", MASTER_NAME)
        cluster.wait_for_failover(old)
        time.sleep(2 * redis_client.FOLLOW_SECONDS)
        # The old primary stays a primary until the Sentinels reconfigure it, which they do
        # only after it has reported that role for 8 s (4 x their publish period).
        demoted = cluster.replica.client()
        try:
            assert demoted.info("replication")["role"] == "master", "too slow: the window is gone"
            # Jobs posted in the window must land on the new primary, not on the old one
            # (which would drop them when it resyncs as a replica). The new primary has no
            # replica yet, so WAIT_REPLICAS=1 refuses them with 503 and undoes them: a 201
            # is only for a job a replica holds, a 503 leaves nothing anywhere.
            answers = [
                api.http.post("/download", json=job_body(files.url("tiny.png", w=i), aggr, callbacks.url))
                for i in range(10)
            ]
            assert {r.status_code for r in answers} <= {201, 503}, [r.text for r in answers]
            assert all(r.headers["retry-after"] for r in answers if r.status_code == 503)
            window = [r.json()["id"] for r in answers if r.status_code == 201]
            assert not any(demoted.exists(f"job:{j}") for j in window)
            wait_until(
                lambda: demoted.info("replication")["role"] == "slave", 30, "the old primary's demotion"
            )
        finally:
            demoted.close()

        wait_until(lambda: _replicas(stack.db) >= 1, 30, "the old primary to replicate the new one")
        after = [api.post_job(job_body(files.url("tiny.png", i=i), aggr, callbacks.url)) for i in range(10)]
        assert all(callbacks.wait_for(j, timeout=30)["success"] for j in window + after)
        called_back = {c.payload["job_id"] for c in callbacks.all()}
        assert called_back == {before, *window, *after}, "a 503 made no job"
        assert "the primary moved from" in worker.output() + notifier.output()
        wait_until(lambda: _no_leases_left(stack.db), 30, "every lease to be released")
        for proc in (api, worker, notifier):
            proc.check_alive()
    finally:
        stack.stop_all()
