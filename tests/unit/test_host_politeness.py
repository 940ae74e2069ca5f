"""Politeness per origin host, the pure parts: a URL's host key, which limit and rate apply to
a host (pattern precedence), the settings that name them, a Retry-After header, what a 429/503
with one does to the attempt's outcome, and the request field `aggr_host_limit` (no Redis).
"""

from __future__ import annotations

import email.utils
import json

import pytest

from downloader.config import settings as settings_module
from downloader.errors import AttemptPhase, ConfigurationError, DownloadError, FailureReason, RequestRejected
from downloader.fetching.download import retry_after
from downloader.jobs import hosts, validation
from downloader.jobs.hosts import HostPolicy, HostRule
from downloader.jobs.models import Job, JobOptions
from downloader.store import NextStep, Outcome
from downloader.worker import attempts

NOW = 1_700_000_000.0


# --- a URL's host ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "host"),
    [
        ("http://img.shop.example/a.jpg", "img.shop.example"),
        ("https://IMG.Shop.Example:443/a.jpg?x=1", "img.shop.example"),
        ("http://img.shop.example:80/a", "img.shop.example"),
        ("http://img.shop.example:443/a", "img.shop.example:443"),
        ("http://127.0.0.1:8080/files/x", "127.0.0.1:8080"),
        ("http://user:pw@cdn.example:81/x", "cdn.example:81"),
        ("http://[::1]:8080/x", "[::1]:8080"),
        ("http://[::1]/x", "[::1]"),
        ("http://h.example?q=1", "h.example"),
        ("http://h.example#frag", "h.example"),
        ("not a url", ""),
        ("/relative/path", ""),
    ],
)
def test_the_host_of_a_url_is_its_authority_without_user_or_default_port(url: str, host: str) -> None:
    assert hosts.host_of(url) == host


@pytest.mark.parametrize(
    ("host", "name"),
    [("a.example:8080", "a.example"), ("a.example", "a.example"), ("[::1]:80", "[::1]"), ("[::1]", "[::1]")],
)
def test_a_host_name_drops_the_port(host: str, name: str) -> None:
    assert hosts.host_name(host) == name


# --- which rule applies ---------------------------------------------------------------------

POLICY = HostPolicy(
    default=HostRule(limit=50, rate=0.0),
    limits={
        "img.shop.example": 2,
        "img.shop.example:8443": 1,
        "*.cdn.example": 4,
        "*.eu.cdn.example": 3,
        "free.example": 0,
    },
    rates={"*.cdn.example": 5.0},
)


@pytest.mark.parametrize(
    ("host", "limit", "rate"),
    [
        ("img.shop.example:8443", 1, 0.0),  # an exact host:port wins over the host name
        ("img.shop.example:8080", 2, 0.0),  # the host name on any other port
        ("img.shop.example", 2, 0.0),
        ("a.eu.cdn.example", 3, 5.0),  # the longest matching suffix wins
        ("a.us.cdn.example", 4, 5.0),
        ("x.cdn.example:8080", 4, 5.0),  # suffixes match the host name
        ("cdn.example", 50, 0.0),  # `*.` means subdomains only
        ("notcdn.example", 50, 0.0),
        ("free.example", 0, 0.0),  # 0: unlimited, even under a global limit
        ("other.example", 50, 0.0),  # the global default
    ],
)
def test_limits_resolve_exact_then_host_name_then_longest_suffix_then_default(
    host: str, limit: int, rate: float
) -> None:
    assert POLICY.resolve(host) == HostRule(limit, rate)


def test_a_jobs_own_host_limit_can_lower_the_services_never_raise_it() -> None:
    assert POLICY.resolve("img.shop.example", job_limit=1).limit == 1
    assert POLICY.resolve("img.shop.example", job_limit=10).limit == 2
    assert POLICY.resolve("free.example", job_limit=3).limit == 3  # unlimited, the job asks for 3
    assert HostPolicy().resolve("any.example", job_limit=0) == HostRule(0, 0.0)


def test_the_encoded_policy_lists_suffixes_longest_first() -> None:
    encoded = json.loads(POLICY.encoded)
    assert encoded["limit"] == 50
    assert encoded["limits"]["exact"]["img.shop.example:8443"] == 1
    assert encoded["limits"]["suffixes"] == [[".eu.cdn.example", 3], [".cdn.example", 4]]
    assert encoded["rates"]["suffixes"] == [[".cdn.example", 5.0]]


def test_the_default_policy_limits_nothing() -> None:
    assert hosts.UNLIMITED.resolve("a.example") == HostRule(0, 0.0)


# --- settings -------------------------------------------------------------------------------


def test_host_settings_are_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOWNLOADER_HOST_LIMIT", "8")
    monkeypatch.setenv("DOWNLOADER_HOST_LIMITS", '{"*.CDN.example": 4, "img.shop.example": 2}')
    monkeypatch.setenv("DOWNLOADER_HOST_RATES", '{"img.shop.example": 0.5}')
    loaded = settings_module.load()
    policy = HostPolicy.from_settings(loaded)
    assert policy.resolve("a.cdn.example") == HostRule(4, 0.0)
    assert policy.resolve("img.shop.example") == HostRule(2, 0.5)
    assert policy.resolve("elsewhere.example") == HostRule(8, 0.0)


def test_host_settings_default_to_no_limit_and_retry_after_honoured_up_to_an_hour() -> None:
    loaded = settings_module.load()
    assert (loaded.host_limit, loaded.host_limits, loaded.host_requests_per_second) == (0, {}, 0.0)
    assert loaded.retry_after_max_seconds == 3600.0


@pytest.mark.parametrize(
    "value",
    ['{"http://a.example": 2}', '{"a.example/x": 2}', '{"a.example": -1}', '{"*": 2}', '["a.example"]'],
)
def test_a_bad_host_limits_setting_stops_the_process_naming_it(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv("DOWNLOADER_HOST_LIMITS", value)
    with pytest.raises(ConfigurationError, match="DOWNLOADER_HOST_LIMITS"):
        settings_module.load()


# --- Retry-After ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        ("2", 2.0),
        (" 120 ", 120.0),
        ("0", 0.0),
        (email.utils.formatdate(NOW + 30, usegmt=True), 30.0),
        (email.utils.formatdate(NOW - 30, usegmt=True), 0.0),  # a date already past
        ("Wed, 21 Oct 2015 07:28:00", 0.0),  # no zone: read as GMT
        ("", None),
        ("-1", None),
        ("1.5", None),
        ("soon", None),
    ],
)
def test_retry_after_reads_delta_seconds_and_http_dates(header: str, seconds: float | None) -> None:
    found = retry_after(header, now=NOW)
    assert found == pytest.approx(seconds) if seconds is not None else found is None


def refused(code: int, wait: float | None) -> DownloadError:
    return DownloadError(
        AttemptPhase.PROCESSING_RESPONSE,
        f"Received status code {code}",
        reason=FailureReason.HTTP_4XX if code < 500 else FailureReason.HTTP_5XX,
        retriable=True,
        response_code=code,
        retry_after=wait,
    )


JOB = Job(id="J1", url="http://img.shop.example/a.jpg", aggr_id="a", callback_url="http://127.0.0.1:9/cb")


def outcome_of(err: DownloadError, job: Job = JOB, cap: float = 3600.0) -> Outcome:
    decided = attempts.decide(job, err, now=NOW, backoff=120.0, default_max_retries=2, retention=60.0)
    return attempts.honour_retry_after(decided, err, now=NOW, cap=cap)


def test_a_429_with_retry_after_pauses_the_host_and_is_retried_at_the_pause_end() -> None:
    outcome = outcome_of(refused(429, 600.0))
    assert outcome.pause_host == 600.0
    assert outcome.next_step is NextStep.RETRY
    assert outcome.due == NOW + 600.0  # later than the backoff (1 x 120 s)
    assert outcome.fields["DownloadCount"] == "1", "the attempt counts as any 429's does, once"


def test_a_short_retry_after_never_brings_a_retry_before_its_backoff() -> None:
    outcome = outcome_of(refused(503, 2.0))
    assert outcome.pause_host == 2.0
    assert outcome.due == NOW + 120.0


def test_retry_after_is_capped_and_can_be_turned_off() -> None:
    assert outcome_of(refused(503, 86400.0), cap=3600.0).pause_host == 3600.0
    ignored = outcome_of(refused(503, 600.0), cap=0.0)
    assert ignored.pause_host == 0.0
    assert ignored.due == NOW + 120.0


def test_without_retry_after_nothing_changes() -> None:
    err = refused(503, None)
    decided = attempts.decide(JOB, err, now=NOW, backoff=120.0, default_max_retries=2, retention=60.0)
    assert outcome_of(err) == decided


def test_a_job_out_of_attempts_fails_as_before_and_still_pauses_its_host() -> None:
    spent = Job(id="J1", url=JOB.url, aggr_id="a", callback_url=JOB.callback_url, download_count=2)
    outcome = outcome_of(refused(429, 30.0), job=spent)
    assert outcome.fields["DownloadState"] == "Failed"
    assert outcome.next_step is NextStep.CALLBACK
    assert outcome.due == NOW
    assert outcome.pause_host == 30.0


# --- the request field ----------------------------------------------------------------------

BODY = {"url": "http://img.shop.example/a.jpg", "aggr_id": "a", "callback_url": "http://127.0.0.1:9/cb"}


def test_aggr_host_limit_is_kept_in_the_jobs_options() -> None:
    job = validation.job_from_fields({**BODY, "aggr_host_limit": 2})
    assert job.options.host_limit == 2
    assert '"host_limit":2' in job.options.encode()
    assert JobOptions.decode(job.options.encode()).host_limit == 2
    assert validation.job_from_fields(BODY).options.encode() == "", "absent: no options stored"
    assert validation.job_from_fields({**BODY, "aggr_host_limit": None}).options.host_limit == 0


@pytest.mark.parametrize("value", [0, -1, 1.5, "2", True])
def test_a_bad_aggr_host_limit_is_refused(value: object) -> None:
    with pytest.raises(RequestRejected, match="aggr_host_limit must be a positive integer"):
        validation.job_from_fields({**BODY, "aggr_host_limit": value})
