"""Resumable downloads: what a cut download leaves behind and when its bytes may be reused.

A download whose response can be resumed (a strong ETag or a Last-Modified, the body sent as
is) keeps `<tmp>/<id>.tmp` and, beside it, a `.resume` record from the moment its body starts,
so a timeout, a network error or a killed worker leaves both. The next attempt asks for the
rest (`Range` + `If-Range`) and appends only when the 206's Content-Range starts where the
file ends; anything else starts again from byte 0.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import re
import time
from collections.abc import Mapping
from pathlib import Path

RECORD_SUFFIX = ".resume"
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")


@dataclasses.dataclass(frozen=True)
class Partial:
    """The bytes a previous attempt stored: their length is the file's size on disk."""

    url: str
    validator: str
    """The strong ETag, or else the Last-Modified, of the response they came from (If-Range)."""
    total: int
    """The whole file's size, when the response said it; 0 when it did not."""
    length: int = 0

    def range_headers(self) -> dict[str, str]:
        return {"Range": f"bytes={self.length}-", "If-Range": self.validator}


def tmp_path(tmp_dir: Path, job_id: str) -> Path:
    return tmp_dir / f"{job_id}.tmp"


def record_path(tmp_dir: Path, job_id: str) -> Path:
    return tmp_dir / f"{job_id}.tmp{RECORD_SUFFIX}"


def validator(headers: Mapping[str, str]) -> str:
    """What If-Range may name: a strong ETag (RFC 9110 forbids weak ones there), else the
    Last-Modified date; "" when the response has neither, and then cannot be resumed."""
    etag = headers.get("ETag", "").strip()
    if etag and not etag.startswith("W/"):
        return etag
    return headers.get("Last-Modified", "").strip()


def resumable(headers: Mapping[str, str]) -> bool:
    """Whether the bytes of this response can be continued by a range request: they must be
    the file's own bytes (no Content-Encoding applied) and name a validator."""
    return unencoded(headers) and bool(validator(headers))


def whole_size(status: int, headers: Mapping[str, str]) -> int:
    """The whole file's size the response declares: Content-Range's total for a 206,
    Content-Length for a 200; 0 when unknown, or when the body is encoded (gzip: the declared
    length is that of the encoded bytes)."""
    if not unencoded(headers):
        return 0
    if status == 206:
        match = _CONTENT_RANGE.fullmatch(headers.get("Content-Range", "").strip())
        return int(match.group(3)) if match and match.group(3) != "*" else 0
    declared = headers.get("Content-Length", "")
    return int(declared) if declared.isdigit() else 0


def continues(partial: Partial, headers: Mapping[str, str]) -> bool:
    """Whether a 206 answers our range request exactly: it starts where the file ends, runs
    to the end of the same whole file, and its bytes are sent as they are."""
    match = _CONTENT_RANGE.fullmatch(headers.get("Content-Range", "").strip())
    if match is None or match.group(3) == "*":
        return False
    first, last, total = int(match.group(1)), int(match.group(2)), int(match.group(3))
    if first != partial.length or last != total - 1:
        return False
    if partial.total and total != partial.total:
        return False
    return unencoded(headers)


def unencoded(headers: Mapping[str, str]) -> bool:
    """Whether the body is sent as the file's own bytes: no Content-Encoding, or identity."""
    return headers.get("Content-Encoding", "").strip().lower() in ("", "identity")


def lookup(tmp_dir: Path, job_id: str, url: str) -> tuple[Partial | None, bool]:
    """The partial download of this job and URL, if one is there to continue, and whether a
    record is on disk at all: one that does not fit is not continued but must still be
    forgotten, while most jobs have none to forget."""
    try:
        text = record_path(tmp_dir, job_id).read_text()
    except FileNotFoundError:
        return None, False
    except (OSError, ValueError):
        return None, True
    return _continuable(text, tmp_path(tmp_dir, job_id), url), True


def _continuable(text: str, bytes_path: Path, url: str) -> Partial | None:
    try:
        record = json.loads(text)
        length = bytes_path.stat().st_size
        partial = Partial(str(record["url"]), str(record["validator"]), int(record["total"]), length)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if partial.url != url or not partial.validator or partial.length == 0:
        return None
    if partial.total and partial.length >= partial.total:
        return None  # nothing left to ask for: a whole file is not resumed, it is fetched again
    return partial


def remember(tmp_dir: Path, job_id: str, partial: Partial) -> None:
    """Write the record (atomically: a half-written one would be read as none)."""
    path = record_path(tmp_dir, job_id)
    staging = path.with_name(path.name + ".new")
    payload = {"url": partial.url, "validator": partial.validator, "total": partial.total}
    staging.write_text(json.dumps(payload, separators=(",", ":")))
    staging.replace(path)


def forget(tmp_dir: Path, job_id: str, *, keep_bytes: bool = False) -> None:
    """Remove the record, and the bytes too unless `keep_bytes` (the file moved on to storage)."""
    record_path(tmp_dir, job_id).unlink(missing_ok=True)
    if not keep_bytes:
        tmp_path(tmp_dir, job_id).unlink(missing_ok=True)


def sweep(tmp_dir: Path, older_than_seconds: float, now: float | None = None) -> int:
    """Delete partial downloads (and their records) untouched for `older_than_seconds`: their
    job ended on another worker, or a killed process left them. A download in progress
    writes its file all the time, so its modification time stays fresh. Returns how many."""
    cutoff = (time.time() if now is None else now) - older_than_seconds
    swept = 0
    for path in tmp_dir.glob("*.tmp*"):
        with contextlib.suppress(OSError):  # gone meanwhile, or not ours to delete
            if path.stat().st_mtime < cutoff:
                path.unlink()
                swept += path.suffix == ".tmp"
    return swept
