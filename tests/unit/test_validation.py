"""POST /download body validation (reference 1.1; the original's TestUnmarshalJSON,
TestAggregationUnmarshal and TestHandler cases) and the Go `url.ParseRequestURI` emulation."""

from __future__ import annotations

import json

import pytest

from downloader.errors import RequestRejected
from downloader.jobs import gourl, validation
from downloader.jobs.models import Aggregation, Job, State

URL = "http://127.0.0.1:9/testdata/tiny.png"
CALLBACK = "http://127.0.0.1:9/callback"

_MISSING = object()


def _apply(body: dict[str, object], changes: dict[str, object]) -> dict[str, object]:
    for key, value in changes.items():
        if value is _MISSING:
            body.pop(key, None)
        else:
            body[key] = value
    return body


def base(**changes: object) -> dict[str, object]:
    """The original TestHandler's valid body, with `changes` (`_MISSING` drops a key)."""
    body: dict[str, object] = {
        "aggr_id": "foo",
        "aggr_limit": 8,
        "url": URL,
        "callback_url": CALLBACK,
        "extra": "foobar",
    }
    return _apply(body, changes)


def typed(**changes: object) -> dict[str, object]:
    """A valid body using callback_type/callback_dst instead of callback_url."""
    body = base(callback_url=_MISSING, callback_type="http", callback_dst=CALLBACK)
    return _apply(body, changes)


def encode(body: object) -> bytes:
    return body.encode() if isinstance(body, str) else json.dumps(body).encode()


def parse(body: object) -> tuple[Job, Aggregation]:
    return validation.parse_download_request(encode(body))


def rejection(body: object) -> RequestRejected:
    with pytest.raises(RequestRejected) as info:
        parse(body)
    return info.value


# --- the body itself --------------------------------------------------------------------

BODY_ERRORS = [
    ("empty", b"", "unexpected end of JSON input"),
    ("whitespace-only", b" \n", "unexpected end of JSON input"),
    ("not-json", b"meh", "invalid character 'm' looking for beginning of value"),
    ("key-without-value", b'{"foo"}', "invalid character '}' after object key"),
    ("truncated-object", b'{"url":"x"', "unexpected end of JSON input"),
    ("unterminated-string", b'{"url":"x', "unexpected end of JSON input"),
    (
        "trailing-comma-object",
        b'{"a":1,}',
        "invalid character '}' looking for beginning of object key string",
    ),
    ("trailing-comma-array", b'{"a":[1,]}', "invalid character ']' looking for beginning of value"),
    ("missing-comma-object", b'{"a":1 "b":2}', "invalid character '\"' after object key:value pair"),
    ("missing-comma-array", b'{"a":[1 2]}', "invalid character '2' after array element"),
    ("missing-colon", b'{"a" 1}', "invalid character '1' after object key"),
    ("after-top-level", b"{} x", "invalid character 'x' after top-level value"),
    ("control-char-in-string", b'{"a":"x\ny"}', "invalid character '\\n' in string literal"),
    ("bad-escape", b'{"a":"\\q"}', "invalid character 'q' in string escape code"),
    ("bad-unicode-escape", b'{"a":"\\u12g4"}', "invalid character 'g' in \\u hexadecimal character escape"),
    ("bad-literal", b'{"a":trux}', "invalid character 'x' in literal true (expecting 'e')"),
    ("truncated-literal", b'{"a":nu', "unexpected end of JSON input"),
    ("bad-number", b'{"a":-x}', "invalid character 'x' in numeric literal"),
    ("nan", b'{"a":NaN}', "invalid character 'N' looking for beginning of value"),
    ("infinity", b'{"a":Infinity}', "invalid character 'I' looking for beginning of value"),
    ("minus-infinity", b'{"a":-Infinity}', "invalid character 'I' in numeric literal"),
    ("utf8-bom", b'\xef\xbb\xbf{"a":1}', "invalid character '\u00ef' looking for beginning of value"),
    ("non-ascii-outside-string", '{"a":é}'.encode(), "invalid character 'Ã' looking for beginning of value"),
    ("not-utf8-in-string", b'{"url":"\xe9"}', "invalid character 'é' in string literal"),
    ("not-utf8-outside-string", b'{"a":\xff}', "invalid character 'ÿ' looking for beginning of value"),
    ("top-level-array", b"[]", "json: cannot unmarshal array into Go value of type map[string]interface {}"),
    (
        "top-level-string",
        b'"x"',
        "json: cannot unmarshal string into Go value of type map[string]interface {}",
    ),
    ("top-level-number", b"4", "json: cannot unmarshal number into Go value of type map[string]interface {}"),
    ("top-level-bool", b"true", "json: cannot unmarshal bool into Go value of type map[string]interface {}"),
    ("top-level-null", b"null", "URL must be a string"),
    (
        "number-out-of-range",
        b'{"a":1e400}',
        "json: cannot unmarshal number 1e400 into Go value of type float64",
    ),
    ("huge-integer", b'{"a":' + b"9" * 5000 + b"}", "json: cannot unmarshal number 9999"),
    (
        "syntax-error-beats-range",
        b'{"a":1e400,}',
        "invalid character '}' looking for beginning of object key",
    ),
    ("array-beats-range", b"[1e400]", "json: cannot unmarshal array into Go value of type"),
    (
        "too-deep",
        b'{"a":' + b"[" * 100_000 + b"]" * 100_000 + b"}",
        "invalid character '[' exceeded max depth",
    ),
]


@pytest.mark.parametrize("body,reason", [c[1:] for c in BODY_ERRORS], ids=[c[0] for c in BODY_ERRORS])
def test_a_bad_body_is_rejected_as_a_job_with_go_json_text(body: bytes, reason: str) -> None:
    with pytest.raises(RequestRejected) as info:
        validation.parse_download_request(body)
    assert info.value.target == "Job"
    assert info.value.reason.startswith(reason), info.value.reason


def test_duplicate_keys_last_wins() -> None:
    job, _ = validation.parse_download_request(
        b'{"url":"foo","url":"http://a/b","aggr_id":"x","callback_url":"http://c","aggr_limit":1}'
    )
    assert job.url == "http://a/b"


def test_a_lone_surrogate_escape_becomes_the_replacement_character() -> None:
    job, _ = validation.parse_download_request(
        b'{"url":"http://a/b","aggr_id":"x\\ud800","callback_url":"http://c","aggr_limit":1,'
        b'"request_headers":{"k\\udfff":"v\\ud83d"},"extra":"\\ud83d\\ude00"}'
    )
    assert job.aggr_id == "x\ufffd"
    assert job.request_headers == {"k\ufffd": "v\ufffd"}
    assert job.extra == "\U0001f600"


# --- job rules: every row of the reference's table, exact reason texts -------------------

JOB_ERRORS = [
    ("url-missing", base(url=_MISSING), "URL must be a string"),
    ("url-number", base(url=5), "URL must be a string"),
    ("url-null", base(url=None), "URL must be a string"),
    ("url-not-a-uri", base(url="foo"), 'Could not parse URL: parse "foo": invalid URI for request'),
    ("url-empty", base(url=""), 'Could not parse URL: parse "": empty url'),
    (
        "url-bad-port",
        base(url="http://a:b/x"),
        'Could not parse URL: parse "http://a:b/x": invalid port ":b" after host',
    ),
    ("aggr-id-bool", base(aggr_id=True), "aggr_id must be a string"),
    ("aggr-id-number", base(aggr_id=4), "aggr_id must be a string"),
    ("aggr-id-missing", base(aggr_id=_MISSING), "aggr_id must be a string"),
    ("aggr-id-empty", base(aggr_id=""), "aggr_id cannot be empty"),
    ("s3-region-alone", base(s3_region="eu-west-1"), "s3_region provided without an s3_bucket"),
    ("s3-bucket-alone", base(s3_bucket="bucket"), "s3_bucket provided without an s3_region"),
    (
        "s3-bucket-alone-region-number",
        base(s3_bucket="b", s3_region=4),
        "s3_bucket provided without an s3_region",
    ),
    (
        "s3-region-alone-bucket-empty",
        base(s3_bucket="", s3_region="r"),
        "s3_region provided without an s3_bucket",
    ),
    (
        "callback-url-invalid",
        base(callback_url="fijfij"),
        'Could not parse callback URL: parse "fijfij": invalid URI for request',
    ),
    ("callback-url-empty", base(callback_url=""), 'Could not parse callback URL: parse "": empty url'),
    ("no-callback-at-all", base(callback_url=_MISSING), "callback_type must be a string"),
    ("callback-url-number-ignored", base(callback_url=5), "callback_type must be a string"),
    ("callback-type-missing", typed(callback_type=_MISSING), "callback_type must be a string"),
    ("callback-type-number", typed(callback_type=1), "callback_type must be a string"),
    ("callback-dst-missing", typed(callback_dst=_MISSING), "callback_dst must be a string"),
    ("callback-dst-number", typed(callback_dst=5), "callback_dst must be a string"),
    (
        "callback-dst-empty",
        typed(callback_dst=""),
        'You need to provide both callback_type ("http") and callback_dst ("")',
    ),
    (
        "callback-type-empty",
        typed(callback_type=""),
        f'You need to provide both callback_type ("") and callback_dst ("{CALLBACK}")',
    ),
    (
        "callback-pair-go-quoted",
        typed(callback_type='a"b\n', callback_dst=""),
        'You need to provide both callback_type ("a\\"b\\n") and callback_dst ("")',
    ),
    (
        "callback-dst-bad-http-url",
        typed(callback_dst="http//no-scheme"),
        'Could not parse URL: parse "http//no-scheme": invalid URI for request',
    ),
    (
        "callback-dst-http-control-char",
        typed(callback_dst="http://a/\x01"),
        'Could not parse URL: parse "http://a/\\x01": net/url: invalid control character in URL',
    ),
    ("mime-number", base(mime_type=5), "MimeType pattern must be a string"),
    ("mime-null", base(mime_type=None), "MimeType pattern must be a string"),
    ("mime-bad-class", base(mime_type="[]a]"), 'Invalid MimeType Pattern, "[]a]"'),
    ("mime-lone-backslash", base(mime_type="\\"), 'Invalid MimeType Pattern, "\\\\"'),
    ("max-retries-string", base(max_retries="3"), "Max retries must be a number, was: string"),
    ("max-retries-bool", base(max_retries=True), "Max retries must be a number, was: bool"),
    ("max-retries-null", base(max_retries=None), "Max retries must be a number, was: <nil>"),
    ("max-retries-list", base(max_retries=[1]), "Max retries must be a number, was: []interface {}"),
    (
        "max-retries-object",
        base(max_retries={}),
        "Max retries must be a number, was: map[string]interface {}",
    ),
    ("max-retries-negative", base(max_retries=-1), "Max retries must not be negative"),
    ("max-retries-negative-fraction", base(max_retries=-1.5), "Max retries must not be negative"),
    ("extract-image-size-string", base(extract_image_size="yes"), "ExtractImageSize must be a boolean"),
    ("extract-image-size-number", base(extract_image_size=1), "ExtractImageSize must be a boolean"),
    ("extract-image-size-null", base(extract_image_size=None), "ExtractImageSize must be a boolean"),
    ("download-timeout-null", base(download_timeout=None), "Download timeout must be a number"),
    ("download-timeout-string", base(download_timeout="4"), "Download timeout must be a number"),
    ("download-timeout-bool", base(download_timeout=True), "Download timeout must be a number"),
    ("download-timeout-zero", base(download_timeout=0), "Download timeout must be greater than 0"),
    ("download-timeout-negative", base(download_timeout=-2), "Download timeout must be greater than 0"),
    ("download-timeout-half", base(download_timeout=0.5), "Download timeout must be greater than 0"),
    (
        "request-headers-number",
        base(request_headers=1, user_agent="Legacy"),
        "request_headers must be a dictionary",
    ),
    ("request-headers-list", base(request_headers=["a"]), "request_headers must be a dictionary"),
    ("request-headers-null", base(request_headers=None), "request_headers must be a dictionary"),
    ("request-headers-string", base(request_headers="a:b"), "request_headers must be a dictionary"),
]

HEADER_VALUE_ERRORS = [
    ("bool", True, "true"),
    ("false", False, "false"),
    ("object", {"b": "c"}, "map[b:c]"),
    ("object-sorted-keys", {"z": 1, "a": [True, None]}, "map[a:[true <nil>] z:1]"),
    ("list", ["a"], "[a]"),
    ("list-of-floats", [1.5, 1000000, 0.00001], "[1.5 1e+06 1e-05]"),
    ("null", None, "<nil>"),
]
JOB_ERRORS += [
    (
        f"request-header-value-{name}",
        base(request_headers={"X-A": value}),
        f"Values of request headers keys must be either strings or ints.Given value is {text}",
    )
    for name, value, text in HEADER_VALUE_ERRORS
]


@pytest.mark.parametrize("body,reason", [c[1:] for c in JOB_ERRORS], ids=[c[0] for c in JOB_ERRORS])
def test_job_rule_rejects_with_the_original_text(body: dict[str, object], reason: str) -> None:
    error = rejection(body)
    assert (error.target, error.reason) == ("Job", reason)


AGGREGATION_ERRORS = [
    ("limit-missing", base(aggr_limit=_MISSING), "Aggregation limit must be a number"),
    ("limit-string", base(aggr_limit="4"), "Aggregation limit must be a number"),
    ("limit-null", base(aggr_limit=None), "Aggregation limit must be a number"),
    ("limit-bool", base(aggr_limit=True), "Aggregation limit must be a number"),
    ("limit-negative", base(aggr_limit=-2), "Aggregation limit must be greater than 0"),
    ("limit-zero", base(aggr_limit=0), "Aggregation limit must be greater than 0"),
    ("limit-half", base(aggr_limit=0.5), "Aggregation limit must be greater than 0"),
    ("proxy-null", base(aggr_proxy=None), "Aggregation proxy must be a string"),
    ("proxy-number", base(aggr_proxy=4), "Aggregation proxy must be a string"),
    (
        "proxy-not-a-uri",
        base(aggr_proxy="example"),
        'Aggregation proxy must be a valid URI: parse "example": invalid URI for request',
    ),
    (
        "proxy-bad-port",
        base(aggr_proxy="http://p:x"),
        'Aggregation proxy must be a valid URI: parse "http://p:x": invalid port ":x" after host',
    ),
]


@pytest.mark.parametrize(
    "body,reason", [c[1:] for c in AGGREGATION_ERRORS], ids=[c[0] for c in AGGREGATION_ERRORS]
)
def test_aggregation_rule_rejects_with_the_original_text(body: dict[str, object], reason: str) -> None:
    error = rejection(body)
    assert (error.target, error.reason) == ("Aggregation", reason)


@pytest.mark.parametrize(
    "fields,reason",
    [
        ({"aggr_limit": 4}, "Aggregation ID must be a string"),
        ({"aggr_id": 4, "aggr_limit": 4}, "Aggregation ID must be a string"),
        ({"aggr_id": "", "aggr_limit": 4}, "Aggregation ID cannot be empty"),
        ({"aggr_id": "", "aggr_limit": "x"}, "Aggregation ID cannot be empty"),
    ],
    ids=["id-missing", "id-number", "id-empty", "id-before-limit"],
)
def test_aggregation_id_rules(fields: dict[str, object], reason: str) -> None:
    """Unreachable through a whole body (the job checks aggr_id first), but kept."""
    with pytest.raises(RequestRejected) as info:
        validation.aggregation_from_fields(fields)
    assert (info.value.target, info.value.reason) == ("Aggregation", reason)


# --- the original's TestUnmarshalJSON and TestAggregationUnmarshal (reference 8.3, 8.4) --

JOB_OK = {"aggr_id": "foo", "url": "http://foobar.com", "callback_url": "http://foo.bar"}

UNMARSHAL_JSON = [
    ("empty", "", False),
    ("key-without-value", '{"foo"}', False),
    ("unknown-key", {"foo": "bar"}, False),
    ("url-not-a-uri", {**JOB_OK, "url": "foo"}, False),
    ("url-empty", {**JOB_OK, "url": ""}, False),
    ("callback-url-invalid", {**JOB_OK, "callback_url": "fijfij"}, False),
    ("aggr-id-bool", {**JOB_OK, "aggr_id": True}, False),
    ("aggr-id-empty", {**JOB_OK, "aggr_id": ""}, False),
    ("valid-without-aggr-limit", JOB_OK, True),
    ("valid-extra", {**JOB_OK, "extra": "whatever"}, True),
    ("valid-extra-empty", {**JOB_OK, "extra": ""}, True),
    ("download-timeout-12", {**JOB_OK, "download_timeout": 12}, True),
    ("download-timeout-null", {**JOB_OK, "download_timeout": None}, False),
    ("download-timeout-zero", {**JOB_OK, "download_timeout": 0}, False),
    ("download-timeout-negative", {**JOB_OK, "download_timeout": -2}, False),
    ("download-timeout-string", {**JOB_OK, "download_timeout": "4"}, False),
    ("headers-one", {**JOB_OK, "request_headers": {"User-Agent": "Test-Agent"}}, True),
    (
        "headers-two",
        {**JOB_OK, "request_headers": {"Accept-Encoding": "gzip", "User-Agent": "Test-Agent"}},
        True,
    ),
    ("headers-number-legacy-user-agent", {**JOB_OK, "request_headers": 1, "user_agent": "Test-Agent"}, False),
]


@pytest.mark.parametrize("body,ok", [c[1:] for c in UNMARSHAL_JSON], ids=[c[0] for c in UNMARSHAL_JSON])
def test_unmarshal_json(body: object, ok: bool) -> None:
    """Job decoding alone: `aggr_limit` is not needed at job level."""

    def decode() -> Job:
        return validation.job_from_fields(validation.decode_body(encode(body)))

    if ok:
        assert decode().url == "http://foobar.com"
    else:
        with pytest.raises(RequestRejected) as info:
            decode()
        assert info.value.target == "Job"


AGGREGATION_UNMARSHAL = [
    ("valid", {"aggr_id": "foo", "aggr_limit": 4}, True),
    ("id-number", {"aggr_id": 4, "aggr_limit": 4}, False),
    ("id-empty", {"aggr_id": "", "aggr_limit": 4}, False),
    ("limit-negative", {"aggr_id": "foo", "aggr_limit": -2}, False),
    ("limit-string", {"aggr_id": "foo", "aggr_limit": "4"}, False),
    ("limit-missing", {"aggr_id": "foo"}, False),
    ("proxy-empty", {"aggr_id": "foo", "aggr_limit": 4, "aggr_proxy": ""}, True),
    ("proxy-url", {"aggr_id": "foo", "aggr_limit": 4, "aggr_proxy": "https://example.org"}, True),
    ("proxy-null", {"aggr_id": "foo", "aggr_limit": 4, "aggr_proxy": None}, False),
    ("proxy-not-a-uri", {"aggr_id": "foo", "aggr_limit": 4, "aggr_proxy": "example"}, False),
    ("proxy-number", {"aggr_id": "foo", "aggr_limit": 4, "aggr_proxy": 4}, False),
]


@pytest.mark.parametrize(
    "fields,ok", [c[1:] for c in AGGREGATION_UNMARSHAL], ids=[c[0] for c in AGGREGATION_UNMARSHAL]
)
def test_aggregation_unmarshal(fields: dict[str, object], ok: bool) -> None:
    if ok:
        aggregation = validation.aggregation_from_fields(fields)
        assert (aggregation.id, aggregation.limit) == ("foo", 4)
        assert aggregation.proxy == fields.get("aggr_proxy", "")
    else:
        with pytest.raises(RequestRejected) as info:
            validation.aggregation_from_fields(fields)
        assert info.value.target == "Aggregation"


# --- the acceptance suite's CASES: 201 <-> no exception, reason phrase in the text --------

ACCEPTANCE = [
    ("valid", base(), None),
    ("valid-extra-json-string", base(extra='{"info":"foobar"}'), None),
    ("valid-without-extra", base(extra=_MISSING), None),
    ("valid-extra-empty", base(extra=""), None),
    ("body-not-json", "meh", ""),
    ("body-empty", "", ""),
    ("body-json-array", "[]", ""),
    ("body-key-without-value", '{"foo"}', ""),
    ("body-unknown-key-only", {"goo": "bar"}, "URL must be a string"),
    ("missing-aggr-limit", base(aggr_limit=_MISSING), "Aggregation limit must be a number"),
    ("no-callback-no-s3", base(callback_url=_MISSING), "callback_type must be a string"),
    (
        "invalid-json-unescaped-quotes",
        f'{{"aggr_id":"foo","aggr_limit":8,"url":"{URL}","callback_url":"{CALLBACK}",'
        '"extra":"{"info":"foobar"}"}',
        "",
    ),
    ("url-missing", base(url=_MISSING), "URL must be a string"),
    ("url-number", base(url=5), "URL must be a string"),
    ("url-not-a-uri", base(url="foo"), "Could not parse URL"),
    ("url-empty", base(url=""), "Could not parse URL"),
    ("aggr-id-bool", base(aggr_id=True), "aggr_id must be a string"),
    ("aggr-id-number", base(aggr_id=4), "aggr_id must be a string"),
    ("aggr-id-missing", base(aggr_id=_MISSING), "aggr_id must be a string"),
    ("aggr-id-empty", base(aggr_id=""), "aggr_id cannot be empty"),
    ("callback-url-invalid", base(callback_url="fijfij"), "Could not parse callback URL"),
    ("callback-url-empty", base(callback_url=""), "Could not parse callback URL"),
    ("callback-type-and-dst", typed(), None),
    ("callback-dst-empty", typed(callback_dst=""), "You need to provide both callback_type"),
    ("callback-type-empty", typed(callback_type=""), "You need to provide both callback_type"),
    ("callback-type-missing", typed(callback_type=_MISSING), "callback_type must be a string"),
    ("callback-dst-missing", typed(callback_dst=_MISSING), "callback_dst must be a string"),
    ("callback-dst-number", typed(callback_dst=5), "callback_dst must be a string"),
    ("callback-dst-bad-http-url", typed(callback_dst="http//no-scheme"), "Could not parse URL"),
    ("s3-region-without-bucket", base(s3_region="eu-west-1"), "s3_region provided without an s3_bucket"),
    ("s3-bucket-without-region", base(s3_bucket="bucket"), "s3_bucket provided without an s3_region"),
    ("download-timeout-12", base(download_timeout=12), None),
    ("download-timeout-null", base(download_timeout=None), "Download timeout must be a number"),
    ("download-timeout-string", base(download_timeout="4"), "Download timeout must be a number"),
    ("download-timeout-zero", base(download_timeout=0), "Download timeout must be greater than 0"),
    ("download-timeout-negative", base(download_timeout=-2), "Download timeout must be greater than 0"),
    ("download-timeout-half", base(download_timeout=0.5), "Download timeout must be greater than 0"),
    ("request-headers-one", base(request_headers={"User-Agent": "Test-Agent"}), None),
    (
        "request-headers-two",
        base(request_headers={"Accept-Encoding": "gzip", "User-Agent": "Test-Agent"}),
        None,
    ),
    (
        "request-headers-number",
        base(request_headers=1, user_agent="Legacy-Agent"),
        "request_headers must be a dictionary",
    ),
    ("request-headers-list", base(request_headers=["a"]), "request_headers must be a dictionary"),
    ("request-headers-bool-value", base(request_headers={"X-A": True}), ""),
    ("request-headers-object-value", base(request_headers={"X-A": {"b": "c"}}), ""),
    ("legacy-user-agent-ignored", base(user_agent="Legacy-Agent"), None),
    ("mime-number", base(mime_type=5), "MimeType pattern must be a string"),
    ("mime-null", base(mime_type=None), "MimeType pattern must be a string"),
    ("mime-bad-class", base(mime_type="[]a]"), "Invalid MimeType Pattern"),
    ("mime-lone-backslash", base(mime_type="\\"), "Invalid MimeType Pattern"),
    ("mime-empty", base(mime_type=""), None),
    ("mime-glob", base(mime_type="image/*"), None),
    ("mime-negated", base(mime_type="!application/xml"), None),
    ("mime-negated-and-glob", base(mime_type="!image/vnd.adobe.photoshop,image/*"), None),
    ("max-retries-string", base(max_retries="3"), "Max retries must be a number"),
    ("max-retries-null", base(max_retries=None), "Max retries must be a number"),
    ("max-retries-bool", base(max_retries=True), "Max retries must be a number"),
    ("max-retries-negative", base(max_retries=-1), "Max retries must not be negative"),
    ("max-retries-zero", base(max_retries=0), None),
    ("max-retries-five", base(max_retries=5), None),
    ("extract-image-size-string", base(extract_image_size="yes"), "ExtractImageSize must be a boolean"),
    ("extract-image-size-number", base(extract_image_size=1), "ExtractImageSize must be a boolean"),
    ("extract-image-size-true", base(extract_image_size=True), None),
    ("extra-object-ignored", base(extra={"a": 1}), None),
    ("aggr-limit-4", base(aggr_limit=4), None),
    ("aggr-limit-string", base(aggr_limit="4"), "Aggregation limit must be a number"),
    ("aggr-limit-null", base(aggr_limit=None), "Aggregation limit must be a number"),
    ("aggr-limit-bool", base(aggr_limit=True), "Aggregation limit must be a number"),
    ("aggr-limit-negative", base(aggr_limit=-2), "Aggregation limit must be greater than 0"),
    ("aggr-limit-zero", base(aggr_limit=0), "Aggregation limit must be greater than 0"),
    ("aggr-limit-half", base(aggr_limit=0.5), "Aggregation limit must be greater than 0"),
    ("aggr-proxy-empty", base(aggr_proxy=""), None),
    ("aggr-proxy-url", base(aggr_proxy="https://example.org"), None),
    ("aggr-proxy-null", base(aggr_proxy=None), "Aggregation proxy must be a string"),
    ("aggr-proxy-number", base(aggr_proxy=4), "Aggregation proxy must be a string"),
    ("aggr-proxy-not-a-uri", base(aggr_proxy="example"), "Aggregation proxy must be a valid URI"),
]


@pytest.mark.parametrize("body,reason", [c[1:] for c in ACCEPTANCE], ids=[c[0] for c in ACCEPTANCE])
def test_acceptance_case(body: object, reason: str | None) -> None:
    """reason None: accepted (201); otherwise rejected (400) with `reason` in the text."""
    if reason is None:
        job, aggregation = parse(body)
        assert job.id == "" and aggregation.id == "foo"
    else:
        assert reason in rejection(body).reason


# --- what an accepted body becomes -----------------------------------------------------


def test_a_full_body_fills_every_field() -> None:
    body = typed(
        aggr_limit=3.9,
        aggr_proxy="http://proxy:3128",
        extra='{"info":"foobar"}',
        mime_type="!image/vnd.adobe.photoshop,image/*",
        max_retries=4.8,
        extract_image_size=True,
        download_timeout=12.7,
        request_headers={"User-Agent": "Test-Agent", "X-Int": 12, "X-Float": 1.5, "X-Big": 10**20},
        s3_bucket="bucket",
        s3_region="eu-west-1",
        response_code=500,
        image_size="1x1",
        user_agent="Legacy",
    )
    job, aggregation = parse(body)
    assert job == Job(
        id="",
        url=URL,
        aggr_id="foo",
        max_retries=4,
        download_state=State.PENDING,
        callback_type="http",
        callback_dst=CALLBACK,
        callback_url="",
        extra='{"info":"foobar"}',
        mime_type="!image/vnd.adobe.photoshop,image/*",
        extract_image_size=True,
        download_timeout=12,
        request_headers={"User-Agent": "Test-Agent", "X-Int": "12", "X-Float": "1.5", "X-Big": str(10**20)},
        s3_bucket="bucket",
        s3_region="eu-west-1",
    )
    assert aggregation == Aggregation(id="foo", limit=3, proxy="http://proxy:3128", expires_at="")


def test_defaults_when_optional_fields_are_absent() -> None:
    job, aggregation = parse(base(extra=_MISSING))
    assert job.max_retries is None
    assert job.download_timeout == 0
    assert job.request_headers is None
    assert job.extract_image_size is False
    assert (job.extra, job.mime_type, job.s3_bucket, job.s3_region) == ("", "", "", "")
    assert job.download_state == State.PENDING
    assert (aggregation.limit, aggregation.proxy) == (8, "")


def test_callback_url_wins_and_type_and_dst_are_not_stored() -> None:
    job, _ = parse(base(callback_type="kafka", callback_dst="topic"))
    assert (job.callback_url, job.callback_type, job.callback_dst) == (CALLBACK, "", "")


def test_callback_url_wins_even_over_invalid_type_and_dst() -> None:
    job, _ = parse(base(callback_type=5, callback_dst=None))
    assert job.callback_url == CALLBACK


def test_the_originals_rules_leave_the_callback_type_unchecked() -> None:
    job = validation.job_from_fields(typed(callback_type="pigeon", callback_dst="loft"))
    assert (job.callback_type, job.callback_dst) == ("pigeon", "loft")


@pytest.mark.parametrize(
    "changes,expected",
    [
        ({}, ("", "")),
        ({"callback_type": "http"}, ("http", "")),
        ({"callback_type": 5, "callback_dst": None}, ("", "")),
    ],
    ids=["none", "type-alone", "non-strings-ignored"],
)
def test_with_own_bucket_the_callback_is_optional(
    changes: dict[str, object], expected: tuple[str, str]
) -> None:
    job, _ = parse(base(callback_url=_MISSING, s3_bucket="b", s3_region="r", **changes))
    assert (job.callback_type, job.callback_dst) == expected
    assert (job.s3_bucket, job.s3_region) == ("b", "r")


def test_with_own_bucket_an_http_dst_is_still_parsed() -> None:
    error = rejection(base(callback_url=_MISSING, s3_bucket="b", s3_region="r", callback_dst="http://a:b"))
    assert error.reason == 'Could not parse URL: parse "http://a:b": invalid port ":b" after host'


def test_a_dst_that_does_not_start_with_http_is_not_parsed() -> None:
    job, _ = parse(typed(callback_type="kafka", callback_dst="foo bar"))
    assert job.callback_dst == "foo bar"


def test_non_string_s3_values_are_ignored() -> None:
    job, _ = parse(base(s3_bucket=5, s3_region=None))
    assert (job.s3_bucket, job.s3_region) == ("", "")


@pytest.mark.parametrize(
    "extra,stored",
    [("foobar", "foobar"), ("", ""), ({"a": 1}, ""), (["a"], ""), (5, ""), (None, ""), (True, "")],
    ids=["string", "empty", "object", "list", "number", "null", "bool"],
)
def test_extra_is_kept_only_when_a_string(extra: object, stored: str) -> None:
    assert parse(base(extra=extra))[0].extra == stored


@pytest.mark.parametrize(
    "value,stored",
    [(12, "12"), (1.5, "1.5"), (12.0, "12"), (-3, "-3"), (1e-7, "0.0000001"), ("v", "v"), ("", "")],
    ids=["int", "float", "integral-float", "negative", "tiny-float", "string", "empty-string"],
)
def test_header_values_may_be_strings_or_numbers(value: object, stored: str) -> None:
    job, _ = parse(base(request_headers={"X-A": value}))
    assert job.request_headers == {"X-A": stored}


def test_empty_request_headers_are_an_empty_dictionary() -> None:
    assert parse(base(request_headers={}))[0].request_headers == {}


@pytest.mark.parametrize(
    "value,stored", [(0, 0), (3.9, 3), (-0.5, 0), (5, 5)], ids=["zero", "truncated", "minus-half", "five"]
)
def test_max_retries_is_truncated(value: float, stored: int) -> None:
    assert parse(base(max_retries=value))[0].max_retries == stored


@pytest.mark.parametrize("field", ["aggr_limit", "max_retries", "download_timeout"])
def test_huge_numbers_do_not_crash(field: str) -> None:
    job, aggregation = parse(base(**{field: 1e300}))
    assert int(1e300) in (aggregation.limit, job.max_retries, job.download_timeout)


def test_expires_at_is_ignored() -> None:
    for value in ("2999-01-01T00:00:00Z", 5, None):
        _, aggregation = parse(base(expiresAt=value))
        assert aggregation.expires_at == ""


def test_the_originals_rules_let_the_url_be_an_absolute_path() -> None:
    assert validation.job_from_fields(base(url="/x")).url == "/x"


# --- precedence: the first failing rule wins ----------------------------------------------

PRECEDENCE = [
    ("url-before-aggr-id", base(url="foo", aggr_id=4), "Job", "Could not parse URL"),
    ("aggr-id-before-s3", base(aggr_id="", s3_bucket="b"), "Job", "aggr_id cannot be empty"),
    ("s3-before-callback-url", base(s3_bucket="b", callback_url="x"), "Job", "s3_bucket provided"),
    ("callback-url-before-mime", base(callback_url="x", mime_type=5), "Job", "Could not parse callback URL"),
    ("callback-pair-before-mime", typed(callback_dst=5, mime_type=5), "Job", "callback_dst must be"),
    ("mime-before-max-retries", base(mime_type=5, max_retries="x"), "Job", "MimeType pattern"),
    ("max-retries-before-extract", base(max_retries="x", extract_image_size=1), "Job", "Max retries"),
    ("extract-before-timeout", base(extract_image_size=1, download_timeout=0), "Job", "ExtractImageSize"),
    ("timeout-before-headers", base(download_timeout=0, request_headers=1), "Job", "Download timeout"),
    ("job-before-aggregation", base(request_headers=1, aggr_limit="x"), "Job", "request_headers"),
    ("limit-before-proxy", base(aggr_limit="x", aggr_proxy=4), "Aggregation", "Aggregation limit"),
]


@pytest.mark.parametrize("body,target,reason", [c[1:] for c in PRECEDENCE], ids=[c[0] for c in PRECEDENCE])
def test_the_first_failing_rule_wins(body: dict[str, object], target: str, reason: str) -> None:
    error = rejection(body)
    assert error.target == target
    assert error.reason.startswith(reason), error.reason


# --- gourl -----------------------------------------------------------------------------

ACCEPTED_URIS = [
    "/x",
    "http://a",
    "https://example.org",
    "http://foobar.com/a/b?c=d#e",
    "HTTP://A:80/",
    "mailto:someone",
    "*",
    "http://[::1]:8080/x",
    "http://user:p%40ss@host/x",
    "http:?x",
    "//host/path",
    "file:///etc/hosts",
    "http://é.example/ü",
    "x+y.z-w:rest",
]


@pytest.mark.parametrize("raw", ACCEPTED_URIS)
def test_parse_request_uri_accepts(raw: str) -> None:
    gourl.parse_request_uri(raw)  # raises ValueError on rejection
    assert validation.job_from_fields(base(url=raw)).url == raw


REJECTED_URIS = [
    ("foo", "invalid URI for request"),
    ("", "empty url"),
    ("fijfij", "invalid URI for request"),
    ("http//no-scheme", "invalid URI for request"),
    ("example", "invalid URI for request"),
    ("1http://x", "invalid URI for request"),
    (":foo", "missing protocol scheme"),
    ("http://a:b", 'invalid port ":b" after host'),
    ("http://[::1]x/", 'invalid port "x" after host'),
    ("http://[::1", "missing ']' in host"),
    ("http://a\x00", "net/url: invalid control character in URL"),
    ("http://a/\x7f", "net/url: invalid control character in URL"),
    ("\n", "net/url: invalid control character in URL"),
    ("http://a b/", 'invalid character " " in host name'),
    ("http://a#b", 'invalid character "#" in host name'),
    ("http://x/%zz", 'invalid URL escape "%zz"'),
    ("http://x/%4", 'invalid URL escape "%4"'),
    ("http://a%41/", 'invalid URL escape "%41"'),
    ("http://us er@host/", "net/url: invalid userinfo"),
    ("http://u%zz@host/", 'invalid URL escape "%zz"'),
]


@pytest.mark.parametrize("raw,reason", REJECTED_URIS, ids=[repr(r) for r, _ in REJECTED_URIS])
def test_parse_request_uri_rejects_with_go_text(raw: str, reason: str) -> None:
    with pytest.raises(ValueError) as info:
        gourl.parse_request_uri(raw)
    assert str(info.value) == f"parse {gourl.go_quote(raw)}: {reason}"


def test_parse_request_uri_message_quotes_the_input() -> None:
    with pytest.raises(
        ValueError, match=r'^parse "http://a\\x00": net/url: invalid control character in URL$'
    ):
        gourl.parse_request_uri("http://a\x00")


GO_QUOTES = [
    ("plain", "abc", '"abc"'),
    ("empty", "", '""'),
    ("double-quote", 'a"b', '"a\\"b"'),
    ("backslash", "a\\b", '"a\\\\b"'),
    ("whitespace-escapes", "\n\t\r", '"\\n\\t\\r"'),
    ("bell-and-friends", "\a\b\f\v", '"\\a\\b\\f\\v"'),
    ("nul", "\x00", '"\\x00"'),
    ("del", "\x7f", '"\\x7f"'),
    ("non-ascii-printable", "é€😀", '"é€😀"'),
    ("c1-control", "\x85", '"\\u0085"'),
    ("no-break-space", "\u00a0", '"\\u00a0"'),
    ("private-use", "\ue000", '"\\ue000"'),
    ("astral-unassigned", "\U000e0001", '"\\U000e0001"'),
    ("single-quote", "'", '"\'"'),
    ("escaped-byte", "\udce9", '"\\xe9"'),
]


@pytest.mark.parametrize("text,quoted", [c[1:] for c in GO_QUOTES], ids=[c[0] for c in GO_QUOTES])
def test_go_quote(text: str, quoted: str) -> None:
    assert gourl.go_quote(text) == quoted


# --- the later branch's fields (reference Appendix B) -------------------------------------


def job_of(body: dict[str, object]) -> Job:
    job, _ = validation.parse_download_request(json.dumps(body).encode())
    return job


@pytest.mark.parametrize(
    ("subpath", "stored"),
    [
        ("shop/images", "shop/images"),
        ("shop//images", "shop/images"),  # repeated slashes are tolerated
        ("/shop/images/", "shop/images"),  # always relative to the root
        ("", ""),
    ],
)
def test_a_subpath_is_kept_relative_and_clean(subpath: str, stored: str) -> None:
    job = job_of(base(subpath=subpath))
    job.id = "AbCdEfGhIjKlMn"
    assert job.options.subpath == stored
    assert job.relative_path == (f"{stored}/AbC/AbCdEfGhIjKlMn" if stored else "AbC/AbCdEfGhIjKlMn")


@pytest.mark.parametrize("subpath", ["..", "../etc", "a/../b", "a/./b", "./a", "a/..", "a/\x00b"])
def test_a_subpath_that_cleaning_would_change_is_refused(subpath: str) -> None:
    with pytest.raises(RequestRejected) as caught:
        job_of(base(subpath=subpath))
    assert caught.value.reason == f"Invalid path specified: {subpath}"


def test_a_subpath_must_be_a_string() -> None:
    with pytest.raises(RequestRejected, match="subpath must be a string"):
        job_of(base(subpath=["a"]))


def test_failed_downloads_may_go_to_an_error_destination_of_the_callbacks_type() -> None:
    job = job_of(
        base(callback_url=_MISSING, callback_type="kafka", callback_dst="done", callback_error_dst="failed")
    )
    assert (job.options.callback_error_type, job.options.callback_error_dst) == ("", "failed")
    assert job.callback_destination(succeeded=False) == ("kafka", "failed")
    assert job.callback_destination(succeeded=True) == ("kafka", "done")


def test_an_error_destination_may_name_its_own_type() -> None:
    job = job_of(
        base(callback_error_type="sqs", callback_error_dst="https://sqs.eu-west-1.amazonaws.com/1/q")
    )
    assert job.callback_destination(succeeded=False) == ("sqs", "https://sqs.eu-west-1.amazonaws.com/1/q")
    assert job.callback_destination(succeeded=True) == ("http", CALLBACK)


def test_an_http_error_destination_must_parse() -> None:
    with pytest.raises(RequestRejected, match="Could not parse callback error URL"):
        job_of(base(callback_error_type="http", callback_error_dst="http//nope"))


def test_an_error_destination_needs_a_type() -> None:
    with pytest.raises(RequestRejected, match="callback_error_dst needs a callback_error_type"):
        job_of(base(callback_error_dst="http://127.0.0.1:9/errors"))


def test_a_job_with_its_own_bucket_and_only_an_error_destination_counts_as_having_a_callback() -> None:
    body = base(callback_url=_MISSING, s3_bucket="b", s3_region="eu-west-1",
                callback_error_type="http", callback_error_dst="http://127.0.0.1:9/errors")  # fmt: skip
    job = job_of(body)
    assert job.callback_destination(succeeded=False) == ("http", "http://127.0.0.1:9/errors")  # it has one
    assert job.callback_destination(succeeded=True) is None


@pytest.mark.parametrize(
    ("value", "stored"), [(1, 1), (1000, 1000), (2048.0, 2048), (None, 0), (_MISSING, 0)]
)
def test_max_size_is_kept_in_the_jobs_options(value: object, stored: int) -> None:
    job, _ = validation.parse_download_request(encode(base(max_size=value)), max_size_cap=4096)
    assert job.options.max_size == stored


@pytest.mark.parametrize("value", [0, -1, 1.5, "10", True, [], {}])
def test_max_size_must_be_a_positive_integer(value: object) -> None:
    with pytest.raises(RequestRejected) as info:
        validation.parse_download_request(encode(base(max_size=value)), max_size_cap=4096)
    assert (info.value.target, info.value.reason) == ("Job", "max_size must be a positive integer")


def test_max_size_above_the_services_cap_is_refused_not_lowered() -> None:
    assert (
        validation.parse_download_request(encode(base(max_size=4096)), max_size_cap=4096)[0].options.max_size
        == 4096
    )
    with pytest.raises(RequestRejected) as info:
        validation.parse_download_request(encode(base(max_size=4097)), max_size_cap=4096)
    assert info.value.reason == "max_size must not exceed 4096"


def test_download_timeout_above_any_cap_is_accepted_as_the_original_did() -> None:
    # the worker caps it at DOWNLOADER_DOWNLOAD_TIMEOUT_SECONDS; refusing would break old clients
    assert parse(base(download_timeout=10**9))[0].download_timeout == 10**9


# --- refused at the door: what the original accepted and could never do ----------------------

SOCKS_REFUSAL = "is not supported: SOCKS proxies are not available, use an http:// or https:// proxy"
NEVER_SUCCEEDS = [
    ("url-ftp", base(url="ftp://example.org/a.png"), "Job", 'URL scheme must be http or https, was "ftp"'),
    ("url-file", base(url="file:///etc/hosts"), "Job", 'URL scheme must be http or https, was "file"'),
    ("url-path-only", base(url="/x"), "Job", 'URL scheme must be http or https, was ""'),
    ("url-no-host", base(url="http:?x"), "Job", 'URL must name a host: "http:?x"'),
    ("callback-url-ftp", base(callback_url="ftp://x/cb"), "Job", 'callback URL scheme must be http or https, was "ftp"'),
    (
        "callback-type-unknown",
        typed(callback_type="pigeon", callback_dst="loft"),
        "Job",
        'Unknown callback_type "pigeon": must be one of "http", "kafka", "sqs"',
    ),
    (
        "callback-type-upper-case",
        typed(callback_type="HTTP"),
        "Job",
        'Unknown callback_type "HTTP": must be one of "http", "kafka", "sqs"',
    ),
    ("http-callback-dst-not-a-url", typed(callback_dst="loft"), "Job", 'callback_dst scheme must be http or https, was ""'),
    ("http-callback-dst-file", typed(callback_dst="file:///x"), "Job", 'callback_dst scheme must be http or https, was "file"'),
    (
        "own-bucket-dst-without-type",
        base(callback_url=_MISSING, s3_bucket="b", s3_region="r", callback_dst="http://x/cb"),
        "Job",
        'Unknown callback_type "": must be one of "http", "kafka", "sqs"',
    ),
    (
        "error-type-unknown",
        typed(callback_error_type="pigeon", callback_error_dst="loft"),
        "Job",
        'Unknown callback_error_type "pigeon": must be one of "http", "kafka", "sqs"',
    ),
    (
        "error-dst-ftp-with-the-callback-type",
        typed(callback_error_dst="ftp://x/errors"),
        "Job",
        'callback_error_dst scheme must be http or https, was "ftp"',
    ),
    ("mime-no-slash", base(mime_type="jpeg"), "Job", 'Invalid MimeType Pattern, "jpeg": each item of the comma-separated list is a type/subtype pattern such as image/jpeg or image/*'),
    ("mime-star", base(mime_type="*"), "Job", 'Invalid MimeType Pattern, "*": each item'),
    ("mime-negated-no-slash", base(mime_type="!pdf,image/*"), "Job", 'Invalid MimeType Pattern, "!pdf": each item'),
    ("mime-space-separated", base(mime_type="image/jpeg image/png"), "Job", 'Invalid MimeType Pattern, "image/jpeg image/png"'),
    ("mime-no-subtype", base(mime_type="image/"), "Job", 'Invalid MimeType Pattern, "image/"'),
    ("proxy-socks5", base(aggr_proxy="socks5://127.0.0.1:1080"), "Aggregation", f'Aggregation proxy scheme "socks5" {SOCKS_REFUSAL}'),
    ("proxy-socks5h", base(aggr_proxy="socks5h://u:p@127.0.0.1:1080"), "Aggregation", f'Aggregation proxy scheme "socks5h" {SOCKS_REFUSAL}'),
    ("proxy-socks4", base(aggr_proxy="SOCKS4://127.0.0.1:1080"), "Aggregation", f'Aggregation proxy scheme "socks4" {SOCKS_REFUSAL}'),
    ("proxy-ftp", base(aggr_proxy="ftp://proxy:21"), "Aggregation", 'Aggregation proxy scheme must be http or https, was "ftp"'),
    ("proxy-path-only", base(aggr_proxy="/proxy"), "Aggregation", 'Aggregation proxy scheme must be http or https, was ""'),
]  # fmt: skip


@pytest.mark.parametrize(
    ("body", "target", "reason"), [c[1:] for c in NEVER_SUCCEEDS], ids=[c[0] for c in NEVER_SUCCEEDS]
)
def test_what_can_never_succeed_is_refused_with_a_clear_reason(
    body: dict[str, object], target: str, reason: str
) -> None:
    error = rejection(body)
    assert (error.target, error.reason[: len(reason)]) == (target, reason), error.reason


FEASIBLE = [
    ("kafka", typed(callback_type="kafka", callback_dst="topic")),
    ("sqs", typed(callback_type="sqs", callback_dst="https://sqs.eu-west-1.amazonaws.com/1/q")),
    ("error-kafka-beside-http", typed(callback_error_type="kafka", callback_error_dst="errors")),
    ("upper-case-scheme", base(url="HTTPS://EXAMPLE.ORG/a.png", callback_url="HTTP://x/cb")),
    ("mime-any", base(mime_type="*/*")),
    ("mime-list-with-blanks", base(mime_type=" image/jpeg , ,!image/vnd.adobe.photoshop,")),
    ("mime-class-may-be-the-slash", base(mime_type="image[/]jpeg")),
    ("proxy-http", base(aggr_proxy="http://proxy.example:3128")),
    ("proxy-https-with-credentials", base(aggr_proxy="https://u:p@proxy.example")),
]


@pytest.mark.parametrize("body", [c[1] for c in FEASIBLE], ids=[c[0] for c in FEASIBLE])
def test_what_can_succeed_still_passes(body: dict[str, object]) -> None:
    parse(body)


@pytest.mark.parametrize(
    ("body", "target", "reason"),
    [
        (base(url="ftp://x/%zz"), "Job", 'Could not parse URL: parse "ftp://x/%zz": invalid URL escape "%zz"'),
        (typed(callback_type="pigeon", callback_dst="loft", mime_type=5), "Job", "MimeType pattern must be a string"),
        (base(url="ftp://x/a", aggr_limit=_MISSING), "Aggregation", "Aggregation limit must be a number"),
        (base(aggr_proxy="socks5://127.0.0.1:1080", aggr_limit=0), "Aggregation", "Aggregation limit must be greater than 0"),
        (base(mime_type="jpeg", max_retries=-1), "Job", "Max retries must not be negative"),
    ],
)  # fmt: skip
def test_what_the_original_refused_keeps_its_text(body: dict[str, object], target: str, reason: str) -> None:
    error = rejection(body)
    assert (error.target, error.reason) == (target, reason)


def test_the_callback_types_are_those_the_metrics_know() -> None:
    from downloader.observability import metrics

    assert validation.CALLBACK_TYPES == metrics.CALLBACK_BACKENDS
