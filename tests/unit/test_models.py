"""Job and aggregation hashes in the original's encoding (reference 2.1-2.2), and the payload."""

from __future__ import annotations

import json

import pytest

from downloader.delivery import notifying
from downloader.jobs.models import (
    JOB_FIELDS,
    Aggregation,
    CorruptJobError,
    DownloadResult,
    Job,
    State,
    join_url,
)

GO_HASH = {
    "ID": "NSb4FOAs9fVaQw",
    "URL": "http://h/a.png",
    "AggrID": "ag",
    "MaxRetries": "null",
    "DownloadState": "Pending",
    "DownloadCount": "0",
    "DownloadMeta": "",
    "CallbackState": "",
    "CallbackType": "",
    "CallbackDst": "",
    "CallbackURL": "http://cb",
    "DownloadURL": "",
    "CallbackMeta": "",
    "CallbackCount": "0",
    "Extra": "x",
    "ResponseCode": "0",
    "MimeType": "",
    "ExtractImageSize": "0",
    "ImageSize": "",
    "DownloadTimeout": "0",
    "RequestHeaders": "null",
    "S3Bucket": "",
    "S3Region": "",
}


def test_a_hash_written_by_the_original_round_trips_unchanged() -> None:
    job = Job.from_hash(GO_HASH)
    assert job.max_retries is None and job.request_headers is None and job.callback_url == "http://cb"
    assert job.to_hash() == GO_HASH
    assert list(job.to_hash()) == list(JOB_FIELDS)


def test_unknown_fields_make_a_job_unreadable_like_the_original() -> None:
    with pytest.raises(CorruptJobError, match="Field Bogus with value 1 was not found in Job struct"):
        Job.from_hash({**GO_HASH, "Bogus": "1"})


def test_headers_and_numbers_decode() -> None:
    job = Job.from_hash(
        {**GO_HASH, "RequestHeaders": '{"A":"b"}', "MaxRetries": "3", "ExtractImageSize": "1"}
    )
    assert job.request_headers == {"A": "b"} and job.max_retries == 3 and job.extract_image_size
    assert json.loads(job.to_hash()["RequestHeaders"]) == {"A": "b"}


def test_the_empty_job_string_is_the_originals() -> None:
    assert Job(id="", url="", aggr_id="", download_state=State.NONE).job_string() == (
        "Job{ID:, Aggr:, URL:, ExtractImageSize:false, ImageSize: , callback_url:, callback_type:, "
        "callback_dst:, Timeout:0, RequestHeaders:map[], DownloadURL:}"
    )


@pytest.mark.parametrize(
    "base,expected",
    [
        ("http://localhost/foo", "http://localhost/foo/6QE/6QEywYsd0jrKAg"),
        ("http://localhost/foo/", "http://localhost/foo/6QE/6QEywYsd0jrKAg"),
        ("http://localhost", "http://localhost/6QE/6QEywYsd0jrKAg"),
        ("http://h/files?sig=1", "http://h/files/6QE/6QEywYsd0jrKAg?sig=1"),
    ],
)
def test_download_url_joins_like_go_path_join(base: str, expected: str) -> None:
    assert join_url(base, "6QE/6QEywYsd0jrKAg") == expected


def test_download_url_is_computed_so_retries_cannot_grow_it() -> None:
    job = Job.from_hash(
        {**GO_HASH, "ID": "6QEywYsd0jrKAg", "DownloadState": "Success", "DownloadURL": "http://localhost/foo"}
    )
    first = job.public_download_url()
    stored = job.to_hash()["DownloadURL"]
    again = Job.from_hash(job.to_hash()).public_download_url()
    assert first == again == "http://localhost/foo/6QE/6QEywYsd0jrKAg"
    assert stored == "http://localhost/foo"


def test_failed_jobs_have_no_download_url() -> None:
    job = Job.from_hash({**GO_HASH, "DownloadState": "Failed", "DownloadURL": "http://localhost/foo"})
    assert job.public_download_url() == ""


def test_payload_has_the_originals_ten_keys_in_order() -> None:
    job = Job.from_hash(
        {
            **GO_HASH,
            "ID": "6QEywYsd0jrKAg",
            "DownloadState": "Success",
            "Extra": "foobar",
            "ImageSize": "10x10",
            "DownloadURL": "http://localhost/foo",
            "ResponseCode": "200",
        }
    )
    measured = DownloadResult(
        sha256="ab" * 32, size=1234, content_type="image/png", final_url="http://h/b.png"
    )
    body = notifying.encode(notifying.payload(job, measured))
    assert body == (
        b'{"success":true,"error":"","extra":"foobar","image_size":"10x10","resource_url":"http://h/a.png",'
        b'"download_url":"http://localhost/foo/6QE/6QEywYsd0jrKAg","job_id":"6QEywYsd0jrKAg",'
        b'"response_code":200,"delivered":true,"delivery_error":"",'
        b'"sha256":"' + b"ab" * 32 + b'","size":1234,"content_type":"image/png","final_url":"http://h/b.png",'
        b'"attempts":0}'
    )


def test_a_failed_download_reports_nothing_measured_but_its_attempts() -> None:
    job = Job.from_hash({**GO_HASH, "ID": "6QEywYsd0jrKAg", "DownloadState": "Failed", "DownloadCount": "3"})
    measured = DownloadResult(
        sha256="ab" * 32, size=1234, content_type="image/png", final_url="http://h/b.png"
    )
    tail = {k: v for k, v in notifying.payload(job, measured).items() if k not in ORIGINAL_KEYS}
    assert tail == {"sha256": "", "size": 0, "content_type": "", "final_url": "", "attempts": 3}


def test_a_result_that_cannot_be_read_is_empty_not_an_error() -> None:
    assert DownloadResult.decode("not json") == DownloadResult() == DownloadResult.decode(None)
    measured = DownloadResult(sha256="x", size=1, content_type="a/b", final_url="u")
    assert DownloadResult.decode(measured.encode()) == measured


ORIGINAL_KEYS = ["success", "error", "extra", "image_size", "resource_url", "download_url", "job_id",
                 "response_code", "delivered", "delivery_error"]  # fmt: skip


def test_the_legacy_callback_url_wins_over_type_and_destination() -> None:
    job = Job.from_hash({**GO_HASH, "CallbackType": "kafka", "CallbackDst": "topic"})
    assert notifying.destination(job) == ("http", "http://cb")
    job.callback_url = ""
    assert notifying.destination(job) == ("kafka", "topic")


@pytest.mark.parametrize(
    "raw,limit,proxy",
    [
        ({}, 4, ""),  # no hash: the original's default aggregation
        ({"ID": "a", "Limit": "8"}, 8, ""),  # written without ExpiresAt
        ({"ID": "a", "Limit": "2", "Proxy": "http://p:3128", "ExpiresAt": ""}, 2, "http://p:3128"),
        ({"ID": "a", "Limit": "zero"}, 4, ""),
    ],
)
def test_aggregations_of_the_original_are_read(raw: dict[str, str], limit: int, proxy: str) -> None:
    aggr = Aggregation.from_hash("a", raw)
    assert (aggr.limit, aggr.proxy) == (limit, proxy)
