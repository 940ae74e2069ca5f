"""Shared fixtures: a private redis-server for the whole session, flushed before each test;
file and callback servers on 127.0.0.1; the `downloader` processes of a test (`stack`).

A missing redis-server fails the tests that need it with the reason (never a skip):
`scripts/bootstrap` installs it. When a test fails, the tails of its processes' logs are
attached to the report.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Generator, Iterator
from pathlib import Path

import pytest
import redis
from support.procs import Stack, stop_process
from support.servers import CallbackServer, FileServer

DATA = Path(__file__).parent / "data"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    """A real redis-server on a free 127.0.0.1 port (restartable, for outage tests)."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.fail("redis-server is not on PATH (scripts/bootstrap installs it)", pytrace=False)
        self.workdir.mkdir(parents=True, exist_ok=True)
        log = (self.workdir / "redis.log").open("ab")
        self.proc = subprocess.Popen(
            [
                binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.workdir),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        log.close()
        client = redis.Redis(port=self.port, socket_connect_timeout=0.5)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                if client.ping():
                    client.close()
                    return self
            except redis.RedisError:
                time.sleep(0.05)
        pytest.fail(
            f"redis-server did not start: {(self.workdir / 'redis.log').read_text()[-2000:]}", pytrace=False
        )

    def stop(self) -> None:
        stop_process(self.proc)
        self.proc = None


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture
def rdb(redis_server: RedisServer) -> Iterator[redis.Redis]:
    """A decoded client of the session's Redis, flushed before the test."""
    if redis_server.proc is None or redis_server.proc.poll() is not None:
        redis_server.start()  # a test stopped it on purpose
    client = redis.Redis.from_url(redis_server.url, decode_responses=True)
    client.flushall()
    yield client
    client.close()


@pytest.fixture
def redis_url(rdb: redis.Redis, redis_server: RedisServer) -> str:
    return redis_server.url


@pytest.fixture
def files() -> Iterator[FileServer]:
    server = FileServer()
    server.start()
    yield server
    server.stop()


@pytest.fixture
def other_host() -> Iterator[FileServer]:
    """A second origin beside `files`: the same address on another port is another host."""
    server = FileServer()
    server.start()
    yield server
    server.stop()


@pytest.fixture
def callbacks() -> Iterator[CallbackServer]:
    server = CallbackServer()
    server.start()
    yield server
    server.stop()


@pytest.fixture
def stack(tmp_path: Path, redis_url: str) -> Iterator[Stack]:
    """Nothing runs yet: a test starts what it needs (`stack.all_three()`, `stack.worker()`...)."""
    s = Stack(tmp_path, redis_url)
    yield s
    s.stop_all()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """A failed test's report ends with the logs of what it ran: every fixture value (or
    member of a fixture's list) that has `log_tails()` -- processes, brokers, Redis servers."""
    report = yield
    if report.when == "call" and report.failed:
        seen: set[int] = set()
        for value in getattr(item, "funcargs", {}).values():
            for thing in value if isinstance(value, list) else [value]:
                tails = getattr(thing, "log_tails", None)
                if callable(tails) and id(thing) not in seen:
                    seen.add(id(thing))
                    report.sections.append((f"{type(thing).__name__} logs", tails()))
    return report
