"""How the tools find a running `downloader up` (downloader/cli/discovery.py): its address
file counts only while `up.lock` is held, by another process as `up` holds it (flock)."""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from downloader.cli import discovery

HOLD = """
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o644)
fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
print("held", flush=True)
sys.stdin.read()
"""


@pytest.fixture
def held(tmp_path: Path) -> Iterator[Path]:
    """`tmp_path` with its up.lock held by another process, as a running `up` holds it."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path / "up.lock")],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)  # fmt: skip
    assert proc.stdout is not None and proc.stdout.readline() == "held\n"
    yield tmp_path
    proc.communicate(timeout=10)


def test_a_published_address_is_found_while_the_lock_is_held(held: Path) -> None:
    discovery.publish(held, redis_url="redis://127.0.0.1:41234/0", api_url="http://127.0.0.1:8000")
    found = discovery.find(held)
    assert found is not None
    assert (found.redis_url, found.api_url, found.directory) == (
        "redis://127.0.0.1:41234/0",
        "http://127.0.0.1:8000",
        held,
    )
    assert "redis://127.0.0.1:41234/0" in found.describe() and "API http://127.0.0.1:8000" in found.describe()
    discovery.withdraw(held)
    assert discovery.find(held) is None
    discovery.withdraw(held)  # twice is fine


def test_the_address_of_an_up_that_is_gone_is_ignored(tmp_path: Path) -> None:
    discovery.publish(tmp_path, redis_url="redis://127.0.0.1:41234/0", api_url="http://127.0.0.1:8000")
    assert discovery.find(tmp_path) is None, "no lock file at all"
    (tmp_path / "up.lock").write_text("12345\n")
    assert discovery.find(tmp_path) is None, "a lock nobody holds"
    # and looking did not leave the lock taken: `up` can still take it
    fd = os.open(tmp_path / "up.lock", os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    finally:
        os.close(fd)


@pytest.mark.parametrize(
    "text", ["", "{", "[]", '{"pid": 1}', '{"pid": "x", "redis_url": "r", "api_url": "a"}']
)
def test_an_unreadable_address_file_is_ignored(held: Path, text: str) -> None:
    (held / "up.json").write_text(text)
    assert discovery.find(held) is None


def test_redis_is_configured_by_the_environment_or_the_config_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("DOWNLOADER_REDIS_URL", raising=False)
    assert not discovery.redis_configured(None)
    config = tmp_path / "config.json"
    config.write_text('{"redis": {"addr": "10.0.0.5:6379"}}')
    assert discovery.redis_configured(str(config))
    config.write_text('{"processor": {}}')
    assert not discovery.redis_configured(str(config))
    monkeypatch.setenv("DOWNLOADER_REDIS_URL", "redis://elsewhere:6379/0")
    assert discovery.redis_configured(None)
