"""`DOWNLOADER_REDIS_WAIT_REPLICAS`: a 201 only once that many replicas hold the job.

When they do not acknowledge it in time, the answer is 503 with Retry-After and nothing is
queued: the job was held where no worker could start it, and is undone. So a client that
sends it again gets one job, not two, and a 201 always means that a failover cannot lose it.
Against the test's real redis-server, which has no replica (WAIT can never be satisfied), and
a second real redis-server started as its replica.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import redis.asyncio
from support.procs import Stack, aggr_id, free_port, job_body, stop_process, tail
from support.servers import CallbackServer, FileServer, wait_until

from downloader.jobs.models import Aggregation, Job
from downloader.store import HOLD_SECONDS, AsyncStore, NotReplicated, Store, enqueue_call, keys, new_token

pytestmark = pytest.mark.integration


def a_job(aggr: str = "aggr") -> Job:
    return Job(id="", url="http://127.0.0.1:9/x", aggr_id=aggr, callback_url="http://127.0.0.1:9/cb")


def enqueue(redis_url: str, job: Job, *, wait_replicas: int, wait_timeout_ms: int) -> str | None:
    async def run() -> str | None:
        client = redis.asyncio.Redis.from_url(redis_url, decode_responses=True)
        store = AsyncStore(client, wait_replicas=wait_replicas, wait_timeout_ms=wait_timeout_ms)
        try:
            queued = await store.enqueue(job, Aggregation(job.aggr_id, limit=2))
            return None if queued is None else queued.id
        finally:
            await store.close()

    return asyncio.run(run())


def job_keys(rdb: redis.Redis) -> list[str]:
    return sorted(rdb.scan_iter(match=keys.JOB_PATTERN))


@pytest.fixture
def replica(redis_url: str, tmp_path: Path) -> Iterator[redis.Redis]:
    """A real redis-server replicating the test's Redis, stopped (and so detached) afterwards."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail("redis-server is not on PATH (scripts/bootstrap installs it)", pytrace=False)
    primary = urllib.parse.urlsplit(redis_url)
    port = free_port()
    log = tmp_path / "replica.log"
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(tmp_path), "--replicaof", "127.0.0.1", str(primary.port)],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )  # fmt: skip
    client = redis.Redis(port=port, decode_responses=True, socket_timeout=2)
    try:
        wait_until(lambda: client.info("replication")["master_link_status"] == "up", 20,
                   f"the replica to sync: {tail(log)}")  # fmt: skip
        yield client
    finally:
        client.close()
        stop_process(proc)


def test_a_job_no_replica_acknowledges_is_undone_and_refused_with_not_replicated(
    rdb: redis.Redis, redis_url: str
) -> None:
    with pytest.raises(NotReplicated) as refused:
        enqueue(redis_url, a_job(), wait_replicas=1, wait_timeout_ms=100)
    assert "0 of 1 Redis replicas acknowledged the job within 100 ms" in str(refused.value)
    assert refused.value.retry_after > 0
    assert job_keys(rdb) == [], "no half-made job"
    assert rdb.zcard("jobs:aggr") == 0
    assert list(rdb.scan_iter(match=keys.JOB_OPTIONS_PREFIX + "*")) == []


def test_a_job_a_replica_acknowledges_is_queued_at_once_and_announced(
    rdb: redis.Redis, redis_url: str, replica: redis.Redis
) -> None:
    pubsub = rdb.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(keys.WAKEUP_CHANNEL)
    assert pubsub.get_message(timeout=1) is None
    before = time.time()
    job_id = enqueue(redis_url, a_job(), wait_replicas=1, wait_timeout_ms=5000)
    assert job_id is not None
    score = rdb.zscore("jobs:aggr", job_id)
    assert score is not None and before - 1 < score < time.time() + 1, "released, not held"
    assert wait_until(lambda: replica.exists(keys.job(job_id)), 5, "the replica to hold the job")
    message = pubsub.get_message(timeout=2)
    pubsub.close()
    assert message is not None and message["data"] == "aggr"


def test_a_held_job_is_out_of_every_workers_reach_until_released(redis_url: str) -> None:
    # What a worker sees while the API waits for replicas: a job due only HOLD_SECONDS later.
    async def hold_only() -> None:
        store = AsyncStore(redis.asyncio.Redis.from_url(redis_url, decode_responses=True))
        call = enqueue_call(job=a_job(), aggregation=Aggregation("aggr"), job_id="HeldJob1234567",
                            now=time.time(), held_until=time.time() + HOLD_SECONDS)  # fmt: skip
        await store.run_script(call)
        await store.close()

    asyncio.run(hold_only())
    store = Store.from_url(redis_url)
    try:
        claim = store.claim("aggr", 5, new_token(), 30)
    finally:
        store.close()
    assert claim.ids == [] and claim.next_ready is not None
    assert claim.next_ready > time.time() + HOLD_SECONDS / 2, "not before it is released"


def test_post_answers_503_with_retry_after_and_queues_nothing_when_no_replica_acknowledges(
    stack: Stack, files: FileServer, callbacks: CallbackServer, rdb: redis.Redis
) -> None:
    api = stack.api(redis_wait_replicas=1, redis_wait_timeout_ms=300)
    stack.worker()  # would start the job at once, were it queued
    aggr = aggr_id("unreplicated")
    resp = api.http.post("/download", json=job_body(files.url("sample-1.jpg"), aggr, callbacks.url))
    assert resp.status_code == 503, resp.text
    assert resp.headers["retry-after"].isdigit() and int(resp.headers["retry-after"]) > 0
    assert "replicas acknowledged the job within 300 ms; nothing was queued" in resp.text
    time.sleep(1.0)  # time for a worker to take it, had it been queued
    assert files.seen("sample-1.jpg") == [], "no worker started a job the client was told failed"
    assert job_keys(rdb) == [] and rdb.zcard(keys.queue(aggr)) == 0
