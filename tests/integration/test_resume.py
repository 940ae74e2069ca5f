"""Resumable downloads at the fetcher: a cut transfer continues with Range + If-Range from the
bytes kept on disk, only when the server's 206 continues exactly the same file; otherwise it
starts again. A real HTTP server on 127.0.0.1 that honours ranges counts the bytes it sends."""

from __future__ import annotations

import hashlib
import struct
import threading
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.range_server import RangeServer
from support.servers import FileServer

from downloader.errors import DownloadError, FailureReason
from downloader.fetching import resume
from downloader.fetching.download import Fetched, Fetcher, FetchLimits
from downloader.fetching.outbound import PERMISSIVE, Outbound

JOB = "ReSuMeJoB00001"
MIB = 1024 * 1024


@pytest.fixture
def content() -> bytes:
    # 64 MiB that are not all alike, so a wrong offset could never produce the same bytes
    block = hashlib.sha256(b"seed").digest() * (MIB // 32)
    return b"".join(bytes([i]) + block[1:] for i in range(64))


@pytest.fixture
def server(content: bytes) -> Iterator[RangeServer]:
    srv = RangeServer(content)
    yield srv
    srv.shutdown()
    srv.server_close()


@pytest.fixture
def fetcher() -> Iterator[Fetcher]:
    f = Fetcher(
        FetchLimits(connect_timeout=2, total_timeout=60, max_redirects=3, max_bytes=128 * MIB),
        {"User-Agent": "Downloader-Test"},
        pool_size=4,
        outbound=Outbound(PERMISSIVE),  # the server is on 127.0.0.1
        resume=True,
    )
    yield f
    f.close()


def fetch(fetcher: Fetcher, url: str, tmp_path: Path, *, sniff: bool = False) -> Fetched:
    return fetcher.fetch(
        job_id=JOB,
        url=url,
        proxy="",
        job_headers=None,
        timeout=0,
        tmp_dir=tmp_path,
        sniff=sniff,
        mime_pattern=None,
        cancelled=threading.Event(),
    )


def cut_attempt(fetcher: Fetcher, server: RangeServer, tmp_path: Path, at: int) -> DownloadError:
    server.cut_at = at
    with pytest.raises(DownloadError) as caught:
        fetch(fetcher, server.url(), tmp_path)
    return caught.value


def test_a_download_cut_at_40_percent_transfers_only_the_rest_and_is_stored_whole(
    fetcher: Fetcher, server: RangeServer, content: bytes, tmp_path: Path
) -> None:
    cut = int(len(content) * 0.4)
    err = cut_attempt(fetcher, server, tmp_path, cut)
    assert err.retriable and err.reason is FailureReason.NETWORK
    assert resume.tmp_path(tmp_path, JOB).stat().st_size == cut  # kept for the next attempt
    assert resume.record_path(tmp_path, JOB).exists()

    fetched = fetch(fetcher, server.url(), tmp_path)

    assert server.requests[1]["Range"] == f"bytes={cut}-"
    assert server.requests[1]["If-Range"] == '"v1"'
    assert server.sent == [cut, len(content) - cut]  # the second transfer carried only the rest
    assert fetched.resumed_from == cut
    assert fetched.response_code == 206
    assert fetched.size == len(content)
    assert fetched.path.read_bytes() == content
    assert fetched.sha256 == hashlib.sha256(content).hexdigest()  # the whole file's
    assert not resume.record_path(tmp_path, JOB).exists()


def test_a_file_whose_etag_changed_between_attempts_is_fetched_again_whole(
    fetcher: Fetcher, server: RangeServer, content: bytes, tmp_path: Path
) -> None:
    cut_attempt(fetcher, server, tmp_path, 10 * MIB)
    server.content = changed = b"new" + content[3:]
    server.etag = '"v2"'

    fetched = fetch(fetcher, server.url(), tmp_path)

    assert server.requests[1]["If-Range"] == '"v1"'  # asked to continue the old file...
    assert server.sent[1] == len(changed)  # ...and got the new one whole, with a 200
    assert fetched.resumed_from == 0 and fetched.response_code == 200
    assert fetched.path.read_bytes() == changed
    assert fetched.sha256 == hashlib.sha256(changed).hexdigest()


def test_a_206_that_does_not_continue_the_file_is_not_appended_but_fetched_again(
    fetcher: Fetcher, server: RangeServer, content: bytes, tmp_path: Path
) -> None:
    cut_attempt(fetcher, server, tmp_path, 5 * MIB)
    server.misbehave = "ignore-start"  # answers bytes=N- with bytes 0-...

    fetched = fetch(fetcher, server.url(), tmp_path)

    assert server.requests[1]["Range"] == f"bytes={5 * MIB}-"
    assert "Range" not in server.requests[2]  # asked again for the whole file
    assert fetched.resumed_from == 0 and fetched.response_code == 200
    assert fetched.path.read_bytes() == content


def test_a_206_to_a_request_without_range_is_not_a_success(
    fetcher: Fetcher, server: RangeServer, tmp_path: Path
) -> None:
    server.misbehave = "always-206"
    with pytest.raises(DownloadError) as caught:
        fetch(fetcher, server.url(), tmp_path)
    assert caught.value.message == "Received status code 206 Partial Content"
    assert caught.value.response_code == 206
    assert not resume.tmp_path(tmp_path, JOB).exists()


def test_a_resumed_download_is_sniffed_from_its_first_bytes(
    fetcher: Fetcher, server: RangeServer, tmp_path: Path
) -> None:
    ihdr = b"IHDR" + struct.pack(">IIBBBBB", 64, 64, 8, 2, 0, 0, 0)
    png = b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + ihdr + struct.pack(">I", zlib.crc32(ihdr))
    png += bytes(range(256)) * 8192
    server.content = png
    cut_attempt(fetcher, server, tmp_path, 1000)
    fetched = fetch(fetcher, server.url(), tmp_path, sniff=True)
    assert fetched.resumed_from == 1000
    assert fetched.mime_type == "image/png"
    assert fetched.path.read_bytes() == png


def test_without_resume_a_cut_download_leaves_nothing_and_starts_again(
    server: RangeServer, content: bytes, tmp_path: Path
) -> None:
    plain = Fetcher(
        FetchLimits(connect_timeout=2, total_timeout=60, max_redirects=3, max_bytes=128 * MIB),
        {},
        pool_size=2,
        outbound=Outbound(PERMISSIVE),
    )
    try:
        cut_attempt(plain, server, tmp_path, MIB)
        assert list(tmp_path.iterdir()) == []
        fetched = fetch(plain, server.url(), tmp_path)
    finally:
        plain.close()
    assert "Range" not in server.requests[1]
    assert fetched.path.read_bytes() == content


def test_a_response_without_a_validator_is_not_kept(
    fetcher: Fetcher, server: RangeServer, tmp_path: Path
) -> None:
    server.etag = 'W/"weak"'  # a weak ETag cannot be named in If-Range; Last-Modified can
    cut_attempt(fetcher, server, tmp_path, MIB)
    partial = resume.lookup(tmp_path, JOB, server.url())[0]
    assert partial is not None and partial.validator == "Wed, 02 Dec 2026 10:00:00 GMT"


def test_a_record_left_for_another_url_is_forgotten_by_a_download_that_cannot_resume(
    fetcher: Fetcher, tmp_path: Path
) -> None:
    resume.tmp_path(tmp_path, JOB).write_bytes(b"stale bytes")
    resume.remember(tmp_path, JOB, resume.Partial("http://elsewhere.example/f", '"v0"', total=100))
    files = FileServer()  # answers without ETag or Last-Modified: nothing to continue by
    files.add_file("plain.bin", b"the whole file")
    with files:
        fetched = fetch(fetcher, files.url("plain.bin"), tmp_path)

    assert fetched.path.read_bytes() == b"the whole file" and fetched.resumed_from == 0
    assert not resume.record_path(tmp_path, JOB).exists()
