"""Fixtures of the integration tests: file and callback servers, and the `downloader` processes.

The helpers live next to this file (`servers.py`, `procs.py`); tests import them by name.
When a test fails, the tails of its processes' logs are attached to the report.
"""

from __future__ import annotations

import sys
from collections.abc import Generator, Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from procs import Stack
from servers import CallbackServer, FileServer


@pytest.fixture
def files() -> Iterator[FileServer]:
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
    report = yield
    if report.when == "call" and report.failed:
        s = getattr(item, "funcargs", {}).get("stack")
        if isinstance(s, Stack) and s.procs:
            report.sections.append(("process logs", s.log_tails()))
    return report
