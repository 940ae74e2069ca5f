"""Fixtures of the chaos tests: a `stack` with the chaos settings, and a small tmpfs.

The helpers live in tests/support/chaos.py (imported as `support.chaos`); the session
Redis, the file and callback servers come from the top conftest.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from support.chaos import CHAOS_SETTINGS, SmallTmpfs
from support.procs import Stack


@pytest.fixture
def stack(tmp_path: Path, redis_url: str) -> Iterator[Stack]:
    """The top conftest's stack, with the settings every chaos test needs."""
    s = Stack(tmp_path, redis_url, **CHAOS_SETTINGS)
    yield s
    s.stop_all()


@pytest.fixture
def small_tmp(tmp_path: Path) -> Iterator[SmallTmpfs]:
    """An 8 MiB tmpfs mounted at the stack's tmp dir. Request it before `stack` so that it is
    unmounted after the processes using it have stopped."""
    fs = SmallTmpfs(tmp_path / "tmp", size="8m").mount()
    yield fs
    fs.unmount()
