"""What a download attempt leads to (reference 3.4): retry, fail, or give back uncounted."""

from __future__ import annotations

import pytest

from downloader.delivery.storage import Location
from downloader.errors import DownloadError, FailureReason, Interrupted
from downloader.jobs.models import Job, JobOptions, State
from downloader.store import NextStep
from downloader.worker.attempts import decide, success

NOW = 1_000_000.0
RETENTION = 7 * 86400.0


def job(**fields: object) -> Job:
    j = Job(id="AbCdEfGhIjKlMn", url="http://h/x", aggr_id="ag", callback_url="http://cb")
    for k, v in fields.items():
        setattr(j, k, v)
    return j


def server_error() -> DownloadError:
    return DownloadError(
        "processing response",
        "Received status code 500 Internal Server Error",
        reason=FailureReason.HTTP_5XX,
        retriable=True,
        response_code=500,
    )


def not_found() -> DownloadError:
    return DownloadError(
        "processing response",
        "Received status code 404 Not Found",
        reason=FailureReason.HTTP_4XX,
        retriable=False,
        response_code=404,
    )


def test_error_text_keeps_the_original_shape() -> None:
    assert str(not_found()) == (
        "Error while processing response, Received status code 404 Not Found, retriable: false, internal: false"
    )


@pytest.mark.parametrize("count,expected_delay", [(0, 120.0), (1, 240.0)])
def test_retriable_errors_back_off_linearly(count: int, expected_delay: float) -> None:
    out = decide(
        job(download_count=count),
        server_error(),
        now=NOW,
        backoff=120,
        default_max_retries=2,
        retention=RETENTION,
    )
    assert out.next_step is NextStep.RETRY
    assert out.due == NOW + expected_delay
    assert out.fields["DownloadState"] == State.PENDING
    assert out.fields["DownloadCount"] == str(count + 1)
    assert out.fields["DownloadMeta"] == ""  # empty while it waits, as the original
    assert out.fields["ResponseCode"] == "500"
    assert "500 Internal Server Error" in out.error


def test_out_of_retries_fails_with_the_error_and_queues_the_callback() -> None:
    out = decide(
        job(download_count=2),
        server_error(),
        now=NOW,
        backoff=120,
        default_max_retries=2,
        retention=RETENTION,
    )
    assert out.fields["DownloadState"] == State.FAILED
    assert out.fields["DownloadCount"] == "3"
    assert out.fields["DownloadMeta"].endswith("retriable: true, internal: false")
    assert out.fields["CallbackState"] == State.PENDING
    assert out.next_step is NextStep.CALLBACK and out.due == NOW and out.finished


@pytest.mark.parametrize("max_retries,attempts", [(0, 1), (1, 2), (5, 6)])
def test_max_retries_means_retries_after_the_first_try(max_retries: int, attempts: int) -> None:
    j = job(max_retries=max_retries)
    for n in range(attempts):
        out = decide(j, server_error(), now=NOW, backoff=1, default_max_retries=2, retention=RETENTION)
        j.download_count += 1
        expected = State.FAILED if n == attempts - 1 else State.PENDING
        assert out.fields["DownloadState"] == expected, (n, out)


def test_terminal_errors_fail_at_once() -> None:
    out = decide(job(), not_found(), now=NOW, backoff=120, default_max_retries=2, retention=RETENTION)
    assert out.fields["DownloadState"] == State.FAILED
    assert out.fields["ResponseCode"] == "404"


def test_interruptions_do_not_use_an_attempt() -> None:
    out = decide(
        job(download_count=1),
        Interrupted("shutting down"),
        now=NOW,
        backoff=120,
        default_max_retries=2,
        retention=RETENTION,
    )
    assert out.fields == {"DownloadState": State.PENDING}
    assert out.next_step is NextStep.RETRY and out.due == NOW


def test_internal_errors_back_off_without_counting() -> None:
    err = DownloadError(
        "creating tmp file",
        "No space left on device",
        reason=FailureReason.STORAGE,
        retriable=True,
        internal=True,
    )
    out = decide(job(download_count=1), err, now=NOW, backoff=120, default_max_retries=2, retention=RETENTION)
    assert "DownloadCount" not in out.fields
    assert out.due == NOW + 120  # the original retried these with no delay, forever


def test_a_job_without_callback_is_deleted_with_its_file_after_the_retention_period() -> None:
    out = decide(
        job(callback_url=""), not_found(), now=NOW, backoff=1, default_max_retries=2, retention=RETENTION
    )
    assert "CallbackState" not in out.fields and out.finished
    assert (out.next_step, out.due) == (NextStep.DELETE, NOW + RETENTION)
    assert Location.decode(out.deletion_target) == Location("AbC/AbCdEfGhIjKlMn")


def test_a_file_in_the_jobs_own_bucket_is_the_clients_and_outlives_the_retention() -> None:
    j = job(callback_url="", s3_bucket="theirs", s3_region="eu-west-1")
    out = success(j, 200, "", "http://localhost/foo", now=NOW, retention=RETENTION)
    assert out.next_step is NextStep.DELETE
    assert Location.decode(out.deletion_target) == Location(key="")


def test_a_failed_download_goes_to_the_error_destination_even_without_a_callback_destination() -> None:
    options = JobOptions(callback_error_type="http", callback_error_dst="http://errors")
    j = job(callback_url="", s3_bucket="theirs", s3_region="eu-west-1", options=options)
    failed = decide(j, not_found(), now=NOW, backoff=1, default_max_retries=2, retention=RETENTION)
    assert failed.next_step is NextStep.CALLBACK and failed.fields["CallbackState"] == "Pending"
    succeeded = success(j, 200, "", "http://localhost/foo", now=NOW, retention=RETENTION)
    assert succeeded.next_step is NextStep.DELETE  # nothing to tell about a success


def test_success_records_the_download_and_queues_the_callback() -> None:
    out = success(job(download_count=1), 200, "10x10", "http://localhost/foo", now=NOW, retention=RETENTION)
    assert out.fields == {
        "DownloadState": "Success",
        "DownloadCount": "2",
        "DownloadMeta": "",
        "DownloadURL": "http://localhost/foo",
        "ResponseCode": "200",
        "ImageSize": "10x10",
        "CallbackState": "Pending",
    }
    assert out.next_step is NextStep.CALLBACK
