"""Fixtures of the Sentinel and Redis-restart tests: a Redis cluster of real processes, and a
list of what to report when a test fails (its Redis and `downloader` processes' log tails).

`files`, `callbacks` and the process helpers come from the top conftest and tests/support.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

import pytest
from support.sentinel_cluster import Cluster


class HasLogs(Protocol):
    def log_tails(self, lines: int = ...) -> str: ...


@pytest.fixture
def watched() -> list[HasLogs]:
    """Tests append their Stack and Redis processes; a failure shows their logs."""
    return []


@pytest.fixture
def cluster(tmp_path: Path, watched: list[HasLogs]) -> Iterator[Cluster]:
    c = Cluster(tmp_path / "redis")
    watched.append(c)
    try:
        yield c.start()
    finally:
        c.stop()
