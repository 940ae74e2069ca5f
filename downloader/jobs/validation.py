"""POST /download bodies: decoding and validation into a `Job` and an `Aggregation`.

The rules, their order and their reason texts are the original's (reference 1.1): clients
match on them. The API calls `parse_download_request`; a `RequestRejected` names which of
the two decodings failed. Two deliberate fixes: numeric `request_headers` values are accepted
(bug 10.1.7) and a client's `expiresAt` is ignored (bug 10.1.10). New: `max_size` may lower
the service's download size cap, never raise it.

New too: what the original accepted and could never do is refused at the door, after every
rule of the original held (so whatever it refused keeps its text): a `url`, `callback_url`
or http callback destination that is not an http(s) URL with a host, a callback type no
notifier has, a `mime_type` item that cannot match a `type/subtype`, and a proxy other than
http(s) (SOCKS needs PySocks, which is not installed: such a proxy failed every download).
"""

from __future__ import annotations

import decimal
import json
import math
import re
import urllib.parse
from collections.abc import Iterator, Mapping

from downloader.errors import RequestRejected
from downloader.fetching import mime
from downloader.jobs import gourl
from downloader.jobs.models import Aggregation, Job, JobOptions, State

_END_OF_INPUT = "unexpected end of JSON input"
_LITERALS = {"t": "true", "f": "false", "n": "null"}
_HEX_DIGITS = frozenset("0123456789abcdefABCDEF")
# A `\uD800`-`\uDFFF` escape: Go decodes a lone surrogate as U+FFFD, Python keeps it.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
_SURROGATE = re.compile("[\ud800-\udfff]")


class _Invalid(Exception):
    """One rule failed; turned into `RequestRejected` with the decoding's name."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class _NumberOutOfRange(Exception):
    """A number that does not fit a float64 (Go: `json: cannot unmarshal number ...`)."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text


class _NotJson(Exception):
    """`NaN`, `Infinity`, `-Infinity`: Python would accept them, Go's scanner does not."""

    def __init__(self, constant: str) -> None:
        super().__init__(constant)
        self.constant = constant


# --- public API ------------------------------------------------------------------------


#: The `callback_type`s a notifier delivers with (`worker.notifier.build_backends`; `kafka` needs
#: brokers configured, which only the notifier's settings tell).
CALLBACK_TYPES = ("http", "kafka", "sqs")
#: Schemes of what is fetched or called back over HTTP, and of an aggregation's proxy.
HTTP_SCHEMES = ("http", "https")


def parse_download_request(body: bytes, max_size_cap: int | None = None) -> tuple[Job, Aggregation]:
    """Validate `body` as a Job, then as an Aggregation; the first failing rule raises.

    `max_size_cap` is the service's largest download: a larger `max_size` is refused. The
    original's rules come first, then `check_feasible`'s.
    """
    try:
        fields = decode_body(body)
        job = job_from_fields(fields, max_size_cap)
    except RecursionError:
        # Python's decoder (and our walks over the decoded values) give up on deep nesting.
        raise RequestRejected("Job", _too_deep_message(body)) from None
    aggregation = aggregation_from_fields(fields)
    check_feasible(job, aggregation)
    return job, aggregation


def check_feasible(job: Job, aggregation: Aggregation) -> None:
    """Refuse a job the original accepted but that can never succeed (first failure raises):
    its download, callback or error callback could not be made, or its mime_type could never
    match, or its aggregation's proxy cannot be used."""
    try:
        _check_http_url(job.url, "URL")
        if job.callback_url:
            _check_http_url(job.callback_url, "callback URL")
        elif job.callback_dst:
            _check_destination(job.callback_type, job.callback_dst, "callback_type", "callback_dst")
        if job.options.callback_error_dst:
            kind = job.options.callback_error_type or job.callback_type
            name = "callback_error_type" if job.options.callback_error_type else "callback_type"
            _check_destination(kind, job.options.callback_error_dst, name, "callback_error_dst")
        if job.mime_type:
            _check_mime_items(job.mime_type)
    except _Invalid as exc:
        raise RequestRejected("Job", exc.reason) from None
    try:
        if aggregation.proxy:
            _check_proxy(aggregation.proxy)
    except _Invalid as exc:
        raise RequestRejected("Aggregation", exc.reason) from None


def decode_body(body: bytes) -> dict[str, object]:
    """The body as Go's `json.Unmarshal` into a `map[string]interface{}` leaves it.

    JSON `null` is an empty object (Go leaves a nil map); other non-objects and syntax
    errors raise `RequestRejected("Job", <Go's error text>)`.
    """
    text, bad_byte_at = _body_text(body)
    try:
        value = _decode(text)
    except _Invalid as exc:
        raise RequestRejected("Job", exc.reason) from None
    fields = _top_level_object(value)
    if bad_byte_at is not None:
        # Go would keep such bytes (as U+FFFD) inside strings; we do not store them.
        char = _go_byte(body[bad_byte_at])
        raise RequestRejected("Job", f"invalid character {char} in string literal")
    if _SURROGATE_ESCAPE.search(text):
        return {_go_string(k): _replace_surrogates(v) for k, v in fields.items()}
    return fields


def job_from_fields(fields: Mapping[str, object], max_size_cap: int | None = None) -> Job:
    """A pending `Job` (no id yet) from a decoded body; rules in the original's order."""
    try:
        return _job(fields, max_size_cap)
    except _Invalid as exc:
        raise RequestRejected("Job", exc.reason) from None


def aggregation_from_fields(fields: Mapping[str, object]) -> Aggregation:
    """The `Aggregation` a body asks for (`aggr_id`, `aggr_limit`, `aggr_proxy`)."""
    try:
        return Aggregation(
            id=_required_id(fields, "Aggregation ID"),
            limit=_aggregation_limit(fields),
            proxy=_aggregation_proxy(fields),
        )
    except _Invalid as exc:
        raise RequestRejected("Aggregation", exc.reason) from None


# --- the job's fields, in validation order ----------------------------------------------


def _job(fields: Mapping[str, object], max_size_cap: int | None) -> Job:
    url = _url(fields)
    aggr_id = _required_id(fields, "aggr_id")
    s3_bucket, s3_region = _s3(fields)
    callback_url = _callback_url(fields)
    callback_type, callback_dst = ("", "") if callback_url else _callback_pair(fields, s3_bucket)
    error_type, error_dst = _error_destination(fields, callback_type)
    options = JobOptions(
        subpath=_subpath(fields),
        callback_error_type=error_type,
        callback_error_dst=error_dst,
        max_size=_max_size(fields, max_size_cap),
        host_limit=_host_limit(fields),
    )
    extra = fields.get("extra")
    return Job(
        id="",
        url=url,
        aggr_id=aggr_id,
        download_state=State.PENDING,
        callback_url=callback_url,
        callback_type=callback_type,
        callback_dst=callback_dst,
        extra=extra if isinstance(extra, str) else "",
        mime_type=_mime_type(fields),
        max_retries=_max_retries(fields),
        extract_image_size=_extract_image_size(fields),
        download_timeout=_download_timeout(fields),
        request_headers=_request_headers(fields),
        s3_bucket=s3_bucket,
        s3_region=s3_region,
        options=options,
    )


def _url(fields: Mapping[str, object]) -> str:
    url = fields.get("url")
    if not isinstance(url, str):
        raise _Invalid("URL must be a string")
    _check_request_uri(url, "Could not parse URL")
    return url


def _required_id(fields: Mapping[str, object], name: str) -> str:
    aggr_id = fields.get("aggr_id")
    if not isinstance(aggr_id, str):
        raise _Invalid(f"{name} must be a string")
    if not aggr_id:
        raise _Invalid(f"{name} cannot be empty")
    return aggr_id


def _s3(fields: Mapping[str, object]) -> tuple[str, str]:
    """(bucket, region); values that are not strings count as absent."""
    bucket, region = fields.get("s3_bucket"), fields.get("s3_region")
    bucket = bucket if isinstance(bucket, str) else ""
    region = region if isinstance(region, str) else ""
    if region and not bucket:
        raise _Invalid("s3_region provided without an s3_bucket")
    if bucket and not region:
        raise _Invalid("s3_bucket provided without an s3_region")
    return bucket, region


def _callback_url(fields: Mapping[str, object]) -> str:
    callback_url = fields.get("callback_url")
    if not isinstance(callback_url, str):
        return ""
    _check_request_uri(callback_url, "Could not parse callback URL")
    return callback_url


def _callback_pair(fields: Mapping[str, object], s3_bucket: str) -> tuple[str, str]:
    """(callback_type, callback_dst); both required unless the job has its own bucket."""
    kind, dst = fields.get("callback_type"), fields.get("callback_dst")
    if not isinstance(kind, str) and not s3_bucket:
        raise _Invalid("callback_type must be a string")
    if not isinstance(dst, str) and not s3_bucket:
        raise _Invalid("callback_dst must be a string")
    kind = kind if isinstance(kind, str) else ""
    dst = dst if isinstance(dst, str) else ""
    if not s3_bucket and not (kind and dst):
        raise _Invalid(
            f"You need to provide both callback_type ({gourl.go_quote(kind)}) "
            f"and callback_dst ({gourl.go_quote(dst)})"
        )
    if dst.startswith("http"):
        _check_request_uri(dst, "Could not parse URL")
    return kind, dst


def _subpath(fields: Mapping[str, object]) -> str:
    """The later branch's `subpath`: repeated slashes are tolerated (and collapsed); a path
    that cleaning would change otherwise (`.` or `..` segments) is refused, so no job can
    write outside the storage root or another job's prefix. Leading and trailing slashes
    are dropped: the path is always relative to the root."""
    value = fields.get("subpath")
    if value is None:
        return ""
    if not isinstance(value, str):
        raise _Invalid("subpath must be a string")
    segments = [segment for segment in value.split("/") if segment]
    if any(segment in (".", "..") for segment in segments) or "\x00" in value:
        raise _Invalid(f"Invalid path specified: {value}")
    return "/".join(segments)


def _error_destination(fields: Mapping[str, object], callback_type: str) -> tuple[str, str]:
    """`callback_error_type`/`callback_error_dst`: where failed downloads are reported."""
    kind, dst = fields.get("callback_error_type"), fields.get("callback_error_dst")
    kind = kind if isinstance(kind, str) else ""
    dst = dst if isinstance(dst, str) else ""
    if not dst:
        return "", ""
    if not (kind or callback_type):
        raise _Invalid("callback_error_dst needs a callback_error_type (or a callback_type)")
    if dst.startswith("http"):
        _check_request_uri(dst, "Could not parse callback error URL")
    return kind, dst


def _max_size(fields: Mapping[str, object], cap: int | None) -> int:
    """Bytes; 0 when absent or null (the service's cap applies). Refused above the cap rather
    than lowered to it: a client asking for more than it can get should hear so at once."""
    value = fields.get("max_size")
    if value is None:
        return 0
    number = _number(value)
    if number is None or not float(number).is_integer() or number <= 0:
        raise _Invalid("max_size must be a positive integer")
    if cap is not None and number > cap:
        raise _Invalid(f"max_size must not exceed {cap}")
    return int(number)


def _host_limit(fields: Mapping[str, object]) -> int:
    """`aggr_host_limit`: 0 when absent or null (the service's host limits apply)."""
    value = fields.get("aggr_host_limit")
    if value is None:
        return 0
    number = _number(value)
    if number is None or not float(number).is_integer() or number <= 0:
        raise _Invalid("aggr_host_limit must be a positive integer")
    return int(number)


def _mime_type(fields: Mapping[str, object]) -> str:
    if "mime_type" not in fields:
        return ""
    pattern = fields["mime_type"]
    if not isinstance(pattern, str):
        raise _Invalid("MimeType pattern must be a string")
    if pattern:
        try:
            mime.parse_pattern(pattern)
        except mime.InvalidPattern as exc:
            raise _Invalid(str(exc)) from None
    return pattern


def _max_retries(fields: Mapping[str, object]) -> int | None:
    if "max_retries" not in fields:
        return None
    value = fields["max_retries"]
    number = _number(value)
    if number is None:
        raise _Invalid(f"Max retries must be a number, was: {_go_type(value)}")
    if int(number) < 0:
        raise _Invalid("Max retries must not be negative")
    return int(number)


def _extract_image_size(fields: Mapping[str, object]) -> bool:
    value = fields.get("extract_image_size", False)
    if not isinstance(value, bool):
        raise _Invalid("ExtractImageSize must be a boolean")
    return value


def _download_timeout(fields: Mapping[str, object]) -> int:
    """Seconds; 0 when absent (no overall timeout was asked for)."""
    if "download_timeout" not in fields:
        return 0
    number = _number(fields["download_timeout"])
    if number is None:
        raise _Invalid("Download timeout must be a number")
    if int(number) <= 0:
        raise _Invalid("Download timeout must be greater than 0")
    return int(number)


def _request_headers(fields: Mapping[str, object]) -> dict[str, str] | None:
    if "request_headers" not in fields:
        return None
    headers = fields["request_headers"]
    if not isinstance(headers, dict):
        raise _Invalid("request_headers must be a dictionary")
    return {str(name): _header_value(value) for name, value in headers.items()}


def _header_value(value: object) -> str:
    if isinstance(value, str):
        return value
    number = _number(value)
    if number is None:
        raise _Invalid(
            f"Values of request headers keys must be either strings or ints.Given value is {_go_value(value)}"
        )
    return _decimal_text(number)


# --- the aggregation's fields -----------------------------------------------------------


def _aggregation_limit(fields: Mapping[str, object]) -> int:
    number = _number(fields.get("aggr_limit"))
    if number is None:
        raise _Invalid("Aggregation limit must be a number")
    if int(number) <= 0:
        raise _Invalid("Aggregation limit must be greater than 0")
    return int(number)


def _aggregation_proxy(fields: Mapping[str, object]) -> str:
    if "aggr_proxy" not in fields:
        return ""
    proxy = fields["aggr_proxy"]
    if not isinstance(proxy, str):
        raise _Invalid("Aggregation proxy must be a string")
    if proxy:
        _check_request_uri(proxy, "Aggregation proxy must be a valid URI")
    return proxy


# --- what can never succeed (check_feasible) -------------------------------------------


def _check_http_url(url: str, name: str) -> None:
    parts = _split(url, name)
    scheme = parts.scheme.lower()
    if scheme not in HTTP_SCHEMES:
        raise _Invalid(f"{name} scheme must be http or https, was {gourl.go_quote(scheme)}")
    if not parts.hostname:
        raise _Invalid(f"{name} must name a host: {gourl.go_quote(url)}")


def _split(url: str, name: str) -> urllib.parse.SplitResult:
    try:
        return urllib.parse.urlsplit(url)
    except ValueError as exc:  # Go's parser let it pass (a bracketed host it does not check)
        raise _Invalid(f"{name} cannot be used: {exc}") from None


def _check_destination(kind: str, dst: str, type_name: str, dst_name: str) -> None:
    if kind not in CALLBACK_TYPES:
        known = ", ".join(map(gourl.go_quote, CALLBACK_TYPES))
        raise _Invalid(f"Unknown {type_name} {gourl.go_quote(kind)}: must be one of {known}")
    if kind == "http":
        _check_http_url(dst, dst_name)


def _check_mime_items(pattern: str) -> None:
    """Each item must be able to match a mime type, which is always `type/subtype`."""
    for raw in pattern.split(","):
        item = raw.strip()
        glob = item.removeprefix("!")
        if not glob:
            continue  # dropped by mime.parse_pattern
        # A class (`[/]`) may match the slash itself; otherwise exactly one, inside.
        slashes = glob.count("/")
        if "[" not in glob and (slashes != 1 or glob.startswith("/") or glob.endswith("/")):
            raise _Invalid(
                f"Invalid MimeType Pattern, {gourl.go_quote(item)}: each item of the comma-separated "
                "list is a type/subtype pattern such as image/jpeg or image/*"
            )


def _check_proxy(proxy: str) -> None:
    parts = _split(proxy, "Aggregation proxy")
    scheme = parts.scheme.lower()
    if scheme.startswith("socks"):
        raise _Invalid(
            f"Aggregation proxy scheme {gourl.go_quote(scheme)} is not supported: "
            "SOCKS proxies are not available, use an http:// or https:// proxy"
        )
    if scheme not in HTTP_SCHEMES:
        raise _Invalid(f"Aggregation proxy scheme must be http or https, was {gourl.go_quote(scheme)}")
    if not parts.hostname:
        raise _Invalid("Aggregation proxy must name a host")


# --- values as Go sees them -------------------------------------------------------------


def _check_request_uri(value: str, prefix: str) -> None:
    try:
        gourl.parse_request_uri(value)
    except ValueError as exc:
        raise _Invalid(f"{prefix}: {exc}") from None


def _number(value: object) -> int | float | None:
    """A JSON number (Go's float64); JSON booleans are not numbers, unlike Python's."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return value


def _decimal_text(number: int | float) -> str:
    """12 -> "12", 12.0 -> "12", 1.5 -> "1.5", 1e-7 -> "0.0000001"."""
    if isinstance(number, int):
        return str(number)
    if number.is_integer():
        return str(int(number))
    return format(decimal.Decimal(repr(number)), "f")


def _go_type(value: object) -> str:
    """Go's `%T` of a decoded JSON value."""
    if value is None:
        return "<nil>"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "[]interface {}"
    if isinstance(value, dict):
        return "map[string]interface {}"
    return "float64"


def _go_value(value: object) -> str:
    """Go's `%v` of a decoded JSON value (maps print with sorted keys, as Go's fmt does)."""
    if value is None:
        return "<nil>"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return "[" + " ".join(_go_value(item) for item in value) + "]"
    if isinstance(value, dict):
        return "map[" + " ".join(f"{k}:{_go_value(value[k])}" for k in sorted(value)) + "]"
    number = _number(value)
    return _go_float(float(number)) if number is not None else str(value)


def _go_float(number: float) -> str:
    """Go's `%v` of a float64 (`%g`, shortest digits): exponent form below 1e-4 or from 1e6."""
    if number == 0:
        return "-0" if math.copysign(1.0, number) < 0 else "0"
    sign, digit_tuple, exponent = decimal.Decimal(repr(number)).normalize().as_tuple()
    assert isinstance(exponent, int)
    digits = "".join(map(str, digit_tuple))
    point = len(digits) + exponent  # digits before the decimal point
    prefix = "-" if sign else ""
    if not -4 <= point - 1 < 6:
        mantissa = digits[0] + ("." + digits[1:] if len(digits) > 1 else "")
        return f"{prefix}{mantissa}e{point - 1:+03d}"
    if point <= 0:
        return f"{prefix}0.{'0' * -point}{digits}"
    if point >= len(digits):
        return prefix + digits + "0" * (point - len(digits))
    return f"{prefix}{digits[:point]}.{digits[point:]}"


def _go_string(text: str) -> str:
    return text if text.isascii() else _SURROGATE.sub("\ufffd", text)


def _replace_surrogates(value: object) -> object:
    if isinstance(value, str):
        return _go_string(value)
    if isinstance(value, list):
        return [_replace_surrogates(item) for item in value]
    if isinstance(value, dict):
        return {_go_string(k): _replace_surrogates(v) for k, v in value.items()}
    return value


# --- JSON decoding with Go's error texts ------------------------------------------------


def _parse_float(text: str) -> float:
    number = float(text)
    if math.isinf(number):
        raise _NumberOutOfRange(text)
    return number


def _parse_int(text: str) -> int:
    # float() first: int() of thousands of digits is slow or refused, Go fails it anyway.
    _parse_float(text)
    return int(text)


def _reject_constant(constant: str) -> object:
    raise _NotJson(constant)


_DECODER = json.JSONDecoder(parse_float=_parse_float, parse_int=_parse_int, parse_constant=_reject_constant)
# Used only after a number was out of range, to find out whether a syntax error comes
# first (Go checks the whole syntax before it converts any number).
_SYNTAX_DECODER = json.JSONDecoder(parse_int=float, parse_constant=_reject_constant)


def _body_text(body: bytes) -> tuple[str, int | None]:
    """The body as text, and the offset of its first byte that is not UTF-8 (or None)."""
    try:
        return body.decode("utf-8"), None
    except UnicodeDecodeError as exc:
        return body.decode("utf-8", "surrogateescape"), exc.start


def _decode(text: str) -> object:
    try:
        return _DECODER.decode(text)
    except json.JSONDecodeError as exc:
        raise _Invalid(_syntax_message(exc.msg, text, exc.pos)) from None
    except _NotJson as exc:
        raise _Invalid(_constant_message(exc.constant)) from None
    except _NumberOutOfRange as exc:
        return _out_of_range(text, exc.text)


def _out_of_range(text: str, number: str) -> object:
    try:
        value = _SYNTAX_DECODER.decode(text)
    except json.JSONDecodeError as exc:
        raise _Invalid(_syntax_message(exc.msg, text, exc.pos)) from None
    except _NotJson as exc:
        raise _Invalid(_constant_message(exc.constant)) from None
    if isinstance(value, dict):
        raise _Invalid(f"json: cannot unmarshal number {number} into Go value of type float64")
    return value  # the top-level type error wins, as in Go


def _top_level_object(value: object) -> dict[str, object]:
    if value is None:
        return {}
    if isinstance(value, dict):
        return value
    if isinstance(value, bool):
        kind = "bool"
    elif isinstance(value, str):
        kind = "string"
    elif isinstance(value, list):
        kind = "array"
    else:
        kind = "number"
    raise RequestRejected(
        "Job", f"json: cannot unmarshal {kind} into Go value of type map[string]interface {{}}"
    )


def _constant_message(constant: str) -> str:
    if constant.startswith("-"):
        return f"invalid character {_go_char(constant[1])} in numeric literal"
    return f"invalid character {_go_char(constant[0])} looking for beginning of value"


def _syntax_message(msg: str, text: str, pos: int) -> str:
    """Go's scanner error for the place where Python's decoder stopped."""
    if pos >= len(text) or msg.startswith("Unterminated string"):
        return _END_OF_INPUT
    char = text[pos]
    if msg == "Expecting value":
        return _value_start_message(text, pos)
    if msg.startswith("Expecting property name"):
        context = "looking for beginning of object key string"
    elif msg.startswith("Expecting ':'"):
        context = "after object key"
    elif msg.startswith("Expecting ','"):
        in_object = _innermost_container(text, pos) == "{"
        context = "after object key:value pair" if in_object else "after array element"
    elif msg.startswith("Invalid control character"):
        context = "in string literal"
    elif msg.startswith("Invalid \\escape"):
        return _char_message(text, pos + 1, "in string escape code")
    elif msg.startswith("Invalid \\uXXXX"):
        return _unicode_escape_message(text, pos)
    elif msg.startswith("Extra data"):
        context = "after top-level value"
    else:
        context = "looking for beginning of value"
    return f"invalid character {_go_char(char)} {context}"


def _value_start_message(text: str, pos: int) -> str:
    char = text[pos]
    if char in _LITERALS:
        literal = _LITERALS[char]
        for offset, expected in enumerate(literal[1:], start=1):
            if text[pos + offset : pos + offset + 1] != expected:
                context = f"in literal {literal} (expecting {_go_char(expected)})"
                return _char_message(text, pos + offset, context)
    if char == "-":
        return _char_message(text, pos + 1, "in numeric literal")
    return _char_message(text, pos, "looking for beginning of value")


def _unicode_escape_message(text: str, pos: int) -> str:
    """`pos` is the backslash of a `\\uXXXX` escape with a bad or missing hex digit."""
    for index in range(pos + 2, pos + 6):
        if text[index : index + 1] not in _HEX_DIGITS:
            return _char_message(text, index, "in \\u hexadecimal character escape")
    return _END_OF_INPUT


def _char_message(text: str, index: int, context: str) -> str:
    if index >= len(text):
        return _END_OF_INPUT
    return f"invalid character {_go_char(text[index])} {context}"


def _go_char(char: str) -> str:
    """Go's scanner `quoteChar` of the byte a character starts with."""
    code = ord(char)
    if 0xDC80 <= code <= 0xDCFF:  # a byte that was not UTF-8 (surrogateescape)
        return _go_byte(code - 0xDC00)
    if code >= 0x80:
        return _go_byte(char.encode("utf-8", "surrogatepass")[0])
    return _go_byte(code)


def _go_byte(byte: int) -> str:
    """Go's `quoteChar(c byte)`: the byte as the rune of the same value, in single quotes."""
    if chr(byte) == "'":
        return "'\\''"
    if chr(byte) == '"':
        return "'\"'"
    return "'" + gourl.go_quote(chr(byte))[1:-1] + "'"


def _innermost_container(text: str, pos: int) -> str:
    """The `{` or `[` that encloses `pos`, "" at the top level."""
    stack: list[str] = []
    for char in _structure(text[:pos]):
        if char in "[{":
            stack.append(char)
        elif stack:
            stack.pop()
    return stack[-1] if stack else ""


def _too_deep_message(body: bytes) -> str:
    """Python's decoder gave up on nesting (Go's limit is 10000 levels, ours is lower):
    name the opener of the deepest level."""
    depth = deepest = 0
    opener = "["
    for char in _structure(body.decode("utf-8", "surrogateescape")):
        depth += 1 if char in "[{" else -1
        if depth > deepest:
            deepest, opener = depth, char
    return f"invalid character {_go_char(opener)} exceeded max depth"


def _structure(text: str) -> Iterator[str]:
    """The brackets and braces of a JSON text, skipping those inside strings."""
    in_string = escaped = False
    for char in text:
        if in_string:
            in_string = escaped or char != '"'
            escaped = not escaped and char == "\\"
        elif char == '"':
            in_string = True
        elif char in "[]{}":
            yield char
