"""A reply lost on its way back from Redis makes nothing twice and strands nothing.

redis-py sends a call again when its reply does not come (`retry_on_timeout`, and a closed
connection): the first run happened, only its answer was lost. Each write script of the
download side must recognise its own earlier run and answer as it did. A relay on 127.0.0.1
forwards to the test's real redis-server and loses exactly one reply, to the next call of the
script whose SHA1 it is given.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
import urllib.parse
from collections.abc import Iterator

import pytest
import redis
import redis.asyncio
from support.procs import Stack, aggr_id, job_body
from support.redis_state import enqueue
from support.tcpproxy import StallableRelay

from downloader.jobs.models import Aggregation, Job
from downloader.store import (
    AsyncStore,
    NextStep,
    Outcome,
    Store,
    enqueue_call,
    keys,
    new_job_id,
    new_token,
    redis_client,
    scripts,
)

pytestmark = pytest.mark.integration

#: How long the client waits for a reply before it sends the call again: short, so that a
#: lost reply costs the test half a second, not the service's five.
SOCKET_TIMEOUT = 0.5


def sha(script: str) -> bytes:
    """How a script is named on the wire (EVALSHA): the relay watches for it."""
    return hashlib.sha1(script.encode()).hexdigest().encode()


@pytest.fixture
def relay(redis_url: str, rdb: redis.Redis) -> Iterator[StallableRelay]:
    for script in (scripts.ENQUEUE, scripts.CLAIM_DOWNLOADS, scripts.FINISH, scripts.DROP_CLAIM):
        rdb.script_load(script)  # a first EVALSHA answered NOSCRIPT would hide the lost reply
    parts = urllib.parse.urlsplit(redis_url)
    proxy = StallableRelay(parts.hostname or "127.0.0.1", parts.port or 6379)
    yield proxy
    proxy.close()


def via(relay: StallableRelay) -> str:
    return f"redis://127.0.0.1:{relay.port}/0"


@pytest.fixture
def db(relay: StallableRelay) -> Iterator[Store]:
    store = Store(redis_client.connect_url(via(relay), socket_timeout=SOCKET_TIMEOUT))
    yield store
    store.close()


def a_job(n: int = 0, aggr: str = "aggr") -> Job:
    return Job(id="", url=f"http://127.0.0.1:9/{n}", aggr_id=aggr, callback_url="http://127.0.0.1:9/cb")


def job_keys(rdb: redis.Redis) -> list[str]:
    return sorted(rdb.scan_iter(match=keys.JOB_PATTERN))


@pytest.mark.parametrize("hang", [True, False], ids=["timeout", "connection-closed"])
def test_an_enqueue_whose_reply_is_lost_makes_exactly_one_job(
    db: Store, relay: StallableRelay, rdb: redis.Redis, hang: bool
) -> None:
    relay.drop_reply_to(sha(scripts.ENQUEUE), hang=hang)
    job_id = enqueue(db, a_job(), Aggregation("aggr", limit=3))
    assert relay.dropped == 1, "the reply was lost and the call sent again"
    assert job_keys(rdb) == [keys.job(job_id)]
    assert rdb.zrange("jobs:aggr", 0, -1) == [job_id]


def test_a_pipelined_enqueue_whose_reply_is_lost_makes_each_job_once(
    db: Store, relay: StallableRelay, rdb: redis.Redis
) -> None:
    relay.drop_reply_to(sha(scripts.ENQUEUE), hang=True)
    ids = db.enqueue_many([(a_job(n), Aggregation("aggr", limit=3)) for n in range(5)])
    assert relay.dropped == 1
    assert job_keys(rdb) == sorted(keys.job(i) for i in ids) and len(set(ids)) == 5
    assert sorted(rdb.zrange("jobs:aggr", 0, -1)) == sorted(ids)
    assert [rdb.hget(keys.job(i), "URL") for i in ids] == [f"http://127.0.0.1:9/{n}" for n in range(5)]


def test_a_retried_enqueue_of_a_job_already_run_and_deleted_does_not_queue_it_again(
    db: Store, rdb: redis.Redis
) -> None:
    # The worst case of a slow retry: meanwhile the job ran, its callback was delivered and
    # its hash deleted. Its id waits in the deletion queue, which the retry recognises.
    call = enqueue_call(job=a_job(), aggregation=Aggregation("aggr"), job_id=new_job_id(), now=time.time())
    assert db.run_script(call) == 1
    rdb.delete(keys.job(call.job_id))
    rdb.zrem("jobs:aggr", call.job_id)
    rdb.zadd(keys.DELETION_QUEUE, {call.job_id: time.time() + 3600})
    assert db.run_script(call) == 2  # answered as its first run: queued
    assert not rdb.exists(keys.job(call.job_id)) and rdb.zcard("jobs:aggr") == 0


def test_the_same_call_sent_again_is_recognised_after_a_worker_took_the_job(
    db: Store, rdb: redis.Redis
) -> None:
    call = enqueue_call(
        job=a_job(), aggregation=Aggregation("aggr"), job_id=new_job_id(), now=time.time() - 5
    )
    assert db.run_script(call) == 1
    assert db.claim("aggr", 1, new_token(), 30).ids == [call.job_id]  # its state fields change
    assert db.run_script(call) == 2
    assert rdb.zcard("jobs:aggr") == 0, "not queued again while a worker holds it"


def test_an_id_held_by_another_job_is_not_taken_for_ours(db: Store, rdb: redis.Redis) -> None:
    theirs = enqueue(db, a_job(1), Aggregation("aggr"))
    call = enqueue_call(job=a_job(2), aggregation=Aggregation("aggr"), job_id=theirs, now=time.time())
    assert db.run_script(call) == 0  # a collision: the caller draws again
    assert rdb.hget(keys.job(theirs), "URL") == "http://127.0.0.1:9/1"


def test_a_claim_whose_reply_is_lost_returns_every_id_it_leased(
    db: Store, relay: StallableRelay, rdb: redis.Redis
) -> None:
    ids = [enqueue(db, a_job(n), Aggregation("aggr", limit=10), now=time.time() - 100 + n) for n in range(6)]
    token = new_token()
    relay.drop_reply_to(sha(scripts.CLAIM_DOWNLOADS), hang=True)
    claim = db.claim("aggr", 3, token, lease_seconds=30)
    assert relay.dropped == 1
    leased = rdb.zrange("inflight:aggr", 0, -1)
    assert sorted(claim.ids) == sorted(leased) == sorted(ids[:3]), "no id leased and left unknown"
    assert all(claim.jobs[i].raw["DownloadState"] == "InProgress" for i in claim.ids)
    assert rdb.hgetall("leases:aggr") == dict.fromkeys(ids[:3], token)
    assert sorted(rdb.zrange("jobs:aggr", 0, -1)) == sorted(ids[3:])
    assert len(db.claim("aggr", 5, new_token(), 30).ids) == 3  # a new call leases the rest


def test_a_finish_whose_reply_is_lost_answers_done_as_its_first_run(
    db: Store, relay: StallableRelay, rdb: redis.Redis
) -> None:
    job_id = enqueue(db, a_job(), Aggregation("aggr"), now=time.time() - 10)
    token = new_token()
    assert db.claim("aggr", 1, token, 30).ids == [job_id]
    job = Job.from_hash(rdb.hgetall(keys.job(job_id)))
    done = Outcome(fields={"DownloadState": "Success", "CallbackState": "Pending"}, next_step=NextStep.CALLBACK,
                   due=1.0, finished=True, counted_as="ok")  # fmt: skip
    relay.drop_reply_to(sha(scripts.FINISH), hang=True)
    assert db.finish(job, token, done) == 1, "not 'lease lost': the lost run was this call's"
    assert relay.dropped == 1
    assert rdb.hget(keys.job(job_id), "DownloadState") == "Success"
    assert rdb.zrange(keys.CALLBACK_QUEUE, 0, -1) == [job_id] and rdb.zcard("inflight:aggr") == 0
    assert (
        sum(int(v) for f, v in rdb.hgetall(keys.throughput(int(time.time() // 60))).items() if f == "ok") == 1
    )


def test_setting_aside_whose_reply_is_lost_answers_done(
    db: Store, relay: StallableRelay, rdb: redis.Redis
) -> None:
    job_id = enqueue(db, a_job(), Aggregation("aggr"), now=time.time() - 10)
    token = new_token()
    db.claim("aggr", 1, token, 30)
    relay.drop_reply_to(sha(scripts.DROP_CLAIM), hang=True)
    assert db.set_aside("aggr", job_id, token, reason="unreadable") is True
    assert relay.dropped == 1
    assert rdb.llen(keys.RECENT_FAILURES) == 1 and rdb.zcard("inflight:aggr") == 0


def test_the_apis_enqueue_whose_reply_is_lost_makes_exactly_one_job(
    relay: StallableRelay, rdb: redis.Redis
) -> None:
    async def enqueue() -> str | None:
        client = redis.asyncio.Redis.from_url(
            via(relay), decode_responses=True, retry_on_timeout=True, socket_timeout=SOCKET_TIMEOUT,
            retry=redis_client._async_retry(),
        )  # fmt: skip
        store = AsyncStore(client)
        try:
            queued = await store.enqueue(a_job(), Aggregation("aggr", limit=3))
            return None if queued is None else queued.id
        finally:
            await store.close()

    relay.drop_reply_to(sha(scripts.ENQUEUE), hang=True)
    job_id = asyncio.run(enqueue())
    assert relay.dropped == 1 and job_id is not None
    assert job_keys(rdb) == [keys.job(job_id)]


def test_one_post_whose_redis_reply_is_lost_makes_one_job_and_answers_its_id(
    stack: Stack, relay: StallableRelay, rdb: redis.Redis
) -> None:
    api = stack.api(redis_url=via(relay))
    aggr = aggr_id("lost-reply")
    relay.drop_reply_to(sha(scripts.ENQUEUE))
    job_id = api.post_job(job_body("http://127.0.0.1:9/x", aggr, "http://127.0.0.1:9/cb"))
    assert relay.dropped == 1
    assert job_keys(rdb) == [keys.job(job_id)]
    assert rdb.zrange(keys.queue(aggr), 0, -1) == [job_id]
    assert api.job(job_id).json()["state"] == "queued"
