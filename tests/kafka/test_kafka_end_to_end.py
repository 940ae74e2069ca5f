"""Kafka callbacks end to end: real api, worker and notifier processes, a real Redis and broker.

Jobs ask for `callback_type: kafka` with their topic as `callback_dst`; the tests read the topic
back as a client would and check the original's ten-key payload (reference 4.3) and ours after
it, the signature headers, the failure path of a missing topic, and that callbacks made while
the broker is down all arrive after it comes back.
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from typing import Any

import pytest
from support.kafka_broker import KafkaBroker, Record
from support.procs import DOWNLOAD_URL_BASE, PAYLOAD_KEYS, Stack, aggr_id
from support.servers import FileServer, wait_until

from downloader.delivery import signing

pytestmark = [pytest.mark.kafka, pytest.mark.integration]


def kafka_job(url: str, topic: str, **fields: Any) -> dict[str, Any]:
    return {
        "url": url,
        "aggr_id": aggr_id("kafka"),
        "aggr_limit": 4,
        "callback_type": "kafka",
        "callback_dst": topic,
        **fields,
    }


def by_job(records: list[Record]) -> dict[str, dict[str, Any]]:
    """Payloads by the message key, checking that key and payload name the same job."""
    payloads: dict[str, dict[str, Any]] = {}
    for record in records:
        payload = json.loads(record.value or b"")
        assert record.key == payload["job_id"].encode()
        payloads[payload["job_id"]] = payload
    return payloads


def test_kafka_callbacks_carry_the_originals_payload_for_success_and_failure(
    stack: Stack, files: FileServer, kafka: KafkaBroker, topic: str
) -> None:
    api, _, _ = stack.all_three()
    found_url, missing_url = files.url("sample-1.jpg"), files.url("does-not-exist.jpg")
    found = api.post_job(kafka_job(found_url, topic, extra="foobar", mime_type="image/jpeg"))
    missing = api.post_job(kafka_job(missing_url, topic))

    payloads = by_job(kafka.consume(topic, 2, timeout=30))

    assert set(payloads) == {found, missing}
    assert list(payloads[found]) == PAYLOAD_KEYS
    assert payloads[found] == {
        "success": True,
        "error": "",
        "extra": "foobar",
        "image_size": "",
        "resource_url": found_url,
        "download_url": f"{DOWNLOAD_URL_BASE}/{found[:3]}/{found}",
        "job_id": found,
        "response_code": 200,
        "delivered": True,
        "delivery_error": "",
        "sha256": hashlib.sha256(files.content("sample-1.jpg")).hexdigest(),
        "size": len(files.content("sample-1.jpg")),
        "content_type": "image/jpeg",
        "final_url": found_url,
        "attempts": 1,
    }
    failure = payloads[missing]
    assert list(failure) == PAYLOAD_KEYS
    assert "404 Not Found" in failure["error"]
    assert {k: v for k, v in failure.items() if k != "error"} == {
        "success": False,
        "extra": "",
        "image_size": "",
        "resource_url": missing_url,
        "download_url": "",
        "job_id": missing,
        "response_code": 404,
        "delivered": True,
        "delivery_error": "",
        "sha256": "",
        "size": 0,
        "content_type": "",
        "final_url": "",
        "attempts": 1,
    }
    # Delivered means done: the jobs are deleted, and counted once each.
    wait_until(lambda: not stack.db.exists(f"job:{found}", f"job:{missing}"), 10, "delivered jobs to go")
    wait_until(lambda: stack.stats("notifier").get("successfulCallbacks") == 2, 10, "the stats to count 2")
    assert kafka.message_count(topic) == 2


def test_a_missing_topic_fails_the_callback_with_librdkafkas_error(
    stack: Stack, files: FileServer, kafka: KafkaBroker
) -> None:
    api, _, _ = stack.all_three(callback_max_attempts=1)
    job_id = api.post_job(kafka_job(files.url("tiny.png"), f"missing-{uuid.uuid4().hex}"))

    job = wait_until(
        lambda: (h := stack.db.hgetall(f"job:{job_id}")).get("CallbackState") == "Failed" and h,
        30,
        "the callback to fail",
    )

    assert "Unknown topic" in job["CallbackMeta"]
    wait_until(lambda: stack.stats("notifier").get("unknownTopicOrPartition") == 1, 10, "the stat")


def test_callbacks_made_while_the_broker_is_down_all_arrive_once_it_is_back(
    stack: Stack, files: FileServer, kafka: KafkaBroker, topic: str
) -> None:
    # Short attempts, many of them: the callbacks keep failing until the broker returns.
    api, _, _ = stack.all_three(
        callback_timeout_seconds=2, callback_max_attempts=100, callback_backoff_seconds=0.1
    )
    before = [api.post_job(kafka_job(files.url("tiny.png"), topic, extra=f"b{i}")) for i in range(5)]
    wait_until(lambda: kafka.message_count(topic) == 5, 30, "the first 5 callbacks")

    kafka.stop()
    try:
        during = [api.post_job(kafka_job(files.url("tiny.png"), topic, extra=f"d{i}")) for i in range(10)]
        # Every one of them fails, with librdkafka's timeout as the reason (seen between
        # attempts: an attempt in progress clears it).
        timed_out: set[str] = set()

        def all_timed_out() -> bool:
            timed_out.update(
                j for j in during if "timed out" in (stack.db.hget(f"job:{j}", "CallbackMeta") or "")
            )
            return timed_out == set(during)

        wait_until(all_timed_out, 60, "each callback to time out at least once")
    finally:
        started = time.monotonic()
        kafka.start()

    wait_until(lambda: kafka.message_count(topic) >= 15, 60, "all 15 callbacks on the topic")
    recovered_in = time.monotonic() - started
    payloads = by_job(kafka.consume(topic, 15, timeout=30))
    assert set(payloads) == set(before) | set(during)
    assert kafka.message_count(topic) == 15, "a callback was sent twice"
    assert all(payloads[j]["success"] and payloads[j]["extra"] == f"d{i}" for i, j in enumerate(during))
    wait_until(lambda: not any(stack.db.exists(f"job:{j}") for j in during), 10, "delivered jobs to go")
    assert recovered_in < 45


def test_kafka_callbacks_carry_the_signature_and_delivery_headers(
    stack: Stack, files: FileServer, kafka: KafkaBroker, topic: str
) -> None:
    api, _, _ = stack.all_three(DOWNLOADER_CALLBACK_SIGNING_KEYS="kafka-secret")
    job_id = api.post_job(kafka_job(files.url("tiny.png"), topic))

    (record,) = kafka.consume(topic, 1, timeout=30)
    headers = {name: value.decode() for name, value in record.headers}
    assert headers["X-Downloader-Delivery"] == f"{job_id}.1"
    assert signing.verify(headers["X-Downloader-Signature"], record.value or b"", ["kafka-secret"])
    assert not signing.verify(headers["X-Downloader-Signature"], record.value or b"", ["other"])
