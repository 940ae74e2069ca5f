"""The Redis layer's atomic steps on a real Redis: enqueue, claims under the fleet-wide limit,
lease renewal and fencing, recovery of dead workers' jobs, callbacks, deletions (the
original's storage_test.go scenarios, ported, plus the lease rules that replace its pops)."""

from __future__ import annotations

import json
import threading
import time

import pytest
import redis
from support.redis_state import dead_letter, delete_idle_aggregation, enqueue, expired_leases, recover

from downloader.delivery.storage import Location
from downloader.jobs.models import JOB_FIELDS, Aggregation, Job, JobOptions, State
from downloader.store import NextStep, Outcome, Store, keys, new_token

pytestmark = pytest.mark.integration


@pytest.fixture
def db(redis_url: str) -> Store:
    store = Store.from_url(redis_url)
    yield store
    store.close()


def queued_job(db: Store, aggr: str = "aggr", limit: int = 2, **fields: object) -> str:
    job = Job(id="", url="http://127.0.0.1:9/x", aggr_id=aggr, callback_url="http://127.0.0.1:9/cb")
    for name, value in fields.items():
        setattr(job, name, value)
    # Queued in the past, so claims made "long ago" (dead workers) can see it.
    return enqueue(db, job, Aggregation(id=aggr, limit=limit), now=time.time() - 1000)


def test_enqueue_writes_the_originals_keys_and_fields(db: Store, rdb: redis.Redis) -> None:
    job_id = queued_job(db, extra="foobar", request_headers={"X-A": "1"})
    raw = rdb.hgetall(keys.job(job_id))
    assert list(raw) == list(JOB_FIELDS)
    assert raw["DownloadState"] == "Pending" and raw["Extra"] == "foobar"
    assert raw["MaxRetries"] == "null" and raw["ExtractImageSize"] == "0"
    assert json.loads(raw["RequestHeaders"]) == {"X-A": "1"}
    assert rdb.hgetall("aggr:aggr") == {"ID": "aggr", "Limit": "2", "Proxy": "", "ExpiresAt": ""}
    assert rdb.zscore("jobs:aggr", job_id) == pytest.approx(time.time() - 1000, abs=5)
    assert Job.from_hash(raw).id == job_id  # the round trip of TestSaveJob


def test_enqueue_keeps_an_existing_aggregation(db: Store, rdb: redis.Redis) -> None:
    queued_job(db, limit=2)
    queued_job(db, limit=9)
    assert rdb.hget("aggr:aggr", "Limit") == "2"


def test_claim_never_exceeds_the_limit_across_holders(db: Store) -> None:
    for _ in range(5):
        queued_job(db, limit=3)
    first = db.claim("aggr", 2, new_token(), 30)
    second = db.claim("aggr", 5, new_token(), 30)
    third = db.claim("aggr", 5, new_token(), 30)
    assert len(first.ids) == 2 and len(second.ids) == 1
    assert third.ids == [] and third.full


def test_concurrent_claims_from_many_threads_respect_the_limit(db: Store, rdb: redis.Redis) -> None:
    for _ in range(40):
        queued_job(db, limit=4)
    got: list[str] = []
    lock = threading.Lock()

    def claim() -> None:
        result = db.claim("aggr", 3, new_token(), 30)
        with lock:
            got.extend(result.ids)

    threads = [threading.Thread(target=claim) for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(got) == 4 == len(set(got))
    assert rdb.zcard("inflight:aggr") == 4 and rdb.zcard("jobs:aggr") == 36


def test_claim_reports_empty_and_next_ready(db: Store, rdb: redis.Redis) -> None:
    assert db.claim("aggr", 1, new_token(), 30).empty
    job_id = queued_job(db)
    rdb.zadd("jobs:aggr", {job_id: time.time() + 100})
    result = db.claim("aggr", 1, new_token(), 30)
    assert result.ids == [] and result.next_ready == pytest.approx(time.time() + 100, abs=5)


def test_a_claim_says_what_it_left_so_that_no_claim_is_sent_for_nothing(db: Store, rdb: redis.Redis) -> None:
    ids = [queued_job(db, limit=10) for _ in range(4)]
    first = db.claim("aggr", 2, new_token(), 30)
    assert len(first.ids) == 2 and first.more, "left by `wanted`"
    later = queued_job(db, limit=10)
    rdb.zadd("jobs:aggr", {later: time.time() + 100})
    rest = db.claim("aggr", 10, new_token(), 30)
    assert sorted(rest.ids) == sorted(set(ids) - set(first.ids)) and not rest.more
    assert rest.next_ready == pytest.approx(time.time() + 100, abs=5), "when to look again"
    rdb.zadd("jobs:aggr", {later: 1})
    last = db.claim("aggr", 10, new_token(), 30)
    assert last.ids == [later] and not last.more and last.next_ready is None, "nothing queued"
    queued_job(db, aggr="small", limit=1)
    queued_job(db, aggr="small", limit=1)
    assert db.claim("small", 10, new_token(), 30).more, "left by the limit"


def test_a_callback_claim_says_what_it_left(db: Store, rdb: redis.Redis) -> None:
    ids = [queued_job(db) for _ in range(3)]
    rdb.zadd(keys.CALLBACK_QUEUE, {ids[0]: 1, ids[1]: 2, ids[2]: time.time() + 100})
    first = db.claim_callbacks(1, new_token(), 30)
    assert first.ids == [ids[0]] and first.more
    rest = db.claim_callbacks(10, new_token(), 30)
    assert rest.ids == [ids[1]] and not rest.more
    assert rest.next_due == pytest.approx(time.time() + 100, abs=5)


def test_an_aggregation_without_hash_uses_the_default_limit_of_four(db: Store, rdb: redis.Redis) -> None:
    for i in range(6):
        rdb.zadd("jobs:nohash", {f"id{i}": 1})
    assert len(db.claim("nohash", 10, new_token(), 30).ids) == 4


def test_finish_is_fenced_by_the_lease_token(db: Store, rdb: redis.Redis) -> None:
    job_id = queued_job(db)
    token = new_token()
    assert db.claim("aggr", 1, token, 30).ids == [job_id]
    job = Job.from_hash(rdb.hgetall(keys.job(job_id)))
    done = Outcome(fields={"DownloadState": "Success"}, next_step=NextStep.CALLBACK, due=1.0, finished=True)
    assert db.finish(job, new_token(), done) == 0  # somebody else's token changes nothing
    assert rdb.hget(keys.job(job_id), "DownloadState") == "InProgress"  # as the claim left it
    assert db.finish(job, token, done) == 1
    assert db.finish(job, token, done) == 0  # running it twice is harmless
    assert rdb.hget(keys.job(job_id), "DownloadState") == "Success"
    assert rdb.zscore(keys.CALLBACK_QUEUE, job_id) == 1.0
    assert rdb.zcard("inflight:aggr") == 0 and not rdb.hexists("leases:aggr", job_id)
    assert rdb.hget(keys.job_meta(job_id), "FinishedAt")


def test_a_job_that_ends_without_callback_counts_its_end_to_end_latency(db: Store, rdb: redis.Redis) -> None:
    job_id = queued_job(db, aggr="quiet")
    token = new_token()
    assert db.claim("quiet", 1, token, 30).ids == [job_id]
    rdb.hset(keys.job_meta(job_id), "CreatedAt", repr(time.time() - 4))  # created 4 s ago
    job = Job.from_hash(rdb.hgetall(keys.job(job_id)))
    done = Outcome(fields={"DownloadState": "Success"}, next_step=NextStep.DELETE, due=1.0, finished=True)
    now = time.time()
    assert db.finish(job, token, done, now=now) == 1
    assert rdb.hgetall(keys.latency(int(now // 60))) == {"quiet:5": "1"}  # the bucket of 3-5 s
    assert 0 < rdb.ttl(keys.latency(int(now // 60))) <= keys.LATENCY_TTL_SECONDS


def test_renew_extends_held_leases_and_reports_lost_ones(db: Store, rdb: redis.Redis) -> None:
    a, b = queued_job(db), queued_job(db)
    token = new_token()
    assert sorted(db.claim("aggr", 2, token, 1).ids) == sorted([a, b])
    rdb.hset("leases:aggr", b, "someone-else")
    assert db.renew("aggr", [a, b], token, 100) == [b]
    assert rdb.zscore("inflight:aggr", a) > time.time() + 50
    assert rdb.zscore("inflight:aggr", b) < time.time() + 5


def test_expired_leases_are_requeued_and_crashes_counted(db: Store, rdb: redis.Redis) -> None:
    job_id = queued_job(db, max_retries=0)
    db.claim("aggr", 1, new_token(), lease_seconds=-100)  # a worker that died long ago
    assert expired_leases(db, "aggr") == [job_id]
    assert recover(db, "aggr", job_id, crash_tolerance=1, error="lost") == 1
    assert rdb.zscore("jobs:aggr", job_id) is not None
    assert rdb.hget(keys.job(job_id), "DownloadCount") == "0"  # the first crash is forgiven
    assert recover(db, "aggr", job_id, crash_tolerance=1, error="lost") == 0  # nothing expired now


def test_leases_run_on_redis_clock_whatever_the_clocks_of_claimer_and_recoverer(
    db: Store, rdb: redis.Redis
) -> None:
    # A recoverer whose clock runs 1,000 s ahead would find the lease long expired on its own
    # clock; the lease is held for its full 30 s all the same, and renewed on Redis's clock.
    job_id = queued_job(db)
    token = new_token()
    assert db.claim("aggr", 1, token, 30).ids == [job_id]
    redis_now = float(rdb.time()[0])
    assert redis_now + 25 < rdb.zscore("inflight:aggr", job_id) <= redis_now + 31
    assert expired_leases(db, "aggr") == []
    assert recover(db, "aggr", job_id, crash_tolerance=1, error="lost", now=time.time() + 1000) == 0
    assert rdb.hget("leases:aggr", job_id) == token
    assert db.renew("aggr", [job_id], token, 60) == []
    assert rdb.zscore("inflight:aggr", job_id) > redis_now + 55


def test_a_job_that_keeps_killing_workers_fails_after_its_attempts(db: Store, rdb: redis.Redis) -> None:
    job_id = queued_job(db, max_retries=1)
    results = []
    for _ in range(4):
        claim = db.claim("aggr", 1, new_token(), lease_seconds=-1)  # its worker dies at once
        if not claim.ids:
            break
        results.append(recover(db, "aggr", job_id, crash_tolerance=1, error="worker lost"))
    assert results == [1, 1, 2]  # forgiven, counted (1 of 2 attempts), counted and out of attempts
    raw = rdb.hgetall(keys.job(job_id))
    assert raw["DownloadState"] == "Failed" and raw["DownloadMeta"] == "worker lost"
    assert raw["CallbackState"] == "Pending" and rdb.zscore(keys.CALLBACK_QUEUE, job_id) is not None
    assert rdb.lrange(keys.job_errors(job_id), 0, -1) == ["worker lost", "worker lost"]


def test_recovering_a_vanished_job_just_forgets_it(db: Store, rdb: redis.Redis) -> None:
    job_id = queued_job(db)
    db.claim("aggr", 1, new_token(), lease_seconds=-100)
    rdb.delete(keys.job(job_id))
    assert recover(db, "aggr", job_id, crash_tolerance=1, error="x") == -1
    assert rdb.zcard("inflight:aggr") == 0 and rdb.zcard("jobs:aggr") == 0


def test_callbacks_are_leased_delivered_and_scheduled_for_deletion(db: Store, rdb: redis.Redis) -> None:
    job_id = queued_job(db)
    rdb.zadd(keys.CALLBACK_QUEUE, {job_id: 1})
    token = new_token()
    claim = db.claim_callbacks(10, token, 30)
    assert claim.ids == [job_id]
    assert db.claim_callbacks(10, new_token(), 30).ids == []
    raw = claim.jobs[job_id].raw
    assert raw["CallbackCount"] == "1" and raw["CallbackState"] == "InProgress"
    where = Location(key=f"sub/{job_id[:3]}/{job_id}", bucket="theirs", region="eu-west-1").encode()
    assert db.callback_delivered(job_id, token, delete_at=123.0, location=where) == 1
    assert not rdb.exists(keys.job(job_id)), "the original's hash goes at delivery"
    kept = rdb.hgetall(keys.job_meta(job_id))  # what GET /jobs/<id> shows until the file goes
    assert json.loads(kept["Delivered"])["ID"] == job_id and float(kept["DeliveredAt"]) > 0
    assert rdb.zscore(keys.DELETION_QUEUE, job_id) == 123.0
    assert rdb.zcard(keys.CALLBACK_INFLIGHT) == 0
    assert db.deletion_targets([job_id, "NoSuchJob12345"]) == {job_id: where}
    db.deletions_done([job_id])
    assert db.deletion_targets([job_id]) == {} and rdb.zscore(keys.DELETION_QUEUE, job_id) is None
    assert not rdb.exists(keys.job_meta(job_id)), "the kept record goes with the file"


def test_options_live_beside_the_originals_hash_and_go_with_the_job(db: Store, rdb: redis.Redis) -> None:
    options = JobOptions(subpath="a/b", callback_error_type="http", callback_error_dst="http://errors")
    job = Job(id="", url="http://h/x", aggr_id="aggr", callback_type="http", callback_dst="http://cb",
              options=options)  # fmt: skip
    job_id = enqueue(db, job, Aggregation("aggr", limit=2))
    assert set(rdb.hkeys(keys.job(job_id))) <= set(JOB_FIELDS)  # the original can still read it
    claimed = db.claim("aggr", 1, new_token(), 30).jobs
    assert Job.from_hash(claimed[job_id].raw, claimed[job_id].options).options == options
    plain = enqueue(
        db, Job(id="", url="http://h/y", aggr_id="aggr", callback_url="http://cb"), Aggregation("aggr")
    )
    assert not rdb.exists(keys.job_options(plain))  # most jobs store no extra key


def test_a_delivered_job_keeps_its_errors_and_options_as_long_as_its_record(
    db: Store, rdb: redis.Redis
) -> None:
    """The delivery gives the job's other keys the record's longer life, knowing from the
    record's `Errors` and `Options` flags which exist (no command for a key that does not)."""
    options = JobOptions(subpath="a/b")
    job = Job(id="", url="http://h/x", aggr_id="aggr", callback_url="http://cb", options=options)
    job_id = enqueue(db, job, Aggregation("aggr", limit=2))
    token = new_token()
    claimed = db.claim("aggr", 1, token, 30).jobs[job_id]
    retry = Outcome(fields={"DownloadState": "Pending"}, next_step=NextStep.RETRY, due=0.0, error="oops")
    assert db.finish(Job.from_hash(claimed.raw, claimed.options), token, retry) == 1
    assert rdb.hmget(keys.job_meta(job_id), "Errors", "Options") == ["1", "1"]
    plain_id = queued_job(db)
    for job_id_ in (job_id, plain_id):
        rdb.zadd(keys.CALLBACK_QUEUE, {job_id_: 1})
    token = new_token()
    assert sorted(db.claim_callbacks(10, token, 30).ids) == sorted([job_id, plain_id])
    delete_at = time.time() + 30 * 86400  # kept longer than the record's usual week
    for job_id_ in (job_id, plain_id):
        assert db.callback_delivered(job_id_, token, delete_at=delete_at, location="x") == 1
    week = keys.JOB_META_TTL_SECONDS
    for key in (keys.job_meta(job_id), keys.job_errors(job_id), keys.job_options(job_id)):
        assert rdb.ttl(key) > week, key
    assert rdb.hget(keys.job_meta(plain_id), "Errors") is None
    assert not rdb.exists(keys.job_errors(plain_id), keys.job_options(plain_id))


def test_a_dead_notifiers_callbacks_come_back(db: Store, rdb: redis.Redis) -> None:
    job_id = queued_job(db)
    rdb.zadd(keys.CALLBACK_QUEUE, {job_id: 1})
    db.claim_callbacks(10, new_token(), lease_seconds=-100)  # a notifier that died long ago
    assert db.recover_due(crash_tolerance=1, error="x").callbacks == 1
    assert rdb.zscore(keys.CALLBACK_QUEUE, job_id) is not None
    assert rdb.hget(keys.job(job_id), "CallbackState") == State.PENDING


def test_undelivered_callback_is_retried_or_failed(db: Store, rdb: redis.Redis) -> None:
    job_id = queued_job(db)
    rdb.zadd(keys.CALLBACK_QUEUE, {job_id: 1})
    token = new_token()
    db.claim_callbacks(1, token, 30)
    assert (
        db.callback_undelivered(job_id, token, {"CallbackState": "Pending", "CallbackMeta": "e"}, 50.0) == 1
    )
    assert rdb.zscore(keys.CALLBACK_QUEUE, job_id) == 50.0
    token = new_token()
    db.claim_callbacks(1, token, 30, now=60)
    assert (
        db.callback_undelivered(job_id, token, {"CallbackState": "Failed", "CallbackMeta": "e2"}, None) == 1
    )
    assert rdb.zscore(keys.CALLBACK_QUEUE, job_id) is None
    assert rdb.hget(keys.job(job_id), "CallbackState") == "Failed"


def test_deletions_are_pushed_back_until_done(db: Store, rdb: redis.Redis) -> None:
    rdb.zadd(keys.DELETION_QUEUE, {"RIPinRedis": 1, "RIPGhost": 1, "Later": time.time() + 100})
    rdb.hset(keys.job("RIPinRedis"), "ID", "RIPinRedis")
    ids, _ = db.claim_deletions(10, retry_after=60)
    assert sorted(ids) == ["RIPGhost", "RIPinRedis"]
    ids, next_due = db.claim_deletions(10, retry_after=60)
    assert ids == []  # pushed back: a crash retries later
    assert next_due == pytest.approx(time.time() + 60, abs=5)  # the reaper sleeps until then
    db.deletions_done(["RIPinRedis", "RIPGhost"])
    assert rdb.zrange(keys.DELETION_QUEUE, 0, -1) == ["Later"]
    assert not rdb.exists(keys.job("RIPinRedis"))


def test_an_idle_aggregation_is_deleted_only_when_nothing_is_queued_or_held(
    db: Store, rdb: redis.Redis
) -> None:
    job_id = queued_job(db)
    assert not delete_idle_aggregation(db, "aggr")  # TestRemoveAggregationWithJobs
    token = new_token()
    db.claim("aggr", 1, token, 30)
    assert not delete_idle_aggregation(db, "aggr")
    job = Job.from_hash(rdb.hgetall(keys.job(job_id)))
    db.finish(job, token, Outcome(fields={"DownloadState": "Success"}, finished=True))
    assert rdb.sismember(keys.AGGREGATIONS, "aggr")
    assert delete_idle_aggregation(db, "aggr")  # TestRemoveAggregationWithNoJobs
    assert not rdb.exists("aggr:aggr")
    assert not rdb.sismember(keys.AGGREGATIONS, "aggr")


def test_stats_expire(db: Store, rdb: redis.Redis) -> None:
    db.write_stats("processor", '{"alive": 1}', 0.2)
    assert rdb.get("stats:processor") == '{"alive": 1}'
    assert 0 < rdb.pttl("stats:processor") <= 200


def test_claiming_a_callback_of_a_vanished_job_creates_nothing(db: Store, rdb: redis.Redis) -> None:
    rdb.zadd(keys.CALLBACK_QUEUE, {"GoneGoneGone12": 1})
    assert db.claim_callbacks(10, new_token(), 30).jobs == {"GoneGoneGone12": None}
    assert not rdb.exists(keys.job("GoneGoneGone12"))


def test_the_originals_lost_jobs_are_rescued_once_and_held_ones_left_alone(
    db: Store, rdb: redis.Redis
) -> None:
    lost_download = queued_job(db)
    rdb.zrem("jobs:aggr", lost_download)  # popped by the original, which then died
    rdb.hset(keys.job(lost_download), "DownloadState", "InProgress")
    lost_callback = queued_job(db)
    rdb.zrem("jobs:aggr", lost_callback)
    rdb.hset(keys.job(lost_callback), mapping={"DownloadState": "Success", "CallbackState": "InProgress"})
    held = queued_job(db)
    db.claim("aggr", 1, new_token(), 30)  # ours, leased: must not be touched
    failed = queued_job(db)
    rdb.zrem("jobs:aggr", failed)
    rdb.hset(keys.job(failed), mapping={"DownloadState": "Failed", "CallbackState": "Failed"})

    assert db.rescue_orphans() == {"download": 1, "callback": 1}
    assert rdb.zscore("jobs:aggr", lost_download) is not None
    assert rdb.hget(keys.job(lost_download), "DownloadState") == "Pending"
    assert rdb.zscore(keys.CALLBACK_QUEUE, lost_callback) is not None
    assert rdb.zscore("jobs:aggr", held) is None and rdb.zscore("inflight:aggr", held) is not None
    assert rdb.hget(keys.job(failed), "CallbackState") == "Failed"  # TestRogueCollection
    assert db.rescue_orphans() == {"download": 0, "callback": 0}


def test_callback_leases_are_renewed_while_held(db: Store, rdb: redis.Redis) -> None:
    job_id = queued_job(db)
    rdb.zadd(keys.CALLBACK_QUEUE, {job_id: 1})
    token = new_token()
    db.claim_callbacks(1, token, 1)
    assert db.renew_callbacks([job_id], token, 100) == []
    assert rdb.zscore(keys.CALLBACK_INFLIGHT, job_id) > time.time() + 50
    assert db.renew_callbacks([job_id], new_token(), 100) == [job_id]


def test_a_queue_that_gets_its_first_job_is_announced_once(db: Store, rdb: redis.Redis) -> None:
    pubsub = rdb.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(keys.WAKEUP_CHANNEL)
    assert pubsub.get_message(timeout=1) is None  # the subscription confirmation is skipped
    queued_job(db, aggr="first")
    queued_job(db, aggr="first")
    queued_job(db, aggr="second")
    got = []
    while (message := pubsub.get_message(timeout=0.5)) is not None:
        got.append(message["data"])
    pubsub.close()
    assert got == ["first", "second"]


def test_the_registry_holds_exactly_the_aggregations_with_work(db: Store, rdb: redis.Redis) -> None:
    job_id = queued_job(db, aggr="busy")
    assert db.registered_aggregations() == {"busy"}
    token = new_token()
    assert db.claim("busy", 1, token, 30).ids == [job_id]
    claim = db.claim("busy", 1, new_token(), 30)
    assert claim.empty and not claim.idle  # nothing queued, one claimed: still registered
    assert db.registered_aggregations() == {"busy"}
    db.finish(Job.from_hash(rdb.hgetall(keys.job(job_id))), token, Outcome(fields={}, finished=True))
    claim = db.claim("busy", 1, new_token(), 30)
    assert claim.idle  # nothing queued or claimed: it leaves the registry, its hash goes
    assert db.registered_aggregations() == set() and not rdb.exists("aggr:busy")
    assert rdb.zscore(keys.LEASES_DUE, "busy") is None  # no lease left to recover


def test_a_managed_idle_aggregation_leaves_the_registry_but_keeps_its_hash(
    db: Store, rdb: redis.Redis
) -> None:
    db.apply_aggregation({"ID": "managed", "Limit": "3", "Proxy": ""}, paused=False)
    rdb.sadd(keys.AGGREGATIONS, "managed")
    assert db.claim("managed", 1, new_token(), 30).idle
    assert not rdb.sismember(keys.AGGREGATIONS, "managed")
    assert rdb.hget("aggr:managed", "Limit") == "3"


def test_a_claim_reads_its_jobs_in_the_same_round_trip(db: Store, rdb: redis.Redis) -> None:
    ids = {queued_job(db, limit=5, extra=f"e{n}") for n in range(3)}
    calls_before = rdb.info("commandstats")
    claim = db.claim("aggr", 5, new_token(), 30)
    calls = rdb.info("commandstats")
    assert set(claim.jobs) == ids
    assert claim.aggregation is not None and claim.aggregation.limit == 5
    assert {c.raw["Extra"] for c in claim.jobs.values()} == {"e0", "e1", "e2"}
    assert all(c.raw["DownloadState"] == "InProgress" for c in claim.jobs.values())
    assert all(rdb.hget(keys.job(i), "DownloadState") == "InProgress" for i in ids)
    sent = {name for name in calls if calls[name]["calls"] != calls_before.get(name, {}).get("calls")}
    assert sent & {"cmdstat_evalsha", "cmdstat_eval"}, sent
    assert (
        calls.get("cmdstat_evalsha", {}).get("calls", 0)
        - calls_before.get("cmdstat_evalsha", {}).get("calls", 0)
        + calls.get("cmdstat_eval", {}).get("calls", 0)
        - calls_before.get("cmdstat_eval", {}).get("calls", 0)
        == 1
    )


def test_recovery_visits_only_aggregations_whose_leases_are_due(db: Store, rdb: redis.Redis) -> None:
    dead = queued_job(db, aggr="dead")
    alive = queued_job(db, aggr="alive")
    db.claim("dead", 1, new_token(), lease_seconds=-100)  # its worker died long ago
    db.claim("alive", 1, new_token(), lease_seconds=300)
    assert rdb.zscore(keys.LEASES_DUE, "alive") > time.time() + 250
    done = db.recover_due(crash_tolerance=1, error="lost")
    assert done.downloads == [("dead", dead, 1)] and done.callbacks == 0
    assert rdb.zscore("jobs:dead", dead) is not None
    assert rdb.zscore("inflight:alive", alive) is not None
    assert rdb.zscore(keys.LEASES_DUE, "dead") is None  # nothing claimed there any more
    assert db.recover_due(crash_tolerance=1, error="lost").downloads == []


def test_a_renewed_lease_is_filed_again_under_its_new_expiry(db: Store, rdb: redis.Redis) -> None:
    job_id = queued_job(db)
    token = new_token()
    db.claim("aggr", 1, token, lease_seconds=1)
    assert db.renew("aggr", [job_id], token, 300) == []
    rdb.zadd(keys.LEASES_DUE, {"aggr": 0})  # as if its first expiry had come
    assert db.recover_due(crash_tolerance=1, error="lost").downloads == []
    assert rdb.zscore(keys.LEASES_DUE, "aggr") == pytest.approx(rdb.zscore("inflight:aggr", job_id))


def test_queues_written_outside_the_registry_are_adopted(db: Store, rdb: redis.Redis) -> None:
    rdb.zadd("jobs:by-the-original", {"OrigJob123456": 1})
    rdb.zadd("inflight:held-before-upgrade", {"OldJob1234567": 1})
    queued_job(db, aggr="ours")
    assert db.take_adoption_turn(60) and not db.take_adoption_turn(60)  # one process per interval
    assert db.adopt_unregistered(batch=1, pause=0) == 2
    assert db.registered_aggregations() == {"by-the-original", "held-before-upgrade", "ours"}
    assert rdb.zscore(keys.LEASES_DUE, "held-before-upgrade") == 0  # checked by the next pass


def test_a_callback_queue_that_gets_its_first_callback_is_announced(db: Store, rdb: redis.Redis) -> None:
    pubsub = rdb.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(keys.CALLBACK_WAKEUP_CHANNEL)
    assert pubsub.get_message(timeout=1) is None
    first, second = queued_job(db, limit=5), queued_job(db, limit=5)
    token = new_token()
    db.claim("aggr", 2, token, 30)
    for job_id in (first, second):
        job = Job.from_hash(rdb.hgetall(keys.job(job_id)))
        outcome = Outcome(fields={"DownloadState": "Success", "CallbackState": "Pending"},
                          next_step=NextStep.CALLBACK, due=1.0, finished=True)  # fmt: skip
        assert db.finish(job, token, outcome) == 1
    got = []
    while (message := pubsub.get_message(timeout=0.5)) is not None:
        got.append(message["data"])
    pubsub.close()
    assert got == ["aggr"]  # one announcement for the burst
    assert rdb.zcard(keys.CALLBACK_QUEUE) == 2


def test_an_unreadable_job_is_set_aside_as_a_dead_letter_and_no_sweep_queues_it_again(
    db: Store, rdb: redis.Redis
) -> None:
    bad, good = queued_job(db), queued_job(db)
    rdb.hset(keys.job(bad), "Bogus", "x")  # a field the original's Job struct lacks
    token = new_token()
    assert sorted(db.claim("aggr", 2, token, 30).ids) == sorted([bad, good])
    assert db.set_aside("aggr", bad, token, reason="Field Bogus with value x was not found in Job struct",
                        url="http://127.0.0.1:9/x") is True  # fmt: skip
    letter = dead_letter(db, bad)
    assert letter is not None and letter.aggr_id == "aggr" and "Field Bogus" in letter.reason
    assert rdb.zrange("inflight:aggr", 0, -1) == [good] and not rdb.hexists("leases:aggr", bad)
    assert rdb.hget(keys.job(bad), "Bogus") == "x", "the hash stays as found, for a person to repair"
    failure = json.loads(rdb.lindex(keys.RECENT_FAILURES, 0))
    assert failure["id"] == bad and "set aside: Field Bogus" in failure["error"]
    assert db.rescue_orphans() == {"download": 0, "callback": 0}  # a dead letter is no orphan
    assert rdb.zscore("jobs:aggr", bad) is None
    assert db.set_aside("aggr", good, new_token(), reason="x") is False  # not our lease: untouched
    assert dead_letter(db, good) is None and rdb.zscore("inflight:aggr", good) is not None


def test_a_recovery_pass_says_when_the_next_lease_falls_due_and_is_scheduled_by_it(
    db: Store, rdb: redis.Redis
) -> None:
    """An idle fleet runs recovery at the scan interval, a busy one when the next lease
    expires (never sooner than the recovery interval nor later than a lease)."""
    from downloader.config.settings import Settings
    from downloader.pacing import Every
    from downloader.worker.housekeeping import recover_expired_leases

    settings = Settings(scan_interval_seconds=30, lease_seconds=60, recovery_interval_seconds=2)
    every = Every(1000)

    assert db.recover_due(crash_tolerance=1, error="lost").next_due_in is None
    recover_expired_leases(db, settings, every)
    assert every.due_in() == pytest.approx(30, abs=1)  # nothing held: the scan interval
    queued_job(db)
    db.claim("aggr", 1, new_token(), lease_seconds=12)
    assert db.recover_due(crash_tolerance=1, error="lost").next_due_in == pytest.approx(12, abs=1)
    recover_expired_leases(db, settings, every)
    assert every.due_in() == pytest.approx(12, abs=1)  # the lease's expiry
    queued_job(db, aggr="soon")
    db.claim("soon", 1, new_token(), lease_seconds=0.5)
    recover_expired_leases(db, settings, every)
    assert every.due_in() == pytest.approx(2, abs=0.5)  # no sooner than the recovery interval


def test_unchanged_stats_and_instance_key_ttls_are_not_rewritten_every_time(
    db: Store, rdb: redis.Redis
) -> None:
    from downloader.store import Instance

    db.write_stats("processor", '{"alive": 1}', 15)
    rdb.delete("stats:processor")
    db.write_stats("processor", '{"alive": 1}', 15)  # unchanged, written 0 s ago: skipped
    assert not rdb.exists("stats:processor")
    db.write_stats("processor", '{"alive": 1, "x": 1}', 15)
    assert rdb.get("stats:processor") == '{"alive": 1, "x": 1}'

    now = time.time()
    worker = Instance.here("worker", "w-1")
    db.heartbeat(worker, now=now)
    assert 0 < rdb.ttl(keys.instances("worker")) <= keys.INSTANCE_KEY_TTL_SECONDS
    rdb.persist(keys.instances("worker"))
    db.heartbeat(worker, now=now + 5)  # one ZADD
    assert rdb.ttl(keys.instances("worker")) == -1
    db.heartbeat(worker, now=now + keys.INSTANCE_KEY_TTL_SECONDS / 2 + 1)  # the key's TTL is due again
    assert 0 < rdb.ttl(keys.instances("worker")) <= keys.INSTANCE_KEY_TTL_SECONDS


def test_the_orphan_sweep_runs_its_script_only_for_orphans_page_by_page_and_once_in_the_fleet(
    db: Store, rdb: redis.Redis
) -> None:
    """At a million jobs the start-up sweep must not cost a script per job: pages are read by
    pipelines, and only jobs that no queue or lease holds are re-checked by the script."""
    expected = {"download": 0, "callback": 0}
    for n in range(60):
        job_id = queued_job(db)
        if n % 3 == 0:  # popped by the original, which died
            rdb.zrem("jobs:aggr", job_id)
            rdb.hset(keys.job(job_id), "DownloadState", "InProgress")
            expected["download"] += 1
        elif n % 5 == 0:  # its callback was being sent when the original died
            rdb.zrem("jobs:aggr", job_id)
            rdb.hset(keys.job(job_id), mapping={"DownloadState": "Success", "CallbackState": "InProgress"})
            expected["callback"] += 1
    db.claim("aggr", 2, new_token(), 30)  # held by us: not orphans
    orphans = expected["download"] + expected["callback"]

    rdb.set(keys.RESCUE_LOCK, "another notifier")
    assert db.rescue_orphans(batch=7) is None  # someone else is sweeping
    rdb.delete(keys.RESCUE_LOCK)

    def scripts_run() -> int:
        return int(rdb.info("commandstats").get("cmdstat_evalsha", {}).get("calls", 0))

    before = scripts_run()
    assert db.rescue_orphans(batch=7) == expected
    assert scripts_run() - before == orphans
    assert not rdb.exists(keys.RESCUE_LOCK)
    assert db.rescue_orphans(batch=7) == {"download": 0, "callback": 0}
    assert rdb.zcard("jobs:aggr") + rdb.zcard("inflight:aggr") == 60 - expected["callback"]


def test_downloads_in_flight_are_counted_per_live_workers_pod(db: Store) -> None:
    """What the operator ranks pods by before a scale-down: leases matched to the pod names of
    live workers (a dead worker's leases, or a worker not yet listed, count for no pod)."""
    from downloader.store import Instance

    for _ in range(6):
        queued_job(db, limit=6)
    busy, idle, unlisted = (
        Instance.here("worker", "t-busy", "pod-a"),
        Instance.here("worker", "t-idle", "pod-b"),
        "t-x",
    )
    db.heartbeat(busy)
    db.heartbeat(idle)
    db.heartbeat(Instance.here("worker", "t-dead", "pod-c"), now=time.time() - 60)  # its entry expired
    assert len(db.claim("aggr", 3, "t-busy", 30).jobs) == 3
    assert len(db.claim("aggr", 1, "t-dead", 30).jobs) == 1
    assert len(db.claim("aggr", 1, unlisted, 30).jobs) == 1
    assert db.downloads_per_host("aggr") == {"pod-a": 3}
    assert db.downloads_per_host("other") == {}
    assert Instance.here("worker", "t").host  # no pod name: the host name
