"""Hypothesis properties of the request parsers: whatever a client sends, the answer is a job
or a `RequestRejected` (the API's 400), never another exception; jobs survive their Redis
encoding; mime patterns parse or raise `InvalidPattern`, and matching never raises; the URL
check's fast path agrees with Go's checks done in full.

EXAMPLES per property keeps this file under ~10 s.
"""

from __future__ import annotations

import json
import math
import string

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from downloader.errors import RequestRejected
from downloader.fetching import mime
from downloader.jobs import gourl, validation
from downloader.jobs.models import Job

EXAMPLES = 400
fuzz = settings(
    max_examples=EXAMPLES, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)

FIELDS = [
    "url",
    "aggr_id",
    "aggr_limit",
    "aggr_proxy",
    "callback_url",
    "callback_type",
    "callback_dst",
    "extra",
    "mime_type",
    "max_retries",
    "extract_image_size",
    "download_timeout",
    "request_headers",
    "s3_bucket",
    "s3_region",
    "subpath",
    "callback_error_type",
    "callback_error_dst",
    "max_size",
    "expiresAt",
]

scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text()
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)
# Values that often pass a rule, so later rules are reached too.
plausible = (
    st.sampled_from(
        ["http://127.0.0.1:9/a.png", "/path", "http", "kafka", "topic", "image/*", "!text/*", "a/b", "", "x"]
    )
    | st.integers(min_value=-2, max_value=5)
    | st.booleans()
)
bodies = st.dictionaries(st.sampled_from(FIELDS), plausible | json_values, max_size=len(FIELDS))


def outcome(body: bytes, cap: int | None = 1000) -> Job | None:
    try:
        job, aggregation = validation.parse_download_request(body, max_size_cap=cap)
    except RequestRejected as exc:
        assert exc.target in ("Job", "Aggregation") and exc.reason
        return None
    assert aggregation.id == job.aggr_id and aggregation.limit >= 1
    assert 0 <= job.options.max_size <= 1000
    return job


@fuzz
@given(st.binary(max_size=300))
def test_any_bytes_are_a_job_or_rejected(body: bytes) -> None:
    outcome(body)


@fuzz
@given(json_values)
def test_any_json_value_is_a_job_or_rejected(value: object) -> None:
    outcome(json.dumps(value).encode())


@fuzz
@given(bodies)
def test_any_object_of_known_fields_is_a_job_or_rejected(fields: dict[str, object]) -> None:
    outcome(json.dumps(fields).encode())


REQUIRED = {
    "url": "http://127.0.0.1:9/a",
    "aggr_id": "a",
    "aggr_limit": 1,
    "callback_url": "http://127.0.0.1:9/cb",
}
words = st.text(alphabet=string.ascii_letters + string.digits + "-_", min_size=1, max_size=8)
# Each optional field drawn from values of its own type, so that most bodies are valid and the
# round trip covers every field, not only those that take anything (random values made only
# about a fifth of bodies valid). Garbage is the business of the properties above.
typed: dict[str, st.SearchStrategy[object]] = {
    "aggr_proxy": st.sampled_from(["", "http://127.0.0.1:3128", "https://proxy.test:1080"]),
    "callback_type": st.sampled_from(["", "http", "kafka", "sqs"]),
    "callback_dst": st.text(),
    "extra": json_values,
    "mime_type": st.sampled_from(["", "image/*", "!text/*", "image/jpeg,image/png", "!image/svg+xml"]),
    "max_retries": st.integers(min_value=0, max_value=50),
    "extract_image_size": st.booleans(),
    "download_timeout": st.integers(min_value=1, max_value=3600),
    "request_headers": st.dictionaries(st.text(), st.text() | st.integers(-(10**6), 10**6), max_size=3),
    "s3_bucket": st.text(),
    "s3_region": st.text(),
    "subpath": st.lists(words, max_size=3).map("/".join),
    "callback_error_type": st.sampled_from(["", "http", "kafka", "sqs"]),
    "callback_error_dst": st.text(),
    "max_size": st.integers(min_value=1, max_value=1000),
    "expiresAt": json_values,
}
assert set(typed) == set(FIELDS) - set(REQUIRED)
optional = st.fixed_dictionaries({}, optional=typed)
ids = st.text(alphabet=string.ascii_letters + string.digits + "-_", min_size=14, max_size=14)


def test_a_valid_job_survives_its_redis_encoding() -> None:
    encoded: list[bool] = []

    @fuzz
    @given(optional, ids)
    def round_trip(fields: dict[str, object], job_id: str) -> None:
        job = outcome(json.dumps({**REQUIRED, **fields}).encode())
        encoded.append(job is not None)
        if job is not None:
            job.id = job_id
            assert Job.from_hash(job.to_hash(), job.options.encode()) == job

    round_trip()
    # most bodies must be valid, or the property says little
    assert sum(encoded) >= EXAMPLES // 4, f"{sum(encoded)} of {len(encoded)}"


def parses_or_is_invalid(pattern: str) -> None:
    try:
        parsed = mime.parse_pattern(pattern)
    except mime.InvalidPattern as exc:
        assert str(exc).startswith("Invalid MimeType Pattern, ")
        return
    for candidate in ("image/png", "text/html", "", pattern, pattern.lstrip("!")):
        verdict = parsed.check(candidate)
        assert verdict is None or "mime-type" in verdict


@fuzz
@given(st.text())
def test_any_pattern_parses_or_is_invalid_and_matching_never_raises(pattern: str) -> None:
    parses_or_is_invalid(pattern)


@fuzz
@given(
    st.lists(st.sampled_from(["*", "?", "[", "]", "^", "-", "\\", "!", ",", "/", "a", "é", " "]), max_size=12)
)
def test_glob_syntax_soup_parses_or_is_invalid(parts: list[str]) -> None:
    # random text rarely forms classes and escapes; this mostly does
    parses_or_is_invalid("".join(parts))


def test_floats_are_what_json_can_carry() -> None:
    # NaN and infinities are not JSON: Python writes them, the parser refuses them
    for constant in (math.nan, math.inf, -math.inf):
        assert outcome(json.dumps({"aggr_limit": constant}).encode()) is None


# The characters that matter to Go's URL checks, and a few that do not.
URL_SOUP = st.lists(
    st.sampled_from(["http", "https", "x+y", "1a", "://", ":", "/", "//", "?", "#", "%", "%41", "%zz", "%2",
                     "@", "[", "]", "[::1]", "80", "a", "Z", "-", ".", "_", "~", "!", "$", "&", "'", "(", "*",
                     ",", ";", "=", " ", "<", '"', "\\", "\t", "\x7f", "\x00", "é", "ü", "\ufffd"]),
    max_size=14,
).map("".join)  # fmt: skip


@fuzz
@given(st.one_of(URL_SOUP, st.text(max_size=30), st.from_regex(gourl._PLAIN_URL, fullmatch=True)))
def test_the_url_fast_path_agrees_with_the_full_checks(raw: str) -> None:
    fast = gourl._PLAIN_URL.fullmatch(raw) is not None
    full = gourl._request_uri_error_slow(raw)
    if fast:
        assert full is None, (raw, full)
    assert gourl._request_uri_error(raw) == full
