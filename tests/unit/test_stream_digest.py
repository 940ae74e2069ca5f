"""The SHA-256 a download computes while it streams (downloader.fetching.download._Digest):
small bodies are hashed inline and start no thread; past HASH_BESIDE_BYTES a helper thread
hashes beside the transfer. Either way the digest is that of all the bytes in order, and the
thread is gone once the download leaves it, finished or not."""

from __future__ import annotations

import hashlib
import os
import threading

import pytest

from downloader.fetching import download
from downloader.fetching.download import HASH_BESIDE_BYTES, _Digest

MIB = 1024 * 1024


def hashing_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "sha256"]


def chunks_of(data: bytes, sizes: list[int]) -> list[bytes]:
    """`data` cut into pieces of the given sizes, cycled (read1 returns uneven pieces)."""
    out, at, i = [], 0, 0
    while at < len(data):
        out.append(data[at : at + sizes[i % len(sizes)]])
        at += sizes[i % len(sizes)]
        i += 1
    return out


@pytest.mark.parametrize(
    ("size", "sizes"),
    [
        (0, [1]),
        (10_000, [1, 4096, 100]),
        (HASH_BESIDE_BYTES, [MIB]),  # exactly the inline part: the thread starts, gets nothing
        (HASH_BESIDE_BYTES + 1, [MIB]),
        (HASH_BESIDE_BYTES * 3 + 12_345, [MIB, 65536, 1, 3 * MIB + 7]),
    ],
)
def test_the_digest_is_that_of_all_the_bytes_in_order(size: int, sizes: list[int]) -> None:
    data = os.urandom(size)
    with _Digest() as digest:
        for chunk in chunks_of(data, sizes):
            digest.update(chunk)
        assert digest.hexdigest() == hashlib.sha256(data).hexdigest()
    assert hashing_threads() == []


def test_a_small_body_starts_no_thread() -> None:
    with _Digest() as digest:
        digest.update(os.urandom(HASH_BESIDE_BYTES - 1))
        assert hashing_threads() == []
        digest.hexdigest()


def test_a_download_that_stops_half_way_stops_its_hashing_thread() -> None:
    with pytest.raises(OSError), _Digest() as digest:
        for chunk in chunks_of(os.urandom(HASH_BESIDE_BYTES + 4 * MIB), [MIB]):
            digest.update(chunk)
        assert len(hashing_threads()) == 1
        raise OSError("the connection broke")
    assert hashing_threads() == []


def test_the_hashing_thread_lags_by_a_bounded_backlog(monkeypatch: pytest.MonkeyPatch) -> None:
    """The thread holds at most HASH_BACKLOG chunks: a slow hash holds the reader back instead
    of piling chunks up in memory."""
    release = threading.Event()
    held: list[int] = []
    real_sha256 = hashlib.sha256

    class SlowSha256:
        def __init__(self) -> None:
            self.inner = real_sha256()

        def update(self, chunk: bytes) -> None:
            if len(chunk) == 1:  # the handed chunks wait until the test lets them go
                release.wait(10)
            self.inner.update(chunk)

        def hexdigest(self) -> str:
            return self.inner.hexdigest()

    monkeypatch.setattr(download.hashlib, "sha256", SlowSha256)
    with _Digest() as digest:
        digest.update(b"x" * HASH_BESIDE_BYTES)  # inline; starts the thread
        feeder = threading.Thread(
            target=lambda: [(digest.update(b"y"), held.append(1)) for _ in range(10)], daemon=True
        )
        feeder.start()
        feeder.join(0.5)
        # HASH_BACKLOG chunks handed over (one of them in the thread's hands), the next one waits
        assert len(held) == download.HASH_BACKLOG
        release.set()
        feeder.join(10)
        assert len(held) == 10
        assert digest.hexdigest() == real_sha256(b"x" * HASH_BESIDE_BYTES + b"y" * 10).hexdigest()
