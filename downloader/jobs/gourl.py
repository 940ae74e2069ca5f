"""Go's `url.ParseRequestURI` and `strconv.Quote`, as far as clients can observe them.

The original API validated every URL of a job with `url.ParseRequestURI` and sent Go's
error text back (`parse "foo": invalid URI for request`); clients match on these texts, so
`validation` reproduces them through this module. Only acceptance and the error text are
emulated: nothing here builds a URL object.
"""

from __future__ import annotations

import re
import string

_SIMPLE_ESCAPES = {
    "\a": "\\a",
    "\b": "\\b",
    "\f": "\\f",
    "\n": "\\n",
    "\r": "\\r",
    "\t": "\\t",
    "\v": "\\v",
    '"': '\\"',
    "\\": "\\\\",
}

_SCHEME_FIRST = frozenset(string.ascii_letters)
_SCHEME_REST = frozenset(string.ascii_letters + string.digits + "+-.")
_HEX = frozenset(string.hexdigits)
# Characters a host may hold unescaped (Go's shouldEscape in encodeHost mode).
_HOST_CHARS = frozenset(string.ascii_letters + string.digits + "!$&'()*+,;=:[]<>\"-_.~")
_USERINFO_CHARS = frozenset(string.ascii_letters + string.digits + "-._:~!$&'()*+,;=%@")
# The URLs jobs carry nearly always: scheme://host[:port][/path][?query] in plain ASCII, no
# userinfo, no IPv6 literal, no %-escape (in the path: no "%" at all), no control character.
# `_request_uri_error` accepts all of them; matching this one regex (in C) decides it at once,
# the character walks below are left to every other URL, and write their error texts.
_PLAIN_URL = re.compile(
    r"[A-Za-z][A-Za-z0-9+.\-]*://"  # scheme (Go's getScheme), authority follows
    r"[A-Za-z0-9\-._~!$&'()*+,;=]*(?::[0-9]*)?"  # host (only _HOST_CHARS), optional port
    r"(?:/[^%?\x00-\x1f\x7f]*)?"  # path: anything but an escape, up to the query
    r"(?:\?[^\x00-\x1f\x7f]*)?"  # query: not checked beyond control characters
)


def go_quote(text: str) -> str:
    """Go's `strconv.Quote` (also what `%q` and `%#v` print for a string)."""
    return '"' + "".join(_quote_char(c) for c in text) + '"'


def _quote_char(char: str) -> str:
    if char in _SIMPLE_ESCAPES:
        return _SIMPLE_ESCAPES[char]
    code = ord(char)
    if 0xD800 <= code <= 0xDFFF:
        # Not valid UTF-8 in Go: each byte is shown; surrogateescape'd bytes as themselves.
        if 0xDC80 <= code <= 0xDCFF:
            return f"\\x{code - 0xDC00:02x}"
        return "".join(f"\\x{b:02x}" for b in char.encode("utf-8", "surrogatepass"))
    if char.isprintable():
        return char
    if code < 0x80:
        return f"\\x{code:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def parse_request_uri(raw: str) -> None:
    """Raise `ValueError` with Go's text when Go's `url.ParseRequestURI(raw)` fails.

    Accepted: an absolute URL (`scheme:...`, the scheme itself is not checked against
    anything) or an absolute path (`/x`). The message is `parse "<raw>": <reason>`.
    """
    reason = _request_uri_error(raw)
    if reason is not None:
        raise ValueError(f"parse {go_quote(raw)}: {reason}")


def _request_uri_error(raw: str) -> str | None:
    if _PLAIN_URL.fullmatch(raw):
        return None
    return _request_uri_error_slow(raw)


def _request_uri_error_slow(raw: str) -> str | None:
    """Go's checks, in its order, for any string: the reason of the first that fails."""
    if any(c < " " or c == "\x7f" for c in raw):
        return "net/url: invalid control character in URL"
    if not raw:
        return "empty url"
    if raw == "*":
        return None
    scheme, rest = _split_scheme(raw)
    if scheme is None:
        return "missing protocol scheme"
    rest = _strip_query(rest)
    if not rest.startswith("/"):
        # With a scheme, a rootless rest is an opaque URL (`mailto:x`); without, an error.
        return None if scheme else "invalid URI for request"
    if scheme and rest.startswith("//"):
        authority, _, path = rest[2:].partition("/")
        error = _authority_error(authority)
        if error is not None:
            return error
        rest = "/" + path
    return _escapes_error(rest, host=False)


def _split_scheme(raw: str) -> tuple[str | None, str]:
    """Go's getScheme: ("", raw) when there is no scheme, (None, "") for a leading colon."""
    for i, char in enumerate(raw):
        if char == ":":
            return (raw[:i], raw[i + 1 :]) if i else (None, "")
        if char in _SCHEME_FIRST or (i and char in _SCHEME_REST):
            continue
        return "", raw
    return "", raw


def _strip_query(rest: str) -> str:
    if rest.endswith("?") and rest.count("?") == 1:
        return rest[:-1]
    return rest.partition("?")[0]


def _authority_error(authority: str) -> str | None:
    userinfo, at, host = authority.rpartition("@")
    error = _host_error(host)
    if error is not None or not at:
        return error
    if any(c not in _USERINFO_CHARS for c in userinfo):
        return "net/url: invalid userinfo"
    return _escapes_error(userinfo, host=False)


def _host_error(host: str) -> str | None:
    if host.startswith("["):
        end = host.rfind("]")
        if end < 0:
            return "missing ']' in host"
        port = host[end + 1 :]
    else:
        colon = host.rfind(":")
        port = host[colon:] if colon >= 0 else ""
    if port and (port[0] != ":" or not all(c in string.digits for c in port[1:])):
        return f"invalid port {go_quote(port)} after host"
    return _escapes_error(host, host=True)


def _escapes_error(text: str, *, host: bool) -> str | None:
    """Go's unescape checks: well-formed `%XX`; in a host, only allowed characters and
    `%XX` for non-ASCII bytes (or `%25`, the IPv6 zone separator)."""
    i = 0
    while i < len(text):
        char = text[i]
        if char == "%":
            escape = text[i : i + 3]
            if len(escape) < 3 or not all(c in _HEX for c in escape[1:]):
                return f"invalid URL escape {go_quote(escape)}"
            if host and int(escape[1], 16) < 8 and escape != "%25":
                return f"invalid URL escape {go_quote(escape)}"
            i += 3
            continue
        if host and ord(char) < 0x80 and char not in _HOST_CHARS:
            return f"invalid character {go_quote(char)} in host name"
        i += 1
    return None
