"""Where finished files live: the filesystem backend (`<root>/<id[0:3]>/<id>`).

A download is moved in atomically (rename, or copy-then-rename across filesystems) so a
reader never sees half a file, and storing the same job twice is harmless: jobs may run
twice. S3 joins it with the production backends.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
from pathlib import Path
from typing import Protocol

from downloader.errors import StorageError


class FileStorage(Protocol):
    def store(self, tmp_path: Path, relative: str) -> None: ...

    def delete(self, relative: str) -> None: ...

    def check_writable(self) -> None: ...


class FilesystemStorage:
    def __init__(self, root: Path) -> None:
        self.root = root

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

    def store(self, tmp_path: Path, relative: str) -> None:
        final = self.path(relative)
        try:
            final.parent.mkdir(parents=True, exist_ok=True)
            try:
                tmp_path.replace(final)
            except OSError as exc:
                if exc.errno != errno.EXDEV:
                    raise
                self._copy_across(tmp_path, final)
            _fsync_dir(final.parent)
        except OSError as exc:
            raise StorageError(f"storing {relative}: {exc}") from exc

    def _copy_across(self, tmp_path: Path, final: Path) -> None:
        partial = final.with_name(final.name + ".partial")
        with tmp_path.open("rb") as src, partial.open("wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
            dst.flush()
            os.fsync(dst.fileno())
        partial.replace(final)
        tmp_path.unlink()

    def delete(self, relative: str) -> None:
        try:
            self.path(relative).unlink(missing_ok=True)
        except OSError as exc:
            raise StorageError(f"deleting {relative}: {exc}") from exc
        with contextlib.suppress(OSError):
            self.path(relative).parent.rmdir()  # only succeeds once the directory is empty


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
