"""What every part of the store shares: the connection, script runs, and Redis errors
translated into `StoreError`.

`StoreBase` and `AsyncStoreBase` are what the per-concern mixins of `Store` (blocking) and
`AsyncStore` (asyncio) are written against.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import redis
import redis.asyncio
from redis.commands.core import AsyncScript, Script

from downloader.errors import StoreError
from downloader.store import keys
from downloader.store.calls import ScriptCall


@contextlib.contextmanager
def translated() -> Iterator[None]:
    try:
        yield
    except redis.RedisError as exc:
        raise StoreError(f"{type(exc).__name__}: {exc}") from exc


def pairs(flat: Sequence[str]) -> dict[str, str]:
    """A hash from a script's flat HGETALL reply."""
    return dict(zip(flat[::2], flat[1::2], strict=True))


class StoreBase:
    """The blocking connection (thread-safe) and its scripts, each registered on first use."""

    def __init__(self, client: redis.Redis, *, meta_ttl: int = keys.JOB_META_TTL_SECONDS) -> None:
        self.redis = client
        self.meta_ttl = meta_ttl
        self._scripts: dict[str, Script] = {}

    def run_script(self, call: ScriptCall, client: redis.client.Pipeline | None = None) -> Any:
        """Run `call` (queue it on the pipeline `client`, if given): EVALSHA, EVAL once unknown."""
        script = self._scripts.get(call.script)
        if script is None:
            script = self._scripts.setdefault(call.script, self.redis.register_script(call.script))
        return script(keys=call.keys, args=call.args, client=client)


class AsyncStoreBase:
    """The asyncio connection and its scripts, each registered on first use."""

    def __init__(self, client: redis.asyncio.Redis, *, meta_ttl: int = keys.JOB_META_TTL_SECONDS) -> None:
        self.redis = client
        self.meta_ttl = meta_ttl
        self._scripts: dict[str, AsyncScript] = {}

    async def run_script(self, call: ScriptCall, client: redis.asyncio.client.Pipeline | None = None) -> Any:
        """Run `call` (queue it on the pipeline `client`, if given): EVALSHA, EVAL once unknown."""
        script = self._scripts.get(call.script)
        if script is None:
            script = self._scripts.setdefault(call.script, self.redis.register_script(call.script))
        return await script(keys=call.keys, args=call.args, client=client)
