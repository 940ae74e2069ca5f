"""api/server.py: the uvicorn settings of the API and the transport that makes one write of a
response's head and body."""

from __future__ import annotations

import asyncio
from typing import Any

from downloader.api import server


class FakeTransport:
    """The parts of an asyncio transport the wrapper uses, recording the writes."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closing = False
        self.aborted = False

    def write(self, data: bytes) -> None:
        assert not self.closing
        self.writes.append(data)

    def close(self) -> None:
        self.closing = True

    def abort(self) -> None:
        self.closing = self.aborted = True

    def is_closing(self) -> bool:
        return self.closing

    def get_write_buffer_size(self) -> int:
        return 0

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 1)}.get(name, default)


def run(check: Any) -> None:
    async def main() -> None:
        inner = FakeTransport()
        await check(inner, server.CoalescingTransport(inner, asyncio.get_running_loop()))  # type: ignore[arg-type]

    asyncio.run(main())


def test_the_writes_of_one_loop_pass_are_one_write() -> None:
    async def check(inner: FakeTransport, outer: server.CoalescingTransport) -> None:
        outer.write(b"HTTP/1.1 201 Created\r\n\r\n")
        outer.write(memoryview(b'{"id":"x"}'))
        assert inner.writes == [] and outer.get_write_buffer_size() == 34
        await asyncio.sleep(0)
        assert inner.writes == [b'HTTP/1.1 201 Created\r\n\r\n{"id":"x"}']
        outer.write(b"next")
        await asyncio.sleep(0)
        assert inner.writes[1:] == [b"next"]

    run(check)


def test_a_close_writes_what_is_pending_first() -> None:
    async def check(inner: FakeTransport, outer: server.CoalescingTransport) -> None:
        outer.write(b"a")
        outer.writelines([b"b", b"c"])
        outer.close()
        assert inner.writes == [b"abc"] and inner.closing and outer.is_closing()
        await asyncio.sleep(0)  # the scheduled flush finds nothing left
        assert inner.writes == [b"abc"]

    run(check)


def test_nothing_is_written_to_a_connection_already_gone() -> None:
    async def check(inner: FakeTransport, outer: server.CoalescingTransport) -> None:
        outer.write(b"late")
        inner.closing = True  # the peer went away meanwhile
        await asyncio.sleep(0)
        assert inner.writes == []
        outer.write(b"x")
        outer.abort()
        assert inner.aborted and outer.get_write_buffer_size() == 0

    run(check)


def test_a_large_body_is_not_held_back() -> None:
    async def check(inner: FakeTransport, outer: server.CoalescingTransport) -> None:
        chunk = b"x" * (server.COALESCE_MAX // 2 + 1)
        outer.write(chunk)
        assert inner.writes == []
        outer.write(chunk)  # past the cap: written at once, flow control sees it
        assert inner.writes == [chunk + chunk]
        assert outer.get_extra_info("peername") == ("127.0.0.1", 1)

    run(check)


def test_the_api_runs_on_uvloop_and_the_coalescing_protocol_without_access_log() -> None:
    options = server.options(graceful_seconds=7)
    assert options["loop"] == "uvloop"
    assert options["http"] is server.CoalescingHttpToolsProtocol
    assert options["access_log"] is False
    assert options["timeout_graceful_shutdown"] == 7
    assert "reload" not in options and "workers" not in options
