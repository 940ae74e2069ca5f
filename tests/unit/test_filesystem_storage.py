"""downloader.delivery.storage.FilesystemStorage: a download is renamed into storage on the same
filesystem and copied then renamed from another one (/dev/shm against the test's tmp dir, a
real cross-device move); either way a reader never sees half a file, storing twice is harmless,
and a store that failed leaves the tmp file for the retry and nothing half-written behind."""

from __future__ import annotations

import dataclasses
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from downloader.delivery.storage import FilesystemStorage, Storages
from downloader.errors import StorageError
from downloader.jobs.models import Job

KEY = "AbC/AbCdEfGhIjKlMn"
BODY = os.urandom(3 * 1024 * 1024 + 17)  # more than one 1 MiB copy buffer, not a multiple


def tmp_file(directory: Path, data: bytes = BODY, name: str = "AbCdEfGhIjKlMn.tmp") -> Path:
    path = directory / name
    path.write_bytes(data)
    return path


def leftovers(storage: FilesystemStorage) -> list[str]:
    """Files in storage besides the stored one: a half copy would show here."""
    return sorted(p.name for p in storage.root.rglob("*") if p.is_file() and p != storage.path(KEY))


@pytest.fixture
def storage(tmp_path: Path) -> FilesystemStorage:
    return FilesystemStorage(tmp_path / "files")


@pytest.fixture
def other_filesystem(tmp_path: Path) -> Iterator[Path]:
    """A tmp dir on another filesystem than `tmp_path` (tmpfs /dev/shm), so rename is EXDEV."""
    shm = Path("/dev/shm")
    if not shm.is_dir() or shm.stat().st_dev == tmp_path.stat().st_dev:
        # A machine without it cannot test the cross-device path: say so, never pass unseen.
        pytest.fail("no second filesystem: /dev/shm (tmpfs) is missing or on the test tmp dir's device")
    directory = Path(tempfile.mkdtemp(prefix="storage-test-", dir=shm))
    yield directory
    for path in directory.iterdir():
        path.unlink()
    directory.rmdir()


def test_on_the_same_filesystem_the_file_is_renamed_in_not_copied(
    storage: FilesystemStorage, tmp_path: Path
) -> None:
    src = tmp_file(tmp_path)
    inode = src.stat().st_ino

    storage.store(src, KEY)

    final = storage.path(KEY)
    assert final.read_bytes() == BODY
    assert final.stat().st_ino == inode  # the same file, not a second copy of its bytes
    assert not src.exists()
    assert leftovers(storage) == []


def test_across_filesystems_the_file_is_copied_whole_then_renamed(
    storage: FilesystemStorage, other_filesystem: Path
) -> None:
    src = tmp_file(other_filesystem)

    storage.store(src, KEY)

    assert storage.path(KEY).read_bytes() == BODY
    assert not src.exists()
    assert leftovers(storage) == []  # the copy was renamed into place, not left beside it


@pytest.mark.parametrize("across", [False, True], ids=["same-filesystem", "across-filesystems"])
def test_storing_a_job_twice_leaves_the_second_file_whole(
    storage: FilesystemStorage, tmp_path: Path, other_filesystem: Path, across: bool
) -> None:
    source_dir = other_filesystem if across else tmp_path
    storage.store(tmp_file(source_dir, b"first attempt"), KEY)

    storage.store(tmp_file(source_dir), KEY)

    assert storage.path(KEY).read_bytes() == BODY
    assert leftovers(storage) == []


@pytest.mark.parametrize("across", [False, True], ids=["same-filesystem", "across-filesystems"])
def test_a_failed_store_keeps_the_tmp_file_leaves_no_half_file_and_can_be_retried(
    storage: FilesystemStorage, tmp_path: Path, other_filesystem: Path, across: bool
) -> None:
    src = tmp_file(other_filesystem if across else tmp_path)
    blocker = storage.path(KEY)
    blocker.mkdir(parents=True)  # the final name is taken by a directory: the last step fails
    (blocker / "inside").write_bytes(b"x")

    with pytest.raises(StorageError, match=f"storing {KEY}"):
        storage.store(src, KEY)

    assert src.read_bytes() == BODY  # still there for the next attempt
    assert [p.name for p in blocker.parent.iterdir()] == [blocker.name]  # no copy left beside it

    (blocker / "inside").unlink()
    blocker.rmdir()
    storage.store(src, KEY)
    assert storage.path(KEY).read_bytes() == BODY


def test_a_missing_tmp_file_is_a_storage_error(storage: FilesystemStorage, tmp_path: Path) -> None:
    with pytest.raises(StorageError, match=f"storing {KEY}"):
        storage.store(tmp_path / "gone.tmp", KEY)
    assert not storage.path(KEY).exists()


def test_the_directories_of_a_key_are_made_when_missing(storage: FilesystemStorage, tmp_path: Path) -> None:
    storage.store(tmp_file(tmp_path), f"sub/path/{KEY}")
    assert storage.path(f"sub/path/{KEY}").read_bytes() == BODY


def recorded_fsyncs(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The descriptors os.fsync is called on from now on (each call still syncs)."""
    calls: list[int] = []
    real = os.fsync

    def recording(fd: int) -> None:
        calls.append(fd)
        real(fd)

    monkeypatch.setattr(os, "fsync", recording)
    return calls


@pytest.mark.parametrize("across", [False, True], ids=["same-filesystem", "across-filesystems"])
@pytest.mark.parametrize("sync", [True, False], ids=["sync", "no-sync"])
def test_a_store_syncs_its_directory_and_any_copy_only_when_told_to(
    tmp_path: Path, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, across: bool, sync: bool
) -> None:
    storage = FilesystemStorage(tmp_path / "files", sync=sync)
    src = tmp_file(request.getfixturevalue("other_filesystem") if across else tmp_path)
    fsyncs = recorded_fsyncs(monkeypatch)

    storage.store(src, KEY)

    assert storage.path(KEY).read_bytes() == BODY and not src.exists()
    # synced: the directory's entry, and a copy from another filesystem before its rename
    assert len(fsyncs) == ((2 if across else 1) if sync else 0)


def test_only_a_file_bound_for_the_filesystem_is_local(tmp_path: Path) -> None:
    storages = Storages(FilesystemStorage(tmp_path / "files"))
    job = Job(id="AbCdEfGhIjKlMn", url="http://h/x", aggr_id="ag")
    assert storages.local(job)
    assert not storages.local(dataclasses.replace(job, s3_bucket="b", s3_region="r"))
