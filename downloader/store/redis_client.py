"""Building Redis clients from the settings: a plain URL, or the primary found through Sentinel.

Every process gets its clients here, so all of them ride out short outages the same way (a
bounded retry with exponential backoff inside the client) and follow Sentinel failovers (the
pool asks the Sentinels for the primary on every reconnect). Sentinel mode follows the
original's rule: both a sentinel list and a master name must be set.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import socket
import threading
import time
import urllib.parse
import weakref
from collections.abc import Callable
from typing import Any, cast

import hiredis
import redis
import redis.asyncio
import redis.asyncio.connection
import redis.asyncio.retry
import redis.asyncio.sentinel
import redis.retry
import redis.sentinel
from redis.backoff import ExponentialBackoff
from redis.connection import parse_url
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from downloader.config.parsing import sentinel_addresses
from downloader.config.settings import Settings

log = logging.getLogger("downloader.redis")

#: Attempts after the first, and the backoff between them: 0.05, 0.1 ... capped at 1 s, about
#: 4 s in all, which covers a Redis restart or a Sentinel promotion on a healthy network.
RETRIES = 7
BACKOFF_BASE = 0.05
BACKOFF_CAP = 1.0
CONNECT_TIMEOUT = 5.0
#: Beyond the longest command we send (WAIT blocks up to its own timeout).
SOCKET_TIMEOUT = 5.0
SENTINEL_TIMEOUT = 1.0
#: How often a Sentinel client re-asks for the primary (bounds writes to a demoted one).
FOLLOW_SECONDS = 1.0
_RETRIED = (RedisConnectionError, RedisTimeoutError, socket.timeout)
_RETRIED_ASYNC = (RedisConnectionError, RedisTimeoutError)


@dataclasses.dataclass(frozen=True)
class Mode:
    """How to reach Redis: `sentinels` empty means straight to `url`."""

    url: str
    sentinels: tuple[tuple[str, int], ...] = ()
    master_name: str = ""
    sentinel_password: str = ""

    @property
    def uses_sentinel(self) -> bool:
        return bool(self.sentinels)


def mode(settings: Settings) -> Mode:
    """Sentinel when both `redis_sentinels` and `redis_master_name` are set (the original's
    rule); otherwise the URL. A half-configured Sentinel is reported, not silently used."""
    sentinels = sentinel_addresses(settings.redis_sentinels)
    name = settings.redis_master_name.strip()
    if sentinels and name:
        return Mode(settings.redis_url, sentinels, name, settings.redis_sentinel_password)
    if sentinels or name:
        log.warning(
            "redis: Sentinel needs both DOWNLOADER_REDIS_SENTINELS and DOWNLOADER_REDIS_MASTER_NAME; "
            "connecting to %s instead",
            redacted_url(settings.redis_url),
        )
    return Mode(settings.redis_url)


def _retry() -> redis.retry.Retry:
    return redis.retry.Retry(ExponentialBackoff(cap=BACKOFF_CAP, base=BACKOFF_BASE), RETRIES, _RETRIED)


def _async_retry() -> redis.asyncio.retry.Retry:
    return redis.asyncio.retry.Retry(
        ExponentialBackoff(cap=BACKOFF_CAP, base=BACKOFF_BASE), RETRIES, _RETRIED_ASYNC
    )


def _common(wait_timeout_ms: int) -> dict[str, Any]:
    return {
        "decode_responses": True,
        "health_check_interval": 30,
        "socket_keepalive": True,
        "socket_connect_timeout": CONNECT_TIMEOUT,
        "socket_timeout": SOCKET_TIMEOUT + wait_timeout_ms / 1000,
        "retry_on_timeout": True,
    }


def _primary_kwargs(url: str) -> dict[str, Any]:
    """What Sentinel mode takes from the URL: database, user, password, TLS."""
    parsed: dict[str, Any] = parse_url(url)  # type: ignore[no-untyped-call]
    out: dict[str, Any] = {"db": int(parsed.get("db", 0) or 0)}
    for key in ("username", "password"):
        if parsed.get(key):
            out[key] = parsed[key]
    if url.startswith("rediss://"):
        out["ssl"] = True
    return out


def _sentinel_kwargs(m: Mode) -> dict[str, Any]:
    kwargs: dict[str, Any] = {
        "socket_timeout": SENTINEL_TIMEOUT,
        "socket_connect_timeout": SENTINEL_TIMEOUT,
        "decode_responses": True,
    }
    if m.sentinel_password:
        kwargs["password"] = m.sentinel_password
    return kwargs


def connect(settings: Settings) -> redis.Redis:
    """A blocking client (workers, notifier, operator)."""
    m = mode(settings)
    _announce(m)
    common = _common(settings.redis_wait_timeout_ms)
    if not m.uses_sentinel:
        return redis.Redis.from_url(m.url, retry=_retry(), **common)
    sentinel = redis.sentinel.Sentinel(list(m.sentinels), sentinel_kwargs=_sentinel_kwargs(m))  # type: ignore[no-untyped-call]
    client = sentinel.master_for(m.master_name, retry=_retry(), **common, **_primary_kwargs(m.url))  # type: ignore[no-untyped-call]
    threading.Thread(
        target=_follow_primary,
        args=(weakref.ref(client.connection_pool),),
        name="redis-follow-primary",
        daemon=True,
    ).start()
    return cast(redis.Redis, client)


def connect_async(settings: Settings) -> redis.asyncio.Redis:
    """An asyncio client (the API)."""
    m = mode(settings)
    _announce(m)
    common = _common(settings.redis_wait_timeout_ms)
    if not m.uses_sentinel:
        return _hiredis_packing(redis.asyncio.Redis.from_url(m.url, retry=_async_retry(), **common))
    sentinel = redis.asyncio.sentinel.Sentinel(list(m.sentinels), sentinel_kwargs=_sentinel_kwargs(m))  # type: ignore[no-untyped-call]
    client = sentinel.master_for(m.master_name, retry=_async_retry(), **common, **_primary_kwargs(m.url))
    return _hiredis_packing(cast(redis.asyncio.Redis, client))


AsyncConnectionClass = type[redis.asyncio.connection.AbstractConnection]


def _hiredis_packing(client: redis.asyncio.Redis) -> redis.asyncio.Redis:
    """`client` with its commands serialized by hiredis, as redis-py's blocking client does.

    redis-py's asyncio connections build the RESP bytes in Python: about 4 us per argument,
    a quarter of a millisecond for the API's enqueue script and its ~60 arguments, more than
    the rest of a POST /download. The pool's connection class (plain, TLS, unix socket or
    Sentinel-managed, whichever the URL chose) gets a subclass that differs only there; the
    bytes on the wire are the same.
    """
    pool = client.connection_pool
    base = pool.connection_class
    if base not in _PACKING:
        _PACKING[base] = _packing_class(base)
    pool.connection_class = _PACKING[base]
    return client


_PACKING: dict[AsyncConnectionClass, AsyncConnectionClass] = {}


def _packing_class(base: AsyncConnectionClass) -> AsyncConnectionClass:
    pack = cast(Callable[[tuple[str | bytes, ...]], bytes], hiredis.pack_command)  # its stub says 1-tuple

    def pack_command(self: redis.asyncio.connection.AbstractConnection, *args: Any) -> list[bytes]:
        return [pack(_encoded(self.encoder, args))]

    name = f"Hiredis{base.__name__}"
    return type(name, (base,), {"pack_command": pack_command, "__module__": __name__, "__qualname__": name})


def _encoded(encoder: Any, args: tuple[Any, ...]) -> tuple[str | bytes, ...]:
    """`args` for hiredis, as redis-py's own `pack_command` would encode them: a command name
    with spaces (`"CONFIG GET"`) split into words, then each argument through the client's
    encoder (bool and unknown types raise its DataError). Strings are left to hiredis, which
    writes them as strict UTF-8: the encoder's default, the only encoding we configure."""
    first = args[0]
    if isinstance(first, str):
        head: tuple[str | bytes, ...] = tuple(first.encode().split())
    elif b" " in first:
        head = tuple(first.split())
    else:
        head = (first,)
    native = _NATIVE if _is_utf8(encoder) else (bytes,)
    return (*head, *[arg if type(arg) in native else bytes(encoder.encode(arg)) for arg in args[1:]])


_NATIVE = (str, bytes)


def _is_utf8(encoder: Any) -> bool:
    encoding = str(encoder.encoding).lower().replace("-", "").replace("_", "")
    return encoder.encoding_errors == "strict" and encoding == "utf8"


def _follow_primary(pool_ref: weakref.ref[redis.sentinel.SentinelConnectionPool]) -> None:
    """Ask the Sentinels for the primary every FOLLOW_SECONDS while the client lives.

    The pool only asks when it opens a connection, so after a failover that left the old
    primary reachable (a manual failover, a partition) pooled connections kept writing to
    it until its demotion, and those writes were lost. A changed answer drops the idle
    connections; busy ones are dropped when they come back to the pool.
    """
    known = None
    while (pool := pool_ref()) is not None:
        known = _check_primary(known, pool.get_master_address)
        del pool
        time.sleep(FOLLOW_SECONDS)


async def follow_primary_async(client: redis.asyncio.Redis) -> None:
    """`_follow_primary` for an asyncio client; runs until cancelled."""
    pool = client.connection_pool
    if not isinstance(pool, redis.asyncio.sentinel.SentinelConnectionPool):
        return
    known = None
    while True:
        try:
            address = await pool.get_master_address()  # type: ignore[no-untyped-call]
        except redis.RedisError:
            address = known  # no primary right now: the commands' own retries cope
        known = _log_move(known, address)
        await asyncio.sleep(FOLLOW_SECONDS)


def _check_primary(known: Any, ask: Callable[[], Any]) -> Any:
    try:
        address = ask()
    except redis.RedisError:
        return known  # no primary right now: the commands' own retries cope
    return _log_move(known, address)


def _log_move(known: Any, address: Any) -> Any:
    if known is not None and address != known:
        log.warning("redis: the primary moved from %s:%s to %s:%s", *known, *address)
    return address


def connect_url(url: str, *, socket_timeout: float = SOCKET_TIMEOUT) -> redis.Redis:
    """A blocking client straight to `url` (tests and tools that have no settings); a test
    that loses replies on purpose shortens `socket_timeout` to see the retry sooner."""
    return redis.Redis.from_url(url, retry=_retry(), **{**_common(0), "socket_timeout": socket_timeout})


def _announce(m: Mode) -> None:
    if m.uses_sentinel:
        log.info(
            "redis: Sentinel mode, primary %r via sentinels %s",
            m.master_name,
            ", ".join(f"{h}:{p}" for h, p in m.sentinels),
        )
    else:
        log.info("redis: direct connection to %s", redacted_url(m.url))


def redacted_url(url: str) -> str:
    """The URL without its password, for logs."""
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))
