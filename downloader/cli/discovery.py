"""How the tools find a running `downloader up` in the current directory: `up` writes its
Redis URL and API address to `data/up.json` beside its lock (`data/up.lock`) and removes it
at exit; `enqueue` and `retry` read it when no Redis is configured. A file left by an `up`
that was killed is ignored: the lock is no longer held.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
from pathlib import Path

from downloader.config import settings as settings_module
from downloader.errors import ConfigurationError
from downloader.store.embedded_redis import EmbeddedRedis

ADDRESS_FILE = "up.json"
#: Held while `up` and its redis-server live.
LOCK_FILE = EmbeddedRedis.LOCK_FILE


@dataclasses.dataclass(frozen=True)
class RunningUp:
    """What a running `up` published: who, and where its Redis and API listen."""

    pid: int
    redis_url: str
    api_url: str
    directory: Path

    def describe(self) -> str:
        return (
            f"using the Redis of `downloader up` (pid {self.pid}, {self.directory}/): "
            f"{self.redis_url}, API {self.api_url}"
        )


def redis_configured(config: str | None) -> bool:
    """Whether the environment or the config file names a Redis (then `up` embeds none and
    the tools look for none)."""
    if "DOWNLOADER_REDIS_URL" in os.environ:
        return True
    if config is None:
        return False
    try:
        doc = settings_module.read_config_file(Path(config))
        return bool(settings_module.config_values(doc).get("redis_url"))
    except ConfigurationError:
        return False


def publish(directory: Path, *, redis_url: str, api_url: str) -> None:
    """Written whole (a temporary file renamed over it): a reader never sees half of it."""
    path = directory / ADDRESS_FILE
    text = json.dumps({"pid": os.getpid(), "redis_url": redis_url, "api_url": api_url})
    partial = path.with_suffix(".json.partial")
    partial.write_text(text + "\n", encoding="utf-8")
    partial.replace(path)


def withdraw(directory: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        (directory / ADDRESS_FILE).unlink()


def find(directory: Path) -> RunningUp | None:
    """The `up` running on `directory`, or None: no file, an unreadable one, or one whose
    `up` is gone (its lock is free)."""
    try:
        doc = json.loads((directory / ADDRESS_FILE).read_text(encoding="utf-8"))
        found = RunningUp(int(doc["pid"]), str(doc["redis_url"]), str(doc["api_url"]), directory)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return found if _lock_held(directory / LOCK_FILE) else None


def _lock_held(path: Path) -> bool:
    """Whether some process holds `path` locked. A shared lock is taken and given back at once
    when it is free; `up` removes a stale address file right after taking its lock, so this
    test only ever meets the lock of an `up` that is running or long gone."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        os.close(fd)  # also gives back the shared lock, if taken
    return False
