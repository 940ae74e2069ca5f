"""S3 storage and SQS callbacks through real processes: api, worker and notifier on a real
Redis, files from a local server, objects and messages in moto's server.

What the original did wrong here is checked too: per-job bucket errors reported as success
(bug 10.1.3), a plain-string `extra` failing the job, per-job objects never deleted.
"""

from __future__ import annotations

import json
import urllib.parse
from pathlib import Path
from typing import Any

import pytest
from support.moto_server import MotoServer, unique_name
from support.procs import DOWNLOAD_URL_BASE, PAYLOAD_KEYS, Stack, aggr_id, job_body
from support.servers import CallbackServer, FileServer, wait_until

from downloader.store import keys

pytestmark = [pytest.mark.aws, pytest.mark.integration]

REGION = "us-east-1"


def s3_settings(moto: MotoServer, bucket: str, **more: Any) -> dict[str, Any]:
    return {
        "DOWNLOADER_STORAGE_BACKEND": "s3",
        "DOWNLOADER_S3_BUCKET": bucket,
        "DOWNLOADER_S3_REGION": REGION,
        "DOWNLOADER_S3_ENDPOINT_URL": moto.url,
        "DOWNLOADER_SQS_ENDPOINT_URL": moto.url,
        **more,
    }


def objects(s3: Any, bucket: str) -> list[str]:
    return [o["Key"] for o in s3.list_objects_v2(Bucket=bucket).get("Contents", [])]


def test_a_download_goes_to_the_configured_bucket_with_its_type_and_is_deleted_after_the_callback(
    stack: Stack, files: FileServer, callbacks: CallbackServer, moto: MotoServer, s3: Any, bucket: str
) -> None:
    api, _, _ = stack.all_three(**s3_settings(moto, bucket, DOWNLOADER_DELETION_DELAY_SECONDS="2"))
    job_id = api.post_job(job_body(files.url("sample-1.jpg"), aggr_id(), callbacks.url, extra="foobar"))

    payload = callbacks.wait_for(job_id)
    key = f"{job_id[:3]}/{job_id}"
    assert payload["success"] is True and payload["download_url"] == f"{DOWNLOAD_URL_BASE}/{key}"
    stored = s3.get_object(Bucket=bucket, Key=key)
    assert stored["Body"].read() == files.content("sample-1.jpg")
    assert stored["ContentType"] == "image/jpeg"  # sniffed, not what the server claimed
    assert stored["Metadata"] == {"extra": "foobar"}  # a plain-string extra no longer fails the job
    assert list((stack.tmp_path / "tmp").glob("*")) == []  # the temp file went after the upload
    wait_until(lambda: key not in objects(s3, bucket), timeout=20, message="the reaper to delete the object")


def test_a_jobs_own_bucket_gets_its_extra_as_metadata_and_keeps_the_object_after_retention(
    stack: Stack, files: FileServer, moto: MotoServer, s3: Any, bucket: str, rdb: Any
) -> None:
    theirs = unique_name("theirs")
    s3.create_bucket(Bucket=theirs)
    api, _, _ = stack.all_three(**s3_settings(moto, bucket, DOWNLOADER_JOB_RETENTION_SECONDS="2"))
    extra = json.dumps({"shop": "λ-store", "count": 7.9, "flag": True, "nested": {"a": 1}})
    body = job_body(files.url("tiny.png"), aggr_id(), s3_bucket=theirs, s3_region=REGION, extra=extra)
    job_id = api.post_job(body)  # no callback: allowed with a bucket, as in the original

    key = f"{job_id[:3]}/{job_id}"
    wait_until(lambda: key in objects(s3, theirs), message="the object in the job's bucket")
    head = s3.head_object(Bucket=theirs, Key=key)
    assert head["ContentType"] == "image/png"
    assert head["Metadata"] == {"shop": urllib.parse.quote("λ-store", safe=""), "count": "7"}
    assert objects(s3, bucket) == []  # the configured bucket was not used
    # Retention: the job's records go, the client's object stays.
    wait_until(lambda: not rdb.exists(keys.job(job_id)), timeout=20, message="the job to be cleaned up")
    assert key in objects(s3, theirs)
    assert rdb.zscore(keys.DELETION_QUEUE, job_id) is None


def test_a_subpath_is_part_of_the_key_and_the_url_and_the_reaper_finds_it_in_the_jobs_bucket(
    stack: Stack, files: FileServer, callbacks: CallbackServer, moto: MotoServer, s3: Any, bucket: str
) -> None:
    theirs = unique_name("theirs")
    s3.create_bucket(Bucket=theirs)
    api, _, _ = stack.all_three(**s3_settings(moto, bucket, DOWNLOADER_DELETION_DELAY_SECONDS="2"))
    body = job_body(files.url("tiny.png"), aggr_id(), callbacks.url, s3_bucket=theirs, s3_region=REGION,
                    subpath="shop//2026")  # fmt: skip
    job_id = api.post_job(body)

    payload = callbacks.wait_for(job_id)
    key = f"shop/2026/{job_id[:3]}/{job_id}"
    assert payload["download_url"] == f"{DOWNLOAD_URL_BASE}/{key}"
    assert s3.get_object(Bucket=theirs, Key=key)["Body"].read() == files.content("tiny.png")
    wait_until(
        lambda: objects(s3, theirs) == [], timeout=20, message="the reaper to delete from the job's bucket"
    )


def test_an_upload_to_a_missing_bucket_fails_the_job_and_says_so(
    stack: Stack, files: FileServer, callbacks: CallbackServer, moto: MotoServer, bucket: str
) -> None:
    api, _, _ = stack.all_three(**s3_settings(moto, bucket))
    body = job_body(files.url("tiny.png"), aggr_id(), callbacks.url, s3_bucket="no-such-bucket",
                    s3_region=REGION, extra='{"a": "b"}')  # fmt: skip
    job_id = api.post_job(body)

    payload = callbacks.wait_for(job_id)
    assert payload["success"] is False  # the original reported this as a success
    assert payload["error"].startswith("Error while storing file to job specified AWS S3 bucket, ")
    assert "NoSuchBucket" in payload["error"] and payload["error"].endswith(
        "retriable: false, internal: false"
    )
    assert payload["download_url"] == ""


def test_a_file_above_the_multipart_threshold_arrives_whole(
    stack: Stack, files: FileServer, callbacks: CallbackServer, moto: MotoServer, s3: Any, bucket: str
) -> None:
    big = bytes(range(256)) * (12 * 4096)  # 12 MiB
    files.add_file("big.bin", big)
    settings = s3_settings(moto, bucket, DOWNLOADER_S3_MULTIPART_THRESHOLD_BYTES=str(5 << 20))
    api, _, _ = stack.all_three(**settings)
    job_id = api.post_job(job_body(files.url("big.bin"), aggr_id(), callbacks.url))

    assert callbacks.wait_for(job_id, timeout=60)["success"] is True
    stored = s3.get_object(Bucket=bucket, Key=f"{job_id[:3]}/{job_id}")
    assert stored["ETag"].strip('"').endswith("-3")  # three parts of 5, 5 and 2 MiB
    assert stored["Body"].read() == big


def test_callbacks_to_sqs_and_failures_to_their_error_destination(
    stack: Stack, files: FileServer, callbacks: CallbackServer, moto: MotoServer, bucket: str, sqs: Any
) -> None:
    queue = sqs.create_queue(QueueName=unique_name("done"))["QueueUrl"]
    api, _, _ = stack.all_three(**s3_settings(moto, bucket, DOWNLOADER_SQS_REGION=REGION))
    aggr = aggr_id()
    ok = api.post_job(job_body(files.url("tiny.png"), aggr, callback_type="sqs", callback_dst=queue,
                               callback_error_type="http", callback_error_dst=callbacks.url))  # fmt: skip
    bad = api.post_job(job_body(files.url("missing.png"), aggr, callback_type="sqs", callback_dst=queue,
                                callback_error_type="http", callback_error_dst=callbacks.url))  # fmt: skip

    failure = callbacks.wait_for(bad)
    assert failure["success"] is False and failure["response_code"] == 404
    messages = wait_until(lambda: sqs.receive_message(QueueUrl=queue, WaitTimeSeconds=1).get("Messages"),
                          message="the SQS callback")  # fmt: skip
    assert len(messages) == 1
    success = json.loads(messages[0]["Body"])
    assert success["job_id"] == ok and success["success"] is True
    assert list(success) == PAYLOAD_KEYS
    assert callbacks.for_job(ok) == []  # a success is not reported to the error destination


def test_a_callback_to_a_missing_queue_is_retried_then_failed_and_counted(
    stack: Stack, files: FileServer, moto: MotoServer, bucket: str, rdb: Any
) -> None:
    api, _, _ = stack.all_three(**s3_settings(moto, bucket))
    missing = f"{moto.url}/123456789012/{unique_name('nope')}"
    job_id = api.post_job(
        job_body(files.url("tiny.png"), aggr_id(), callback_type="sqs", callback_dst=missing)
    )

    wait_until(
        lambda: rdb.hget(keys.job(job_id), "CallbackState") == "Failed", message="the callback to fail"
    )
    assert rdb.hget(keys.job(job_id), "CallbackCount") == "2"
    assert "SendMessage to" in rdb.hget(keys.job(job_id), "CallbackMeta")

    def unknown() -> int:
        return int(json.loads(rdb.get("stats:notifier") or "{}").get("unknownTopicOrPartition", 0))

    wait_until(lambda: unknown() >= 2, message="both attempts counted as an unknown destination")
    assert unknown() == 2


def test_the_worker_refuses_to_start_on_a_bucket_it_cannot_use(
    stack: Stack, moto: MotoServer, tmp_path: Path
) -> None:
    worker = stack.worker(wait=False, **s3_settings(moto, "bucket-that-does-not-exist"))
    assert worker.wait(timeout=30) != 0
    assert "bucket-that-does-not-exist" in worker.output()
