"""Mime-type sniffing (libmagic over the first KiB) and the job's `mime_type` pattern.

The API parses a pattern when a job is posted (`InvalidPattern` → 400); the worker sniffs the
body's first bytes and checks the result against it (reference 3.6). Items are Go
`filepath.Match` globs; unlike the original (reference 10.1.6), positive items are
alternatives and empty items are ignored, while every `!` item must still hold.
"""

from __future__ import annotations

import dataclasses
import functools
import re
import threading

import magic

from downloader.errors import InvalidPattern as InvalidPattern

#: libmagic looks at this many leading bytes of a body, as the original did.
SNIFF_BYTES = 1024

#: What libmagic reports for an empty buffer; python-magic cannot be asked about b"".
EMPTY_MIME = "application/x-empty"


@dataclasses.dataclass(frozen=True)
class MimePattern:
    """A parsed pattern: any positive item may match, no negated item may match.

    Built by `parse_pattern`; `positives` and `negatives` hold the items as written (negated
    ones without their `!`), the compiled globs are derived from them.
    """

    positives: tuple[str, ...]
    negatives: tuple[str, ...]
    _positive_res: tuple[re.Pattern[str], ...] = dataclasses.field(init=False, repr=False, compare=False)
    _negative_res: tuple[re.Pattern[str], ...] = dataclasses.field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # frozen: the derived fields are set once, here
        object.__setattr__(self, "_positive_res", tuple(_compile_item(g, g) for g in self.positives))
        object.__setattr__(self, "_negative_res", tuple(_compile_item(g, "!" + g) for g in self.negatives))

    def check(self, mime: str) -> str | None:
        """None when `mime` passes, else the message clients see (they look for `mime-type`)."""
        for item, regex in zip(self.negatives, self._negative_res, strict=True):
            if regex.fullmatch(mime):
                return f"Expected mime-type not to be ({item}) found - ({mime})"
        if self._positive_res and not any(regex.fullmatch(mime) for regex in self._positive_res):
            return f"Expected mime-type to be ({' or '.join(self.positives)}), found ({mime})"
        return None


def parse_pattern(pattern: str) -> MimePattern:
    """Split on `,` and trim; the first invalid item, in written order, raises InvalidPattern."""
    positives: list[str] = []
    negatives: list[str] = []
    for raw in pattern.split(","):
        item = raw.strip()
        negated = item.startswith("!")
        glob = item[1:] if negated else item
        # An empty item could only ever match an empty mime type, which libmagic never
        # reports; the original made it fail every download, so it is simply dropped.
        if not glob:
            continue
        _compile_item(glob, item)
        (negatives if negated else positives).append(glob)
    return MimePattern(tuple(positives), tuple(negatives))


def _compile_item(glob: str, item: str) -> re.Pattern[str]:
    try:
        return _compile_glob(glob)
    except ValueError:
        raise InvalidPattern(item) from None


# --- sniffing ------------------------------------------------------------------------

# One libmagic handle for the process. python-magic serialises calls on a handle with its
# own lock (a cookie must not be used by two threads at once); a call takes ~20 us, so even a
# thousand files a second keep it 2 % busy. A handle per thread cost each download thread its
# own 8 MB mapping of the magic database: 64 threads held 500 MB of RSS (bench/stream.py).
_handle: magic.Magic | None = None
_handle_lock = threading.Lock()


def sniff(data: bytes) -> str:
    """libmagic's mime type for the first SNIFF_BYTES of `data`."""
    if not data:
        return EMPTY_MIME
    return str(_magic().from_buffer(data[:SNIFF_BYTES]))


def _magic() -> magic.Magic:
    global _handle
    if _handle is None:
        with _handle_lock:
            if _handle is None:
                _handle = magic.Magic(mime=True)
    return _handle


# --- Go filepath.Match, translated to re ----------------------------------------------


@functools.lru_cache(maxsize=256)
def _compile_glob(glob: str) -> re.Pattern[str]:
    """Translate one glob; ValueError where Go's filepath.Match reports ErrBadPattern."""
    out: list[str] = []
    i, n = 0, len(glob)
    while i < n:
        c = glob[i]
        if c == "*":
            if not out or out[-1] != "[^/]*":  # runs of stars are one star
                out.append("[^/]*")
            i += 1
        elif c == "?":
            out.append("[^/]")
            i += 1
        elif c == "[":
            cls, i = _translate_class(glob, i + 1)
            out.append(cls)
        elif c == "\\":
            if i + 1 >= n:
                raise ValueError("trailing backslash")
            out.append(re.escape(glob[i + 1]))
            i += 2
        else:
            out.append(re.escape(c))
            i += 1
    return re.compile("".join(out))


def _translate_class(glob: str, i: int) -> tuple[str, int]:
    """Translate the class whose body starts at glob[i]; return it and the index after `]`."""
    negated = i < len(glob) and glob[i] == "^"
    if negated:
        i += 1
    ranges: list[str] = []
    count = 0
    while True:
        if i < len(glob) and glob[i] == "]" and count > 0:
            i += 1
            break
        lo, i = _class_char(glob, i)
        hi = lo
        if glob[i] == "-":
            hi, i = _class_char(glob, i + 1)
        count += 1
        # Go accepts a reversed range and it matches nothing; re would reject it.
        if lo <= hi:
            ranges.append(f"{_code_point(lo)}-{_code_point(hi)}")
    body = "".join(ranges)
    # Unlike `*` and `?`, Go lets a class match `/`, negated or not.
    if negated:
        return (f"[^{body}]" if body else "[\\s\\S]"), i
    return (f"[{body}]" if body else "(?!)"), i


def _class_char(glob: str, i: int) -> tuple[str, int]:
    """Go's getEsc: one possibly escaped class character, which must not end the glob."""
    if i >= len(glob) or glob[i] in "-]":
        raise ValueError("bad character class")
    if glob[i] == "\\":
        i += 1
        if i >= len(glob):
            raise ValueError("bad character class")
    if i + 1 >= len(glob):  # the class is never closed
        raise ValueError("unterminated character class")
    return glob[i], i + 1


def _code_point(c: str) -> str:
    return f"\\U{ord(c):08x}"
