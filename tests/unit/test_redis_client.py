"""redis_client: parsing the Sentinel list, choosing the mode, and what the clients are built
with. No Redis is needed: building a client opens no connection."""

from __future__ import annotations

import asyncio
import logging

import pytest
import redis.asyncio.sentinel
import redis.sentinel

from downloader.config import parsing
from downloader.config.settings import Settings
from downloader.errors import ConfigurationError
from downloader.store import redis_client


def settings(**values: object) -> Settings:
    defaults: dict[str, object] = {"redis_url": "redis://127.0.0.1:6399/0", "redis_sentinels": "",
                                   "redis_master_name": ""}  # fmt: skip
    return Settings(**{**defaults, **values})  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", ()),
        ("  ", ()),
        ("10.0.0.1:26379", (("10.0.0.1", 26379),)),
        ("a:1, b:2 ,c:3", (("a", 1), ("b", 2), ("c", 3))),
        ("sentinel.example", (("sentinel.example", 26379),)),
        ("[::1]:26380", (("::1", 26380),)),
    ],
)
def test_sentinel_lists_are_parsed(text: str, expected: tuple[tuple[str, int], ...]) -> None:
    assert parsing.sentinel_addresses(text) == expected


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("a:1,", "empty entry"),
        ("a:1,,b:2", "empty entry"),
        ("a:port", "invalid address 'a:port'"),
        ("a:99999", "invalid address 'a:99999'"),
        (":26379", "invalid address ':26379'"),
        ("a:0", "invalid port in 'a:0'"),
        ("a:1/x", "invalid address 'a:1/x'"),
        ("user@a:1", "invalid address 'user@a:1'"),
    ],
)
def test_invalid_sentinel_lists_fail_with_one_line_naming_the_setting(text: str, why: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        parsing.sentinel_addresses(text)
    message = str(caught.value)
    assert message.startswith(f"DOWNLOADER_REDIS_SENTINELS={text!r}: {why}")
    assert "\n" not in message


def test_sentinel_mode_needs_both_the_list_and_the_master_name(caplog: pytest.LogCaptureFixture) -> None:
    both = redis_client.mode(settings(redis_sentinels="a:1,b:2", redis_master_name="mymaster"))
    assert both.uses_sentinel and both.master_name == "mymaster"
    assert both.sentinels == (("a", 1), ("b", 2))

    assert not redis_client.mode(settings()).uses_sentinel
    with caplog.at_level(logging.WARNING, "downloader.redis"):
        only_list = redis_client.mode(settings(redis_sentinels="a:1"))
        only_name = redis_client.mode(settings(redis_master_name="mymaster"))
    assert not only_list.uses_sentinel and not only_name.uses_sentinel
    assert caplog.text.count("Sentinel needs both") == 2


def test_an_invalid_list_fails_even_without_a_master_name() -> None:
    with pytest.raises(ConfigurationError):
        redis_client.mode(settings(redis_sentinels="a:b"))


def test_a_direct_client_retries_with_backoff_and_keeps_the_url() -> None:
    client = redis_client.connect(settings(redis_url="redis://:secret@127.0.0.1:6399/3"))
    try:
        kwargs = client.connection_pool.connection_kwargs
        assert (kwargs["port"], kwargs["db"], kwargs["password"]) == (6399, 3, "secret")
        assert kwargs["decode_responses"] is True
        assert kwargs["retry"].get_retries() == redis_client.RETRIES
        assert not isinstance(client.connection_pool, redis.sentinel.SentinelConnectionPool)
    finally:
        client.close()


def test_a_sentinel_client_takes_db_user_and_password_from_the_url() -> None:
    s = settings(
        redis_url="redis://app:secret@ignored-host:1/2",
        redis_sentinels="127.0.0.1:1,127.0.0.1:2",
        redis_master_name="mymaster",
        redis_sentinel_password="sentinel-secret",
    )
    client = redis_client.connect_async(s)
    pool = client.connection_pool
    assert isinstance(pool, redis.asyncio.sentinel.SentinelConnectionPool)
    assert pool.service_name == "mymaster"
    kwargs = pool.connection_kwargs
    assert (kwargs["db"], kwargs["username"], kwargs["password"]) == (2, "app", "secret")
    assert "host" not in kwargs, "the primary's address comes from the Sentinels"
    manager = pool.sentinel_manager
    assert [s.connection_pool.connection_kwargs["port"] for s in manager.sentinels] == [1, 2]
    assert manager.sentinels[0].connection_pool.connection_kwargs["password"] == "sentinel-secret"
    asyncio.run(client.aclose())


def test_the_mode_and_sentinels_are_logged_without_passwords(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, "downloader.redis"):
        redis_client.connect_async(settings(redis_url="redis://:secret@127.0.0.1:6399/0"))
        redis_client.connect_async(settings(redis_sentinels="127.0.0.1:1", redis_master_name="m"))
    assert "direct connection to redis://:***@127.0.0.1:6399/0" in caplog.text
    assert "Sentinel mode, primary 'm' via sentinels 127.0.0.1:1" in caplog.text
    assert "secret" not in caplog.text


# --- the asyncio client's commands are serialized by hiredis -------------------------------

PACKED = [
    ("EVALSHA", "0" * 40, 2, "job:x", "jobs:a", "1701000000.25", 4, "", "é ü", b"\x00\xff"),
    ("SET", "k", 1.5),
    ("HSET", "h", "f", -7, "g", 12345678901234567890),
    ("CONFIG GET", "maxmemory"),
    (b"CLIENT SETNAME", b"x"),
    ("PING",),
    ("SET", "k", bytearray(b"ab")),
    ("SET", "k", memoryview(b"cd")),
]


@pytest.mark.parametrize("url", ["redis://127.0.0.1:6399/0", "rediss://127.0.0.1:6399/0"])
@pytest.mark.parametrize("args", PACKED, ids=[str(a[0]) for a in PACKED])
def test_the_async_client_packs_commands_as_redis_py_does(url: str, args: tuple[object, ...]) -> None:
    client = redis_client.connect_async(settings(redis_url=url))
    pool = client.connection_pool
    ours = pool.make_connection()
    theirs = pool.connection_class.__mro__[1](**pool.connection_kwargs)  # the class the URL chose
    assert type(ours).__name__ == "Hiredis" + type(theirs).__name__
    assert b"".join(ours.pack_command(*args)) == b"".join(theirs.pack_command(*args))
    asyncio.run(client.aclose())


def test_values_redis_py_refuses_are_refused_alike() -> None:
    client = redis_client.connect_async(settings())
    conn = client.connection_pool.make_connection()
    for bad in (True, None, object()):
        with pytest.raises(redis.DataError):
            conn.pack_command("SET", "k", bad)
    asyncio.run(client.aclose())


def test_the_sentinel_client_packs_with_hiredis_too() -> None:
    client = redis_client.connect_async(settings(redis_sentinels="127.0.0.1:1", redis_master_name="m"))
    cls = client.connection_pool.connection_class
    assert cls.__name__ == "HiredisSentinelManagedConnection"
    assert issubclass(cls, redis.asyncio.sentinel.SentinelManagedConnection)
    asyncio.run(client.aclose())
