"""Idempotent enqueue: an `Idempotency-Key` names one job for a window, end to end.

Real API processes (and the ASGI app) on the test's real redis-server; a TCP relay that loses
one reply, in front of the API (an HTTP answer lost on its way to the client) or of Redis (a
script's reply lost on its way to the API); `downloader enqueue` run twice on one file.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import subprocess
import threading
import urllib.parse
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import redis
import redis.asyncio
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from support.procs import DOWNLOADER, Stack, aggr_id, job_body
from support.servers import wait_until
from support.tcpproxy import StallableRelay

from downloader.api.main import create_app
from downloader.config.settings import Settings
from downloader.jobs.models import Aggregation, Job
from downloader.store import AsyncStore, Enqueued, Idempotency, NotReplicated, keys, scripts

pytestmark = pytest.mark.integration

CALLBACK = "http://127.0.0.1:9/cb"
CONCURRENT_POSTS = 50


def counter(api_url: str, name: str) -> float:
    text = httpx.get(f"{api_url}/metrics", timeout=5.0, trust_env=False).text
    values = [s.value for f in text_string_to_metric_families(text) for s in f.samples if s.name == name]
    return values[0] if values else 0.0


def job_keys(rdb: redis.Redis) -> list[str]:
    return sorted(rdb.scan_iter(match=keys.JOB_PATTERN))


def record(rdb: redis.Redis, key: str, scope: str = "*") -> dict[str, str]:
    return rdb.hgetall(keys.idempotency(scope, key))


@pytest.fixture
def app(redis_url: str) -> Iterator[TestClient]:
    with TestClient(create_app(Settings(redis_url=redis_url))) as client:  # type: ignore[call-arg]
        yield client


# --- the API -------------------------------------------------------------------------


def test_fifty_concurrent_posts_with_one_key_make_one_job_and_fifty_identical_answers(
    stack: Stack, rdb: redis.Redis
) -> None:
    api = stack.api()
    aggr = aggr_id("idem-burst")
    body = json.dumps(job_body("http://127.0.0.1:9/burst", aggr, CALLBACK))
    start = threading.Barrier(CONCURRENT_POSTS)

    def post(_: int) -> tuple[int, bytes, str | None]:
        with httpx.Client(base_url=api.url, timeout=15.0, trust_env=False) as http:
            start.wait()  # all at once: the key's record is read and written by one script
            resp = http.post("/download", content=body, headers={"Idempotency-Key": "burst-1"})
            return resp.status_code, resp.content, resp.headers.get("idempotent-replayed")

    with ThreadPoolExecutor(CONCURRENT_POSTS) as pool:
        answers = list(pool.map(post, range(CONCURRENT_POSTS)))
    assert {(status, content) for status, content, _ in answers} == {answers[0][:2]}
    assert answers[0][0] == 201
    job_id = json.loads(answers[0][1])["id"]
    assert job_keys(rdb) == [keys.job(job_id)]
    assert rdb.zrange(keys.queue(aggr), 0, -1) == [job_id]
    assert [replayed for *_, replayed in answers].count("true") == CONCURRENT_POSTS - 1
    assert record(rdb, "burst-1")["id"] == job_id
    assert counter(api.url, "downloader_jobs_enqueued_total") == 1
    assert counter(api.url, "downloader_idempotent_replays_total") == CONCURRENT_POSTS - 1


def test_a_post_whose_answer_a_relay_drops_is_sent_again_and_answered_the_first_id(
    stack: Stack, rdb: redis.Redis
) -> None:
    api = stack.api()
    relay = StallableRelay("127.0.0.1", api.port)
    aggr = aggr_id("idem-relay")
    body = job_body("http://127.0.0.1:9/relayed", aggr, CALLBACK)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{relay.port}", timeout=5.0, trust_env=False) as http:
            # Without a key (as before): the client's retry makes a second job it never learns of.
            unkeyed = job_body("http://127.0.0.1:9/unkeyed", aggr_id("idem-unkeyed"), CALLBACK)
            relay.drop_reply_to(b"/unkeyed")
            with pytest.raises(httpx.TransportError):
                http.post("/download", json=unkeyed)
            http.post("/download", json=unkeyed).raise_for_status()
            assert relay.dropped == 1 and len(job_keys(rdb)) == 2
            # With one: the retry gets the job the lost answer named.
            relay.drop_reply_to(b"retry-me-1")
            with pytest.raises(httpx.TransportError):
                http.post("/download", json=body, headers={"Idempotency-Key": "retry-me-1"})
            assert relay.dropped == 2, "the API queued the job; only its answer was lost"
            first_id = record(rdb, "retry-me-1")["id"]
            retry = http.post("/download", json=body, headers={"Idempotency-Key": "retry-me-1"})
    finally:
        relay.close()
    assert retry.status_code == 201 and retry.json() == {"id": first_id}
    assert retry.headers["idempotent-replayed"] == "true"
    assert rdb.zrange(keys.queue(aggr), 0, -1) == [first_id]
    assert len(job_keys(rdb)) == 3


def test_the_same_key_with_another_body_is_409_and_queues_nothing(app: TestClient, rdb: redis.Redis) -> None:
    body = job_body("http://127.0.0.1:9/a", "idem-conflict", CALLBACK)
    first = app.post("/download", json=body, headers={"Idempotency-Key": "k-conflict"})
    assert first.status_code == 201 and "idempotent-replayed" not in first.headers
    # The same request in other words (key order, white space) is the same request.
    reordered = json.dumps(dict(reversed(body.items())), indent=2)
    again = app.post("/download", content=reordered, headers={"Idempotency-Key": "k-conflict"})
    assert again.status_code == 201 and again.content == first.content
    other = app.post("/download", json={**body, "extra": "x"}, headers={"Idempotency-Key": "k-conflict"})
    assert other.status_code == 409
    assert other.headers["content-type"].startswith("text/plain")
    assert other.text == (
        f"Idempotency-Key 'k-conflict' was used within the last 86400 s for a different request "
        f"(job {first.json()['id']}); send this job with a new key\n"
    )
    assert job_keys(rdb) == [keys.job(first.json()["id"])]
    assert 0 < rdb.ttl(keys.idempotency("*", "k-conflict")) <= 86400


@pytest.mark.parametrize(
    ("key", "reason"),
    [
        ("", "Idempotency-Key is empty"),
        ("k" * 256, "Idempotency-Key is longer than 255 characters"),
        ("two words", "Idempotency-Key may contain only visible ASCII characters (no spaces or controls)"),
        ("caf\u00e9", "Idempotency-Key may contain only visible ASCII characters (no spaces or controls)"),
    ],
    ids=["empty", "too-long", "space", "non-ascii"],
)
def test_a_key_that_cannot_be_one_is_400_and_queues_nothing(
    app: TestClient, rdb: redis.Redis, key: str, reason: str
) -> None:
    body = job_body("http://127.0.0.1:9/a", "idem-bad-key", CALLBACK)
    resp = app.post("/download", json=body, headers={"Idempotency-Key": key.encode()})  # bytes: as sent
    assert resp.status_code == 400 and resp.text == reason + "\n"
    assert job_keys(rdb) == []


def test_a_key_names_a_new_job_after_its_window(redis_url: str, rdb: redis.Redis) -> None:
    settings = Settings(redis_url=redis_url, idempotency_window_seconds=1)  # type: ignore[call-arg]
    body = job_body("http://127.0.0.1:9/a", "idem-window", CALLBACK)
    with TestClient(create_app(settings)) as app:
        first = app.post("/download", json=body, headers={"Idempotency-Key": "k-window"}).json()["id"]
        assert app.post("/download", json=body, headers={"Idempotency-Key": "k-window"}).json()["id"] == first
        wait_until(lambda: not rdb.exists(keys.idempotency("*", "k-window")), timeout=5, message="expiry")
        second = app.post("/download", json=body, headers={"Idempotency-Key": "k-window"})
    assert second.status_code == 201 and "idempotent-replayed" not in second.headers
    assert second.json()["id"] != first
    assert len(job_keys(rdb)) == 2


def test_callers_whose_keys_reach_other_aggregations_do_not_share_idempotency_keys(
    redis_url: str, rdb: redis.Redis
) -> None:
    settings = Settings(  # type: ignore[call-arg]
        redis_url=redis_url, api_keys="alpha=shop-a,alpha2=shop-a,beta=shop-b"
    )
    with TestClient(create_app(settings)) as app:

        def post(token: str, aggr: str) -> httpx.Response:
            body = job_body("http://127.0.0.1:9/same", aggr, CALLBACK)
            headers = {"Authorization": f"Bearer {token}", "Idempotency-Key": "order-42"}
            return app.post("/download", json=body, headers=headers)

        a = post("alpha", "shop-a-1")
        b = post("beta", "shop-b-1")  # another tenant's key: a job of its own, not a 409
        rotated = post("alpha2", "shop-a-1")  # a second token with alpha's reach: alpha's job
    assert a.status_code == b.status_code == rotated.status_code == 201
    assert a.json()["id"] != b.json()["id"]
    assert rotated.json() == a.json() and rotated.headers["idempotent-replayed"] == "true"
    assert len(job_keys(rdb)) == 2
    assert len(list(rdb.scan_iter(match=keys.IDEMPOTENCY_PREFIX + "*"))) == 2


# --- the store -----------------------------------------------------------------------


def a_job(aggr: str = "idem-store") -> tuple[Job, Aggregation]:
    return Job(id="", url="http://127.0.0.1:9/x", aggr_id=aggr, callback_url=CALLBACK), Aggregation(aggr, 2)


def test_a_keyed_enqueue_whose_redis_reply_is_lost_makes_one_job_and_answers_it_as_new(
    redis_url: str, rdb: redis.Redis
) -> None:
    rdb.script_load(scripts.ENQUEUE)  # a first EVALSHA answered NOSCRIPT would hide the lost reply
    parts = urllib.parse.urlsplit(redis_url)
    relay = StallableRelay(parts.hostname or "127.0.0.1", parts.port or 6379)
    sha = hashlib.sha1(scripts.ENQUEUE.encode()).hexdigest().encode()

    async def enqueue() -> Enqueued | None:
        client = redis.asyncio.Redis.from_url(
            f"redis://127.0.0.1:{relay.port}/0",
            decode_responses=True,
            retry_on_timeout=True,
            socket_timeout=0.5,
        )
        store = AsyncStore(client)
        try:
            return await store.enqueue(*a_job(), Idempotency("*", "lost-1", 60))
        finally:
            await client.aclose()

    try:
        relay.drop_reply_to(sha, hang=True)
        queued = asyncio.run(enqueue())
    finally:
        relay.close()
    assert relay.dropped == 1
    assert queued is not None and not queued.replayed
    assert job_keys(rdb) == [keys.job(queued.id)]
    assert record(rdb, "lost-1")["id"] == queued.id


def test_a_job_too_few_replicas_hold_is_undone_with_its_key(redis_url: str, rdb: redis.Redis) -> None:
    async def enqueue() -> None:
        client = redis.asyncio.Redis.from_url(redis_url, decode_responses=True)
        store = AsyncStore(client, wait_replicas=1, wait_timeout_ms=50)  # this Redis has none
        try:
            for _ in range(2):  # the retry after the 503 is tried again, not answered from a record
                with pytest.raises(NotReplicated):
                    await store.enqueue(*a_job(), Idempotency("*", "held-1", 60))
        finally:
            await client.aclose()

    asyncio.run(enqueue())
    assert job_keys(rdb) == []
    assert record(rdb, "held-1") == {}


def test_a_replay_waits_for_no_replica_its_first_request_waited_for(redis_url: str, rdb: redis.Redis) -> None:
    async def enqueue() -> tuple[Enqueued | None, Enqueued | None]:
        client = redis.asyncio.Redis.from_url(redis_url, decode_responses=True)
        key = Idempotency("*", "replayed-1", 60)
        try:
            first = await AsyncStore(client).enqueue(*a_job(), key)
            # No replica would acknowledge a new job; the replay queues nothing, so holds nothing.
            again = await AsyncStore(client, wait_replicas=1, wait_timeout_ms=50).enqueue(*a_job(), key)
            return first, again
        finally:
            await client.aclose()

    first, again = asyncio.run(enqueue())
    assert first is not None and again is not None
    assert again == (first.id, True, False)
    assert job_keys(rdb) == [keys.job(first.id)]


# --- downloader enqueue ----------------------------------------------------------------


def enqueue(stack: Stack, path: Path, aggr: str, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            *DOWNLOADER,
            "enqueue",
            str(path),
            "--aggr",
            aggr,
            "--limit",
            "4",
            "--callback-url",
            CALLBACK,
            *extra,
        ],
        env=stack.env(),
        cwd=stack.tmp_path,
        text=True,
        capture_output=True,
        timeout=120,
    )


def ids_file(path: Path) -> dict[str, str]:
    return {line.split("\t")[0]: line.split("\t")[2] for line in path.read_text().splitlines()}


@pytest.mark.parametrize("via_api", [False, True], ids=["to-redis", "via-api"])
def test_enqueue_run_again_after_a_crash_queues_no_line_twice(
    stack: Stack, rdb: redis.Redis, via_api: bool
) -> None:
    api = ["--api", stack.api().url] if via_api else []
    aggr = aggr_id("idem-cli")
    urls = stack.tmp_path / "urls.txt"
    lines = [f"http://127.0.0.1:9/file-{n}" for n in range(300)]
    # The crash: the first run got through the first 120 lines only (the file as it was read
    # is what the keys hash, with each line's number and text: more lines do not change them).
    urls.write_text("\n".join(lines[:120]) + "\n")
    first = enqueue(stack, urls, aggr, *api, "--ids", "first.txt")
    assert first.returncode == 0, first.stderr
    assert first.stdout.startswith("total 120, queued 120, rejected 0,")
    urls.write_text("\n".join(lines) + "\n")
    again = enqueue(stack, urls, aggr, *api, "--ids", "again.txt")
    assert again.returncode == 0, again.stderr
    summary = again.stdout.splitlines()
    assert summary[0].startswith("total 300, queued 300, rejected 0,")
    assert summary[1] == "  120 of them were queued already, under the same idempotency keys: not again"
    assert rdb.zcard(keys.queue(aggr)) == 300 and len(job_keys(rdb)) == 300
    earlier, later = ids_file(stack.tmp_path / "first.txt"), ids_file(stack.tmp_path / "again.txt")
    assert {n: later[n] for n in earlier} == earlier, "each line keeps its first run's job"
    # The same lines with other options (another aggregation, another extra) are other jobs.
    other = enqueue(stack, urls, aggr, *api, "--extra", "changed")
    assert other.returncode == 0 and other.stdout.startswith("total 300, queued 300, rejected 0,")
    assert "queued already" not in other.stdout and len(job_keys(rdb)) == 600
    # Without keys, as before: every line again.
    plain = enqueue(stack, urls, aggr, *api, "--no-idempotency")
    assert plain.returncode == 0 and len(job_keys(rdb)) == 900


def test_enqueue_via_an_api_whose_answer_is_lost_sends_it_again_under_its_key(
    stack: Stack, rdb: redis.Redis
) -> None:
    api = stack.api()
    relay = StallableRelay("127.0.0.1", api.port)
    aggr = aggr_id("idem-cli-relay")
    urls = stack.tmp_path / "urls.txt"
    urls.write_text("".join(f"http://127.0.0.1:9/lost-{n}\n" for n in range(20)))
    relay.drop_reply_to(b"/lost-7")
    try:
        out = enqueue(stack, urls, aggr, "--api", f"http://127.0.0.1:{relay.port}")
    finally:
        relay.close()
    assert relay.dropped == 1
    assert out.returncode == 0, out.stdout + out.stderr
    # The line whose answer was lost was sent again and answered its job: queued once.
    assert (
        out.stdout.splitlines()[1]
        == "  1 of them were queued already, under the same idempotency keys: not again"
    )
    assert out.stdout.startswith("total 20, queued 20, rejected 0,")
    assert rdb.zcard(keys.queue(aggr)) == 20 and len(job_keys(rdb)) == 20


def test_enqueue_killed_midway_and_run_again_queues_each_line_once(stack: Stack, rdb: redis.Redis) -> None:
    api = stack.api()
    relay = StallableRelay("127.0.0.1", api.port)
    aggr = aggr_id("idem-cli-kill")
    urls = stack.tmp_path / "urls.txt"
    urls.write_text("".join(f"http://127.0.0.1:9/killed-{n}\n" for n in range(2000)))
    argv = [*DOWNLOADER, "enqueue", str(urls), "--aggr", aggr, "--limit", "4", "--callback-url", CALLBACK]
    crashed = subprocess.Popen(
        [*argv, "--api", f"http://127.0.0.1:{relay.port}"],
        env=stack.env(),
        cwd=stack.tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_until(lambda: rdb.zcard(keys.queue(aggr)) >= 200, 60, "the first run to queue 200 jobs")
        relay.stall()  # its POSTs in flight go nowhere: it dies mid-file, some answers unread
        crashed.kill()
        crashed.wait(10)
    finally:
        relay.close()
    before = rdb.zcard(keys.queue(aggr))
    assert 200 <= before < 2000
    again = enqueue(stack, urls, aggr, "--api", api.url)
    assert again.returncode == 0, again.stdout + again.stderr
    assert again.stdout.startswith("total 2000, queued 2000, rejected 0,")
    replayed = again.stdout.splitlines()[1]
    assert replayed.endswith(" of them were queued already, under the same idempotency keys: not again")
    # At least those counted after the kill (POSTs that had reached the API still finish).
    assert before <= int(replayed.split()[0]) < 2000
    assert rdb.zcard(keys.queue(aggr)) == 2000 and len(job_keys(rdb)) == 2000
