"""downloader.fetching.resume: when a partial download may be continued, read from headers and
the record beside the partial file (no network)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from downloader.fetching import resume
from downloader.fetching.resume import Partial

URL = "http://files.example/big.bin"
DATE = "Wed, 02 Dec 2026 10:00:00 GMT"


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"ETag": '"abc"', "Last-Modified": DATE}, '"abc"'),
        ({"ETag": 'W/"abc"', "Last-Modified": DATE}, DATE),  # If-Range takes no weak ETag
        ({"ETag": 'W/"abc"'}, ""),
        ({"Last-Modified": DATE}, DATE),
        ({}, ""),
    ],
)
def test_the_validator_is_a_strong_etag_or_else_the_last_modified_date(
    headers: dict[str, str], expected: str
) -> None:
    assert resume.validator(headers) == expected


def test_only_unencoded_bytes_with_a_validator_can_be_continued() -> None:
    assert resume.resumable({"ETag": '"a"'})
    assert resume.resumable({"ETag": '"a"', "Content-Encoding": "identity"})
    assert not resume.resumable({"ETag": '"a"', "Content-Encoding": "gzip"})
    assert not resume.resumable({"Content-Length": "10"})


def test_the_whole_size_comes_from_content_range_or_content_length() -> None:
    assert resume.whole_size(206, {"Content-Range": "bytes 40-99/100", "Content-Length": "60"}) == 100
    assert resume.whole_size(206, {"Content-Range": "bytes 40-99/*"}) == 0
    assert resume.whole_size(200, {"Content-Length": "100"}) == 100
    assert resume.whole_size(200, {}) == 0
    assert resume.whole_size(200, {"Content-Length": "100", "Content-Encoding": "gzip"}) == 0


@pytest.mark.parametrize(
    ("content_range", "continues"),
    [
        ("bytes 40-99/100", True),
        ("bytes 0-99/100", False),  # the whole file again, as a 206
        ("bytes 40-79/100", False),  # not to the end
        ("bytes 40-119/120", False),  # another whole file
        ("bytes 40-99/*", False),
        ("", False),
        ("pages 40-99/100", False),
    ],
)
def test_a_206_continues_only_from_where_the_file_ends_to_the_same_end(
    content_range: str, continues: bool
) -> None:
    partial = Partial(URL, '"a"', total=100, length=40)
    assert resume.continues(partial, {"Content-Range": content_range}) is continues


def test_a_206_of_unknown_total_at_first_continues_when_it_starts_at_the_end() -> None:
    partial = Partial(URL, '"a"', total=0, length=40)
    assert resume.continues(partial, {"Content-Range": "bytes 40-99/100"})
    assert not resume.continues(partial, {"Content-Range": "bytes 40-99/100", "Content-Encoding": "gzip"})


def test_the_range_request_names_the_offset_and_the_validator() -> None:
    assert Partial(URL, '"a"', 100, 40).range_headers() == {"Range": "bytes=40-", "If-Range": '"a"'}


def test_a_record_round_trips_and_its_length_is_the_file_on_disk(tmp_path: Path) -> None:
    resume.tmp_path(tmp_path, "job").write_bytes(b"x" * 40)
    resume.remember(tmp_path, "job", Partial(URL, '"a"', total=100))
    assert resume.lookup(tmp_path, "job", URL)[0] == Partial(URL, '"a"', 100, 40)


@pytest.mark.parametrize(
    ("url", "size", "total"),
    [
        ("http://files.example/other.bin", 40, 100),  # another URL
        (URL, 0, 100),  # nothing stored
        (URL, 100, 100),  # already whole: fetched again, not resumed
    ],
)
def test_a_record_that_does_not_fit_is_not_used(tmp_path: Path, url: str, size: int, total: int) -> None:
    resume.tmp_path(tmp_path, "job").write_bytes(b"x" * size)
    resume.remember(tmp_path, "job", Partial(URL, '"a"', total=total))
    assert resume.lookup(tmp_path, "job", url)[0] is None


def test_an_unreadable_record_or_a_missing_file_is_none(tmp_path: Path) -> None:
    assert resume.lookup(tmp_path, "job", URL)[0] is None
    resume.record_path(tmp_path, "job").write_text("{not json")
    resume.tmp_path(tmp_path, "job").write_bytes(b"x")
    assert resume.lookup(tmp_path, "job", URL)[0] is None


def test_lookup_also_tells_whether_a_record_is_there_to_forget(tmp_path: Path) -> None:
    assert resume.lookup(tmp_path, "job", URL) == (None, False)  # most jobs: nothing on disk
    resume.tmp_path(tmp_path, "job").write_bytes(b"x" * 4)
    resume.remember(tmp_path, "job", Partial(URL, '"a"', total=10))
    assert resume.lookup(tmp_path, "job", URL) == (Partial(URL, '"a"', 10, 4), True)
    assert resume.lookup(tmp_path, "job", "http://files.example/other") == (None, True)  # still to forget
    resume.record_path(tmp_path, "job").write_bytes(b"\xff\xfe not text")
    assert resume.lookup(tmp_path, "job", URL) == (None, True)


def test_forget_removes_the_record_and_the_bytes_unless_kept(tmp_path: Path) -> None:
    resume.tmp_path(tmp_path, "job").write_bytes(b"x")
    resume.remember(tmp_path, "job", Partial(URL, '"a"', total=10))
    resume.forget(tmp_path, "job", keep_bytes=True)
    assert [p.name for p in tmp_path.iterdir()] == ["job.tmp"]
    resume.forget(tmp_path, "job")
    assert list(tmp_path.iterdir()) == []
    resume.forget(tmp_path, "job")  # nothing there: no error


def test_the_sweep_deletes_partials_untouched_for_the_retention_and_keeps_fresh_ones(tmp_path: Path) -> None:
    old, fresh = resume.tmp_path(tmp_path, "old"), resume.tmp_path(tmp_path, "fresh")
    for path in (old, fresh):
        path.write_bytes(b"x")
    resume.remember(tmp_path, "old", Partial(URL, '"a"', total=10))
    for path in (old, resume.record_path(tmp_path, "old")):
        os.utime(path, (1_000, 1_000))
    assert resume.sweep(tmp_path, older_than_seconds=3600, now=1_000 + 3601) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fresh.tmp"]
