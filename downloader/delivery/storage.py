"""Where finished files live: the storage protocol, job locations, and the filesystem backend.

A job's file is at a `Location`: a key (`[<subpath>/]<id[0:3]>/<id>`) in the configured
storage, or in the job's own S3 bucket. The filesystem backend moves a download in atomically
(rename, or copy-then-rename across filesystems) so a reader never sees half a file, and
storing the same job twice is harmless: jobs may run twice. S3 lives in `aws`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import json
import os
import shutil
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from downloader.errors import ConfigurationError, StorageError

if TYPE_CHECKING:
    from downloader.config.settings import Settings
    from downloader.jobs.models import Job


class FileStorage(Protocol):
    def store(
        self, tmp_path: Path, key: str, *, content_type: str = "", metadata: Mapping[str, str] | None = None
    ) -> None:
        """Put the file at `key`, replacing what is there; raise StorageError on failure."""

    def delete(self, key: str) -> None:
        """Remove `key`; a missing one is not an error."""

    def check_writable(self) -> None:
        """Fail at start-up (StorageError) when nothing could be stored."""


@dataclasses.dataclass(frozen=True)
class Location:
    """Where one job's file is: `key` in the configured storage, or in the job's own S3
    bucket when `bucket` is set. Encoded into Redis so the reaper can delete it after the
    job's hash is gone."""

    key: str
    bucket: str = ""
    region: str = ""

    def encode(self) -> str:
        return json.dumps([self.key, self.bucket, self.region], separators=(",", ":"))

    @classmethod
    def decode(cls, raw: str) -> Location:
        try:
            key, bucket, region = json.loads(raw)
        except (ValueError, TypeError) as exc:
            raise StorageError(f"unreadable file location {raw!r}") from exc
        return cls(key=str(key), bucket=str(bucket), region=str(region))


class FilesystemStorage:
    def __init__(self, root: Path, *, sync: bool = True) -> None:
        self.root = root
        self.sync = sync
        """fsync a stored file's directory (and a copy from another filesystem): see the
        `sync_files` setting."""

    def path(self, relative: str) -> Path:
        return self.root / relative

    def check_writable(self) -> None:
        """Fail at start-up, not at the first download (as the original's write check)."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            probe = self.root / f".write-check-{os.getpid()}"
            probe.write_bytes(b"x")
            probe.unlink()
        except OSError as exc:
            raise StorageError(f"Error verifying storage directory {self.root} is writable: {exc}") from exc

    def store(
        self, tmp_path: Path, key: str, *, content_type: str = "", metadata: Mapping[str, str] | None = None
    ) -> None:
        """Content type and metadata have no place on a plain filesystem; they are dropped."""
        relative = key
        final = self.path(relative)
        try:
            try:
                _move(tmp_path, final, sync=self.sync)
            except FileNotFoundError:
                # The directory is made when the move finds it missing, not asked for at every
                # store: a store into one that exists costs no mkdir (two system calls).
                final.parent.mkdir(parents=True, exist_ok=True)
                _move(tmp_path, final, sync=self.sync)
            if self.sync:
                _fsync_dir(final.parent)
        except OSError as exc:
            raise StorageError(f"storing {relative}: {exc}") from exc

    def delete(self, key: str) -> None:
        relative = key
        try:
            self.path(relative).unlink(missing_ok=True)
        except OSError as exc:
            raise StorageError(f"deleting {relative}: {exc}") from exc
        with contextlib.suppress(OSError):
            self.path(relative).parent.rmdir()  # only succeeds once the directory is empty


def _move(tmp_path: Path, final: Path, *, sync: bool) -> None:
    """Rename the file in (the tmp file was synced: its bytes are not copied again), or, from
    another filesystem, copy it beside `final` and rename that copy over it."""
    try:
        tmp_path.replace(final)
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
        _copy_across(tmp_path, final, sync=sync)


def _copy_across(tmp_path: Path, final: Path, *, sync: bool) -> None:
    # A name of this process and thread: two stores of one job at once (a job may run twice)
    # never write into the same copy, so neither can rename a half-written one into place.
    partial = final.with_name(f"{final.name}.{os.getpid()}-{threading.get_ident()}.partial")
    try:
        with tmp_path.open("rb") as src, partial.open("wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
            dst.flush()
            if sync:
                os.fsync(dst.fileno())
        partial.replace(final)
    except BaseException:
        with contextlib.suppress(OSError):
            partial.unlink(missing_ok=True)  # a failed copy leaves nothing behind
        raise
    tmp_path.unlink()


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Storages:
    """The configured storage, and the S3 buckets that single jobs name (`s3_bucket` +
    `s3_region` override the configured storage for that job, as in the original)."""

    def __init__(
        self,
        configured: FileStorage,
        *,
        job_bucket: Callable[[str, str], FileStorage] | None = None,
        metadata: Callable[[str], dict[str, str]] | None = None,
    ) -> None:
        self.configured = configured
        self._job_bucket = job_bucket
        self._metadata = metadata

    def check_writable(self) -> None:
        self.configured.check_writable()

    def for_location(self, location: Location) -> FileStorage:
        if not location.bucket:
            return self.configured
        if self._job_bucket is None:
            raise StorageError(f"no S3 support to reach bucket {location.bucket}")
        return self._job_bucket(location.bucket, location.region)

    def local(self, job: Job) -> bool:
        """Whether the job's file goes to the filesystem (else to an S3 bucket)."""
        return not location_of(job).bucket and isinstance(self.configured, FilesystemStorage)

    def store(self, job: Job, tmp_path: Path, content_type: str) -> None:
        """Store a job's download where it belongs, with the sniffed type and, on S3, its
        `extra` as object metadata (which a filesystem drops). A filesystem moves `tmp_path`
        into place (`local`); S3 copies it, and it is the caller's to remove."""
        location = location_of(job)
        storage = self.for_location(location)
        on_s3 = not isinstance(storage, FilesystemStorage)  # a filesystem has no place for metadata
        metadata = self._metadata(job.extra) if self._metadata is not None and on_s3 else None
        storage.store(tmp_path, location.key, content_type=content_type, metadata=metadata)

    def delete(self, location: Location) -> None:
        if location.key:
            self.for_location(location).delete(location.key)


def location_of(job: Job) -> Location:
    return Location(key=job.relative_path, bucket=job.s3_bucket, region=job.s3_region)


def from_settings(settings: Settings) -> Storages:
    """The storages the settings describe. boto3 is imported only once S3 is used: at start
    with S3 storage, else at the first job that names its own bucket."""
    if settings.storage_backend == "filesystem":
        return Storages(
            FilesystemStorage(Path(settings.storage_root), sync=settings.sync_files),
            job_bucket=_lazy_job_buckets(settings),
            metadata=_lazy_metadata,
        )
    if not settings.s3_bucket:
        raise ConfigurationError("DOWNLOADER_STORAGE_BACKEND=s3 needs DOWNLOADER_S3_BUCKET")
    from downloader.delivery import aws

    buckets = aws.S3Storages.from_settings(settings)
    return Storages(aws.S3Storage.from_settings(settings), job_bucket=buckets.get, metadata=aws.s3_metadata)


def _lazy_job_buckets(settings: Settings) -> Callable[[str, str], FileStorage]:
    buckets: list[Callable[[str, str], FileStorage]] = []
    lock = threading.Lock()

    def job_bucket(bucket: str, region: str) -> FileStorage:
        with lock:
            if not buckets:
                from downloader.delivery import aws

                buckets.append(aws.S3Storages.from_settings(settings).get)
        return buckets[0](bucket, region)

    return job_bucket


def _lazy_metadata(extra: str) -> dict[str, str]:
    from downloader.delivery import aws

    return aws.s3_metadata(extra)
