"""`downloader.client` against the real API process (and a worker and notifier where a job has
to run): enqueue one or many, idempotency keys, a job's status, retrying a failed callback,
API keys, and verifying a real callback's signature with the client's helper.
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import pytest
from support.procs import Stack, aggr_id, free_port
from support.servers import CallbackServer, FileServer, wait_until

from downloader.client import (
    ApiError,
    AsyncClient,
    Callback,
    Client,
    Enqueued,
    JobRequest,
    Unreachable,
    verify_request,
    verify_signature,
)

pytestmark = pytest.mark.integration

README = Path(__file__).resolve().parents[2] / "README.md"


def request(url: str, aggr: str, callback: str, **fields: object) -> JobRequest:
    return JobRequest(url=url, aggr_id=aggr, aggr_limit=4, callback_type="http", callback_dst=callback,
                      **fields)  # type: ignore[arg-type]  # fmt: skip


def test_a_job_enqueued_by_the_client_runs_and_its_signed_callback_and_status_read_back(
    stack: Stack, files: FileServer, callbacks: CallbackServer
) -> None:
    api, _, _ = stack.all_three(DOWNLOADER_CALLBACK_SIGNING_KEYS="old-secret,new-secret")
    with Client(api.url) as client:
        queued = client.enqueue(request(files.url("tiny.png"), aggr_id("client"), callbacks.url, extra="x-1"))
        assert isinstance(queued, Enqueued) and len(queued.id) == 14 and not queued.replayed

        callbacks.wait_for(queued.id)
        received = callbacks.delivered(queued.id)[0]
        header = {k.lower(): v for k, v in received.headers.items()}["x-downloader-signature"]
        assert verify_signature(header, received.raw, "new-secret")
        assert verify_signature(header, received.raw, ["rotated-away", "old-secret"])
        assert verify_request(received.headers, received.raw, ["new-secret"])
        assert not verify_signature(header, received.raw, "someone-else")
        assert not verify_signature(header, received.raw + b" ", "new-secret")
        assert not verify_signature(None, received.raw, "new-secret")
        assert not verify_signature(header, received.raw, "new-secret", now=10.0)  # far too old
        payload = Callback.from_body(received.raw)
        assert payload.success and payload.job_id == queued.id and payload.extra == "x-1"

        status = wait_until(
            lambda: (s := client.job(queued.id)) is not None and s.state == "delivered" and s,
            10,
            "the job to read as delivered",
        )
        assert status.download.state == "Success" and status.download.sha256 == payload.sha256
        assert status.download.size == payload.size > 0
        assert status.callback.state == "Delivered" and status.callback.delivered_at is not None
        assert status.created_at is not None and status.created_at <= status.callback.delivered_at
        assert client.job("NoSuchJob00000") is None


def test_an_idempotency_key_makes_a_second_enqueue_answer_the_first_job(stack: Stack) -> None:
    api = stack.api()
    aggr = aggr_id("client-idem")
    body = request("http://127.0.0.1:9/a.png", aggr, "http://127.0.0.1:9/cb")
    with Client(api.url) as client:
        first = client.enqueue(body, idempotency_key="order-42")
        again = client.enqueue(body, idempotency_key="order-42")
        other = client.enqueue(body, idempotency_key="order-43")
        plain = client.enqueue(body)

        assert again == Enqueued(first.id, replayed=True) and not first.replayed
        assert other.id != first.id and plain.id not in (first.id, other.id)
        with pytest.raises(ApiError) as conflict:  # the same key for another job: nothing queued
            client.enqueue(request("http://127.0.0.1:9/b.png", aggr, "http://127.0.0.1:9/cb"),
                           idempotency_key="order-42")  # fmt: skip
        assert conflict.value.status == 409
    assert stack.db.zcard(f"jobs:{aggr}") == 3


def test_enqueue_many_answers_each_job_in_order_and_one_bad_job_loses_none_of_the_others(
    stack: Stack,
) -> None:
    api = stack.api()
    aggr = aggr_id("client-many")
    good = [request(f"http://127.0.0.1:9/{n}.png", aggr, "http://127.0.0.1:9/cb") for n in range(6)]
    bad = JobRequest(url="http://127.0.0.1:9/x.png", aggr_id=aggr, aggr_limit=0)  # no limit, no callback
    batch = [*good[:3], bad, *good[3:]]
    with Client(api.url) as client:
        results = client.enqueue_many(batch, concurrency=4)
        keyed = client.enqueue_many(good[:2], idempotency_keys=["k-0", "k-1"])
        again = client.enqueue_many(good[:2], idempotency_keys=["k-0", "k-1"])
        with pytest.raises(ValueError, match="2 idempotency keys for 3 requests"):
            client.enqueue_many(good[:3], idempotency_keys=["a", "b"])

    assert [type(r).__name__ for r in results] == ["Enqueued"] * 3 + ["ApiError"] + ["Enqueued"] * 3
    failure = results[3]
    assert isinstance(failure, ApiError) and failure.status == 400
    assert failure.text.startswith("Error unmarshalling body")  # the original's text, untouched
    ids = [r.id for r in results if isinstance(r, Enqueued)]
    assert len(set(ids)) == 6
    first_ids = [r.id for r in keyed if isinstance(r, Enqueued)]
    assert [r.id for r in again if isinstance(r, Enqueued)] == first_ids
    assert all(isinstance(r, Enqueued) and r.replayed for r in again)
    assert stack.db.zcard(f"jobs:{aggr}") == 8


def test_retry_puts_a_failed_callback_back_and_it_is_delivered(
    stack: Stack, files: FileServer, callbacks: CallbackServer
) -> None:
    api, _, _ = stack.all_three(callback_max_attempts=1)
    callbacks.answer_next([500])
    with Client(api.url) as client:
        job_id = client.enqueue(request(files.url("tiny.png"), aggr_id("client-retry"), callbacks.url)).id
        wait_until(lambda: (s := client.job(job_id)) is not None and s.state == "callback_failed", 20,
                   "the callback to fail")  # fmt: skip
        with pytest.raises(ApiError) as unknown:
            client.retry("NoSuchJob00000")
        assert unknown.value.status == 400

        client.retry(job_id)
        assert callbacks.wait_for(job_id)["success"] is True
        with pytest.raises(ApiError) as not_failed:  # delivered now: nothing to retry
            client.retry(job_id)
        assert not_failed.value.status == 400


def test_the_api_key_is_sent_as_a_bearer_token(stack: Stack) -> None:
    api = stack.api(DOWNLOADER_API_KEYS="client-token=shop-")
    body = request("http://127.0.0.1:9/a.png", aggr_id("shop-1"), "http://127.0.0.1:9/cb")
    with Client(api.url, api_key="client-token") as client:
        job_id = client.enqueue(body).id
        status = client.job(job_id)
        assert status is not None and status.state == "queued" and status.aggr_id == body.aggr_id
        with pytest.raises(ApiError) as outside:
            client.enqueue(request("http://127.0.0.1:9/a.png", "blog-1", "http://127.0.0.1:9/cb"))
        assert outside.value.status == 403
    with Client(api.url) as anonymous, pytest.raises(ApiError) as refused:
        anonymous.job(job_id)
    assert refused.value.status == 401


def test_the_async_client_enqueues_many_and_reads_them_back(stack: Stack) -> None:
    api = stack.api()
    aggr = aggr_id("client-async")
    batch = [request(f"http://127.0.0.1:9/{n}.png", aggr, "http://127.0.0.1:9/cb") for n in range(5)]

    async def run() -> list[str]:
        async with AsyncClient(api.url) as client:
            results = await client.enqueue_many(batch, concurrency=3)
            ids = [r.id for r in results if isinstance(r, Enqueued)]
            replay = await client.enqueue(batch[0], idempotency_key="async-1")
            assert (await client.enqueue(batch[0], idempotency_key="async-1")).replayed
            statuses = [await client.job(job_id) for job_id in [*ids, replay.id]]
            assert all(s is not None and s.aggr_id == aggr for s in statuses)
            assert await client.job("NoSuchJob00000") is None
            return ids

    assert len(set(asyncio.run(run()))) == 5


def test_an_unreachable_api_is_an_error_of_its_own_and_is_not_retried_without_a_key() -> None:
    url = f"http://127.0.0.1:{free_port()}"  # nobody listens
    body = request("http://127.0.0.1:9/a.png", "aggr", "http://127.0.0.1:9/cb")
    with Client(url, attempts=2, timeout=2) as client:
        with pytest.raises(Unreachable):
            client.enqueue(body)
        with pytest.raises(Unreachable):  # sent twice under its key, then given up
            client.enqueue(body, idempotency_key="k")
        with pytest.raises(Unreachable):
            client.job("AnyJob00000000")


def test_the_readme_example_runs_as_written_against_the_api(
    stack: Stack, capsys: pytest.CaptureFixture[str]
) -> None:
    text = README.read_text(encoding="utf-8")
    found = re.search(r"<!-- python-client -->\s*```python\n(.*?)```", text, re.S)
    assert found, "the README lost its Python client example"
    api = stack.api()
    code = found.group(1).replace("http://127.0.0.1:8000", api.url)
    exec(compile(code, "README.md", "exec"), {})  # our own README, run on purpose (nothing is fetched)
    job_id, state = capsys.readouterr().out.split()
    assert state == "queued" and stack.db.zscore("jobs:example.org", job_id) is not None
