"""Shared helpers of the chaos tests: the settings they run with, a retrying job poster, a
worker killer, an AOF Redis that can be SIGKILLed, a small tmpfs, a watcher of the storage
root, and the figures every test prints and asserts.

Everything is real: `downloader` processes (tests/support/procs.py), redis-server, and
HTTP servers on 127.0.0.1 (tests/support/servers.py, plus the raw-socket slow servers in
test_slow_servers.py).
"""

from __future__ import annotations

import collections
import dataclasses
import json
import os
import random
import select
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import pytest
import redis

from support.procs import Proc, Stack, free_port, stop_process, tail
from support.servers import CallbackServer, wait_until

#: What every chaos stack runs with. The file and callback servers live on 127.0.0.1, which the
#: download safety check refuses unless private networks are allowed.
CHAOS_SETTINGS: dict[str, Any] = {
    "allow_private_networks": "true",
    "retry_backoff_seconds": 0.2,
    "callback_backoff_seconds": 0.1,
}


def print_figures(title: str, figures: Mapping[str, object]) -> None:
    """The figures of one test, printed so that `pytest -s` shows them."""
    width = max(len(k) for k in figures)
    lines = [f"== {title} =="] + [f"  {k:<{width}}  {v}" for k, v in figures.items()]
    print("\n" + "\n".join(lines), flush=True)


def quiet_disconnects(server: Any) -> None:
    """Do not print the tracebacks of clients that vanished: a killed worker's keep-alive
    connection is reset while the server waits for its next request, which is expected here
    (any other error is still printed)."""
    httpd = server._httpd
    original = httpd.handle_error

    def handle_error(request: Any, client_address: Any) -> None:
        if isinstance(sys.exc_info()[1], ConnectionError | TimeoutError):
            return
        original(request, client_address)

    httpd.handle_error = handle_error


# --- killing workers -------------------------------------------------------------------------


class WorkerKiller:
    """Keeps `count` workers running and SIGKILLs a random one every `every` seconds (a random
    value in that range), starting a replacement at once. A worker that exited by itself is
    replaced too, and counted: that is not supposed to happen."""

    def __init__(
        self,
        stack: Stack,
        count: int,
        every: tuple[float, float] = (2.0, 4.0),
        seed: int = 1,
        **overrides: Any,
    ) -> None:
        self.stack = stack
        self.every = every
        self.overrides = overrides
        self.random = random.Random(seed)
        self.kills = 0
        self.exited_by_themselves: list[str] = []
        self.workers: list[Proc] = [stack.worker(**overrides) for _ in range(count)]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="worker-killer", daemon=True)

    def start(self) -> WorkerKiller:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(15)

    def _run(self) -> None:
        while not self._stop.wait(self.random.uniform(*self.every)):
            victim = self.random.randrange(len(self.workers))
            self.workers[victim].kill9()
            self.kills += 1
            # No waiting for readiness: a replacement may start while Redis is down.
            self.workers[victim] = self.stack.worker(wait=False, **self.overrides)
            for i, proc in enumerate(self.workers):
                if not proc.alive:
                    self.exited_by_themselves.append(f"{proc.log.name} ({proc.returncode}): {proc.tail(5)}")
                    self.workers[i] = self.stack.worker(wait=False, **self.overrides)


# --- callbacks -------------------------------------------------------------------------------


@dataclasses.dataclass
class CallbackFigures:
    jobs: int
    delivered: int
    lost: list[str]
    duplicates: int  # extra deliveries identical to the first
    divergent: list[str]  # jobs delivered with different payloads
    failed_payloads: list[str]  # "job id: error" of jobs whose delivered payload says success: false

    @classmethod
    def count(cls, callbacks: CallbackServer, job_ids: Iterable[str]) -> CallbackFigures:
        by_job: dict[str, list[bytes]] = collections.defaultdict(list)
        for cb in callbacks.all():
            if 200 <= cb.answered < 300:
                by_job[str(cb.payload.get("job_id"))].append(cb.raw)
        ids = list(job_ids)
        lost = [j for j in ids if not by_job.get(j)]
        divergent = [j for j in ids if len(set(by_job.get(j, []))) > 1]
        failed = [
            f"{j}: {json.loads(by_job[j][0]).get('error')}"
            for j in ids
            if by_job.get(j) and b'"success":true' not in by_job[j][0]
        ]
        return cls(
            jobs=len(ids),
            delivered=len(ids) - len(lost),
            lost=lost,
            duplicates=sum(len(by_job[j]) - 1 for j in ids if len(by_job.get(j, [])) > 1),
            divergent=divergent,
            failed_payloads=failed,
        )


def wait_delivered(callbacks: CallbackServer, job_ids: Iterable[str], timeout: float) -> float:
    """Wait until every job has a delivered callback; returns when (monotonic). On timeout,
    fails naming how many are missing."""
    ids = set(job_ids)

    def missing() -> set[str]:
        got = {str(c.payload.get("job_id")) for c in callbacks.all() if 200 <= c.answered < 300}
        return ids - got

    deadline = time.monotonic() + timeout
    while (left := missing()) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not left, (
        f"{len(left)} of {len(ids)} jobs have no delivered callback after {timeout:g}s, e.g. {sorted(left)[:5]}"
    )
    return time.monotonic()


def leftover_leases(db: redis.Redis) -> dict[str, int]:
    """Every lease still held: `inflight:*` sorted sets and the callback leases."""
    found = {str(k): int(db.zcard(k)) for k in db.scan_iter(match="inflight:*")}
    if db.zcard("CallbackInflight"):
        found["CallbackInflight"] = int(db.zcard("CallbackInflight"))
    return found


def wait_no_leases(db: redis.Redis, timeout: float) -> dict[str, int]:
    """Leases of killed workers are given back after their expiry: wait for that, then
    return what is left (empty when all is well)."""
    deadline = time.monotonic() + timeout
    while (left := leftover_leases(db)) and time.monotonic() < deadline:
        time.sleep(0.1)
    return left


# --- storage ---------------------------------------------------------------------------------


class StoreWatcher:
    """Looks at the storage root every few milliseconds while a test runs and checks each file
    the first time it shows up: a partial file that was ever visible is caught, not only one
    that is still there at the end. `valid(job_id, data)` says whether `data` is a complete
    copy of that job's source (a job id the test has not learnt yet may be judged by the data
    alone: tests give every source distinct random bytes)."""

    def __init__(self, root: Path, valid: Callable[[str, bytes], bool], interval: float = 0.05) -> None:
        self.root = root
        self.valid = valid
        self.interval = interval
        self.checked: set[str] = set()
        self.bad: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="store-watcher", daemon=True)

    def start(self) -> StoreWatcher:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sweep()

    def sweep(self) -> None:
        if not self.root.is_dir():
            return
        for path in self.root.glob("*/*"):
            # `<id>.partial` is the storage's own temporary name while it copies across
            # filesystems (tmp on a tmpfs here); only the atomically renamed `<id>` is stored.
            if path.name not in self.checked and not path.name.endswith(".partial"):
                self._check(path)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sweep()

    def _check(self, path: Path) -> None:
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return
        if self.valid(path.name, data):
            self.checked.add(path.name)
        else:
            self.bad.append(f"{path}: {len(data)} bytes, not a complete copy of its source")


# --- a small filesystem ----------------------------------------------------------------------


class SmallTmpfs:
    """A real, small filesystem: `mount -t tmpfs -o size=<n>` (needs root, which the test
    asserts with the reason rather than skipping)."""

    def __init__(self, path: Path, size: str = "8m") -> None:
        self.path = path
        self.size = size
        self.mounted = False

    def mount(self) -> SmallTmpfs:
        if os.geteuid() != 0:
            pytest.fail(
                "mounting a small tmpfs needs root (uid 0); run the chaos tests as root", pytrace=False
            )
        if shutil.which("mount") is None:
            pytest.fail("the mount command is missing (util-linux)", pytrace=False)
        self.path.mkdir(parents=True, exist_ok=True)
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={self.size}", "tmpfs", str(self.path)],
            capture_output=True,
            text=True,
        )
        if done.returncode != 0:
            pytest.fail(f"mount -t tmpfs failed: {done.stderr.strip()}", pytrace=False)
        self.mounted = True
        return self

    def unmount(self) -> None:
        if self.mounted:
            # Lazy: a process that still has it open (a worker being stopped) must not block us.
            subprocess.run(["umount", "-l", str(self.path)], check=False, capture_output=True)
            self.mounted = False

    def used_percent(self) -> float:
        st = os.statvfs(self.path)
        return (st.f_blocks - st.f_bfree) * 100 / st.f_blocks

    def fill(self, name: str, size: int) -> Path:
        """A ballast file of `size` real bytes (tmpfs has no sparse allocation to cheat with);
        stops quietly at ENOSPC, which is what filling a disk means."""
        path = self.path / name
        block = b"\0" * (1 << 16)
        written = 0
        with path.open("wb") as out:
            while written < size:
                try:
                    out.write(block[: min(len(block), size - written)])
                    out.flush()
                except OSError:
                    break
                written += min(len(block), size - written)
        return path

    def leftovers(self, ballast: str = "ballast") -> list[str]:
        return sorted(p.name for p in self.path.iterdir() if not p.name.startswith(ballast))


# --- Redis with an append-only file ----------------------------------------------------------


class AofRedis:
    """A dedicated redis-server with `appendonly yes` and `appendfsync always`: every write is
    on disk before Redis answers it, so even a SIGKILL loses nothing it acknowledged. Restarts
    on the same port and directory (the same AOF)."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.log = workdir / "redis.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 20.0) -> AofRedis:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.fail("redis-server is not on PATH (scripts/bootstrap installs it)", pytrace=False)
        self.workdir.mkdir(parents=True, exist_ok=True)
        argv = [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.workdir),
                "--save", "", "--appendonly", "yes", "--appendfsync", "always"]  # fmt: skip
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        client = redis.Redis(port=self.port, socket_connect_timeout=0.5)
        try:
            wait_until(lambda: self._answers(client), timeout, "redis-server to answer PING (AOF loaded)")
        except AssertionError as exc:
            pytest.fail(f"{exc}; its log ends with:\n{tail(self.log)}", pytrace=False)
        finally:
            client.close()
        return self

    def _answers(self, client: redis.Redis) -> bool:
        assert self.proc is not None and self.proc.poll() is None, f"redis-server exited: {tail(self.log)}"
        try:
            return bool(client.ping())
        except redis.BusyLoadingError:
            return False
        except redis.ConnectionError:
            return False

    def kill9(self) -> None:
        """A crash: no shutdown, no final AOF rewrite; only what was fsynced survives."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def stop(self) -> None:
        stop_process(self.proc)


# --- servers that never finish -----------------------------------------------------------------


@dataclasses.dataclass
class SlowConnection:
    path: str
    opened: float
    closed: float | None = None  # when we saw the client hang up (or we gave up)
    sent: int = 0

    @property
    def held(self) -> float:
        return (self.closed or time.monotonic()) - self.opened


class SlowServer:
    """A raw-socket HTTP server on 127.0.0.1 whose answers never end, each in a thread:

    * `/trickle-body`: a 200 with `Content-Length: 100000`, then one byte per second;
    * `/trickle-headers`: the status line, then a header one byte per second, never ending;
    * `/endless`: a 200 without a length, then 64 KiB blocks as fast as the client reads.

    It records when each connection opened and when the client hung up (seen as EOF on the
    socket within ~0.1 s), so a test can tell how long the worker held it."""

    TRICKLE_SECONDS = 1.0

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.sock.getsockname()[1])
        self.connections: list[SlowConnection] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        threading.Thread(target=self._accept, name="slow-server", daemon=True).start()

    def url(self, path: str, **query: object) -> str:
        qs = "&".join(f"{k}={v}" for k, v in query.items())
        return f"http://127.0.0.1:{self.port}{path}" + (f"?{qs}" if qs else "")

    def opened(self, path: str) -> list[SlowConnection]:
        with self._lock:
            return [c for c in self.connections if c.path == path]

    def stop(self) -> None:
        self._stop.set()
        self.sock.close()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            head = b""
            while b"\r\n\r\n" not in head:
                data = conn.recv(4096)
                if not data:
                    return
                head += data
            path = head.split(b" ", 2)[1].decode().split("?")[0]
            record = SlowConnection(path, time.monotonic())
            with self._lock:
                self.connections.append(record)
            try:
                self._answer(conn, path, record)
            except OSError:
                pass
            finally:
                record.closed = record.closed or time.monotonic()

    def _answer(self, conn: socket.socket, path: str, record: SlowConnection) -> None:
        if path == "/trickle-body":
            conn.sendall(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: 100000\r\n\r\n"
            )
            self._trickle(conn, record, b"x")
        elif path == "/trickle-headers":
            conn.sendall(b"HTTP/1.1 200 OK\r\nX-Slow: ")
            self._trickle(conn, record, b"a")
        elif path == "/endless":
            conn.sendall(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nConnection: close\r\n\r\n"
            )
            block = os.urandom(1 << 16)
            while not self._stop.is_set():
                conn.sendall(block)  # blocks while the client does not read; fails once it left
                record.sent += len(block)
        else:
            conn.sendall(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")

    def _trickle(self, conn: socket.socket, record: SlowConnection, byte: bytes) -> None:
        next_byte = time.monotonic()
        while not self._stop.is_set():
            # Watch for the client hanging up between two bytes: EOF makes the socket readable.
            readable, _, _ = select.select([conn], [], [], 0.1)
            if readable and not conn.recv(1024):
                record.closed = time.monotonic()
                return
            if time.monotonic() >= next_byte:
                conn.sendall(byte)
                record.sent += 1
                next_byte += self.TRICKLE_SECONDS
