"""downloader/errors.py: one tree for every error the service raises, and a failed attempt's
phase and reason as fields set where it is raised, read by metrics, stats and the dashboard
instead of its message text (which stays the original's, byte for byte)."""

from __future__ import annotations

import json
import types
from typing import Any, cast

import pytest
import urllib3.exceptions

from downloader import errors
from downloader.api.routes import ui
from downloader.cluster import kube
from downloader.config import apikeys
from downloader.errors import AttemptPhase, DownloadError, FailureReason, Interrupted
from downloader.fetching import download, imaging, mime, outbound
from downloader.jobs import models
from downloader.jobs.models import Job, State
from downloader.observability import metrics
from downloader.observability.stats import Stats
from downloader.store import NotReplicated, Outcome, embedded_redis
from downloader.worker import attempts

# --- the tree -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kind",
    [
        errors.ConfigurationError,
        errors.InvalidApiKeys,
        embedded_redis.DirectoryInUse,
        errors.RequestRejected,
        errors.InvalidPattern,
        errors.JobNotFound,
        errors.CorruptJobError,
        errors.StoreError,
        NotReplicated,
        errors.DownloadError,
        errors.Interrupted,
        errors.ImageSizeError,
        errors.DestinationNotAllowed,
        outbound.RequestError,
        outbound.ConnectionFailed,
        outbound.TLSError,
        outbound.ProxyFailed,
        outbound.RequestTimeout,
        outbound.ConnectTimeout,
        outbound.ReadTimeout,
        outbound.BodyError,
        outbound.TooManyRedirects,
        outbound.InvalidRequest,
        errors.StorageError,
        errors.NotificationError,
        errors.UnknownDestination,
        errors.ClusterError,
    ],
)
def test_every_error_class_sits_under_downloader_error_and_is_drawn(kind: type[Exception]) -> None:
    assert issubclass(kind, errors.DownloaderError)
    assert f"── {kind.__name__} " in (errors.__doc__ or "")


def test_the_classes_defined_here_are_the_ones_their_modules_raise() -> None:
    assert models.CorruptJobError is errors.CorruptJobError
    assert imaging.ImageSizeError is errors.ImageSizeError
    assert mime.InvalidPattern is errors.InvalidPattern
    assert apikeys.InvalidApiKeys is errors.InvalidApiKeys
    assert kube.ClusterError is errors.ClusterError


def test_errors_caught_as_value_or_os_errors_still_are() -> None:
    for kind in (
        errors.CorruptJobError,
        errors.ImageSizeError,
        errors.InvalidPattern,
        outbound.InvalidRequest,
    ):
        assert issubclass(kind, ValueError)
    assert issubclass(outbound.RequestError, OSError)
    assert issubclass(errors.InvalidApiKeys, errors.ConfigurationError)
    with pytest.raises(ValueError, match=r'^Invalid MimeType Pattern, "\[a"$'):
        mime.parse_pattern("[a")
    assert (
        str(outbound.TLSError(urllib3.exceptions.SSLError("bad cert"))) == "bad cert"
    )  # urllib3's text, unchanged


# --- phases: the original's words --------------------------------------------------------------


def test_phases_are_the_originals_words_and_render_unchanged() -> None:
    assert [p.value for p in AttemptPhase] == [
        "validating destination",
        "creating request",
        "performing request",
        "processing response",
        "creating tmp file",
        "downloading file",
        "writing tmp file",
        "syncing to disk",
        "validating mime type",
        "extracting image-size",
        "storing file to job specified AWS S3 bucket",
        "storing file to default storage backend",
    ]
    err = DownloadError(
        "processing response",
        "Received status code 404 Not Found",
        reason=FailureReason.HTTP_4XX,
        retriable=False,
        response_code=404,
    )
    assert err.phase is AttemptPhase.PROCESSING_RESPONSE  # a phase given as its text is that phase
    assert str(err) == (
        "Error while processing response, Received status code 404 Not Found, retriable: false, internal: false"
    )
    with pytest.raises(ValueError):
        DownloadError("daydreaming", "x", reason=FailureReason.OTHER, retriable=False)


@pytest.mark.parametrize(
    ("make", "phase", "reason", "text"),
    [
        (
            lambda: download.request_failure(outbound.TLSError(urllib3.exceptions.SSLError("bad cert"))),
            "performing request",
            "tls",
            "Error while performing request, TLS Error occured: bad cert, retriable: false, internal: false",
        ),
        (
            lambda: download._too_large(10, 200),
            "downloading file",
            "too_large",
            "Error while downloading file, 413 Payload Too Large: the response exceeds the limit of 10 bytes, "
            "retriable: false, internal: false",
        ),
        (
            lambda: download._deadline_exceeded(200),
            "downloading file",
            "timeout",
            "Error while downloading file, download timeout exceeded, retriable: true, internal: false",
        ),
        (
            lambda: download.request_failure(
                errors.DestinationNotAllowed("destination address not allowed: 10.0.0.1")
            ),
            "validating destination",
            "destination_not_allowed",
            "Error while validating destination, destination address not allowed: 10.0.0.1, retriable: false, "
            "internal: false",
        ),
        (
            lambda: download.request_failure(outbound.InvalidRequest('unsupported protocol scheme "ftp"')),
            "creating request",
            "other",
            'Error while creating request, unsupported protocol scheme "ftp", retriable: false, internal: false',
        ),
        (
            lambda: download._storage_error(AttemptPhase.SYNCING_TO_DISK, OSError(5, "I/O error"), 200),
            "syncing to disk",
            "storage",
            "Error while syncing to disk, [Errno 5] I/O error, retriable: true, internal: true",
        ),
        (
            lambda: attempts._image_failure(errors.ImageSizeError("truncated png"), 200),
            "extracting image-size",
            "image",
            "Error while extracting image-size, truncated png, retriable: false, internal: false",
        ),
        (
            lambda: Interrupted("shutting down"),
            "downloading file",
            "interrupted",
            "Error while downloading file, shutting down, retriable: true, internal: true",
        ),
    ],
)
def test_each_kind_of_failure_carries_its_phase_and_reason_and_keeps_its_text(
    make: Any, phase: str, reason: str, text: str
) -> None:
    err = make()
    assert (err.phase, err.reason, str(err)) == (phase, reason, text)
    assert isinstance(err.phase, AttemptPhase) and isinstance(err.reason, FailureReason)


# --- timeouts are known by type, not by text -----------------------------------------------------


def _chained(outer: BaseException, inner: BaseException) -> BaseException:
    outer.__cause__ = inner
    return outer


@pytest.mark.parametrize(
    ("exc", "reason"),
    [
        (outbound.ReadTimeout(urllib3.exceptions.ReadTimeoutError(None, "/", "Read timed out.")), "timeout"),
        (
            outbound.ConnectTimeout(
                urllib3.exceptions.MaxRetryError(
                    None, "/", urllib3.exceptions.ConnectTimeoutError(None, "connect")
                )
            ),
            "timeout",
        ),
        # urllib3 wraps a socket timeout met while sending as a connection failure: still a timeout
        (_chained(outbound.ConnectionFailed(OSError("x")), TimeoutError("timed out")), "timeout"),
        (urllib3.exceptions.ProtocolError("Connection broken", TimeoutError()), "timeout"),
        # a refusal is a NewConnectionError, a ConnectTimeoutError only by urllib3's history
        (
            outbound.ConnectionFailed(
                urllib3.exceptions.MaxRetryError(
                    None,
                    "/",
                    urllib3.exceptions.NewConnectionError(
                        None, "Failed to establish a new connection: [Errno 111] Connection refused"
                    ),
                )
            ),
            "network",
        ),
        # the words are not read: a text that mentions timeouts is no timeout
        (
            outbound.ConnectionFailed(OSError("upstream said: gateway timeout, connection timed out")),
            "network",
        ),
        (outbound.BodyError(ValueError("Read timed out")), "network"),
    ],
)
def test_timeouts_are_told_by_the_exceptions_types_never_their_text(exc: BaseException, reason: str) -> None:
    err = download.transport_error(AttemptPhase.PERFORMING_REQUEST, exc)
    assert err.reason == reason
    assert err.message == download._describe(exc)  # the text is what it was
    assert err.retriable and not err.internal


# --- readers use the fields ------------------------------------------------------------------------


def test_the_metric_label_comes_from_the_reason_not_the_message() -> None:
    misleading = DownloadError(
        AttemptPhase.PERFORMING_REQUEST,
        "TLS Error occured: 413 Payload Too Large after a timeout (timed out)",
        reason=FailureReason.NETWORK,
        retriable=True,
    )
    assert metrics.failure_reason(misleading) == "network"

    def count(reason: str) -> float:
        return metrics.REGISTRY.get_sample_value("downloader_jobs_failed_total", {"reason": reason}) or 0.0

    before = {r: count(r) for r in ("network", "timeout", "tls", "too_large")}
    metrics.attempt_done(misleading, terminal=True, written=True, size=0, seconds=0.1)
    assert {r: count(r) - before[r] for r in before} == {"network": 1, "timeout": 0, "tls": 0, "too_large": 0}


def test_a_status_whose_reason_phrase_says_timeout_is_no_timeout() -> None:
    response = types.SimpleNamespace(
        status=302,
        reason="Timeout",
        headers={},
        release_conn=lambda: None,
        close=lambda: None,
        drain_conn=lambda: None,
    )
    with pytest.raises(DownloadError) as info:
        download._check_status(cast(Any, response))
    assert info.value.reason == "other" and info.value.message == "Received status code 302 Timeout"
    assert tuple(r.value for r in FailureReason if r != "interrupted") == metrics.FAILURE_REASONS


def _stats_after(err: DownloadError) -> dict[str, int]:
    proc = types.SimpleNamespace(stats=Stats("worker"))
    attempts._count_response(cast(Any, proc), err)
    snapshot = proc.stats.snapshot()
    snapshot.pop("alive", None)
    return snapshot


def test_stats_counters_come_from_the_reason_and_phase() -> None:
    tls = download.request_failure(outbound.TLSError(urllib3.exceptions.SSLError("bad cert")))
    assert _stats_after(tls) == {"download.response.tls": 1}
    # a message that starts as a TLS error's but is not one is not counted as one
    lookalike = DownloadError(
        AttemptPhase.PERFORMING_REQUEST, "TLS Error occured: no", reason=FailureReason.NETWORK, retriable=True
    )
    assert _stats_after(lookalike) == {}
    assert _stats_after(download._too_large(10, 200)) == {
        "download.response.body": 1,
        "download.response.200": 1,
    }
    destination = download.request_failure(
        errors.DestinationNotAllowed("destination address not allowed: ::1")
    )
    assert _stats_after(destination) == {"destinationNotAllowed": 1}
    image = attempts._image_failure(errors.ImageSizeError("bad"), 200)
    assert _stats_after(image) == {"download.response.image-size": 1, "download.response.200": 1}
    disk = download._storage_error(AttemptPhase.WRITING_TMP_FILE, OSError(28, "No space left"), 200)
    assert _stats_after(disk) == {"download.response.200": 1, "failures": 1}


def test_the_dashboards_failure_record_carries_the_phase_and_reason() -> None:
    job = Job(id="AbCdEfGhIjKlMn", url="http://h/x", aggr_id="ag")
    err = download._too_large(10, 200)
    outcome = Outcome(fields={"DownloadState": State.FAILED.value, "ResponseCode": "200"}, error=str(err))
    record = json.loads(attempts._counted(job, outcome, err).failure)
    assert (record["phase"], record["reason"], record["error"]) == ("downloading file", "too_large", str(err))
    view = ui._failure(json.dumps(record))
    assert view is not None and (view.phase, view.reason, view.error) == (
        "downloading file",
        "too_large",
        str(err),
    )
    # records without the fields (set aside, or written before them) and unknown values read as none
    old = ui._failure(json.dumps({"id": "J", "aggr_id": "a", "error": "e", "reason": "<script>", "phase": 3}))
    assert old is not None and (old.phase, old.reason) == ("", "")
