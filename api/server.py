"""How the API is served: uvicorn on uvloop and httptools, one write per response.

`options()` are the uvicorn settings of `downloader api` and `downloader up`. uvicorn writes
a response's status line and headers as soon as the app starts the response, and its body
as a second write: two send(2) calls, two TCP segments and two wake-ups of the client for a
23-byte answer. `CoalescingHttpToolsProtocol` hands uvicorn a transport that gathers the
writes of one event-loop pass and sends them together at its end; the bytes are the same.
"""

from __future__ import annotations

import asyncio
import gc
import importlib.util
from typing import Any, cast

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


def options(*, graceful_seconds: int) -> dict[str, Any]:
    """Keyword arguments of `uvicorn.run` / `uvicorn.Config` for the API: uvloop (asyncio's
    own loop where it is missing) and the coalescing httptools protocol (both come with
    `uvicorn[standard]`); no access log (our own logging does requests' errors), no reload,
    a single process."""
    return {
        "loop": "uvloop" if _installed("uvloop") else "asyncio",
        "http": CoalescingHttpToolsProtocol,
        "access_log": False,
        "log_level": "warning",
        "log_config": None,  # its records go through our handler (JSON, redaction)
        "timeout_graceful_shutdown": graceful_seconds,
    }


def freeze_startup_objects() -> None:
    """Move every object alive now (modules, classes, the app and its routes: ~85,000) out of
    the garbage collector's reach. Left in, each full collection walks them all, about 40 ms
    of stalled event loop every few tens of thousands of requests; the objects of requests
    are collected as before. Call it once, just before serving."""
    gc.collect()
    gc.freeze()


def _installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


class CoalescingHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol over a `CoalescingTransport`."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not registered as asyncio.Transport: no isinstance check.
        super().connection_made(CoalescingTransport(cast(asyncio.Transport, transport), self.loop))


#: Bytes gathered at most before they are written at once: a body streamed without a pause
#: still reaches the wrapped transport, and its flow control, in pieces of this size.
COALESCE_MAX = 64 * 1024


class CoalescingTransport(asyncio.Transport):
    """A transport whose writes within one pass of the event loop become one write of the
    wrapped transport, made by a callback at the end of that pass (at once before a close,
    or past COALESCE_MAX bytes).

    Everything else is the wrapped transport's. Data still gathered when the connection is
    already closing is dropped, as the wrapped transport would drop it.
    """

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__()
        self._transport = transport
        self._loop = loop
        self._pending: list[bytes] = []
        self._size = 0

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not self._pending:
            self._loop.call_soon(self._flush)
        self._pending.append(bytes(data))  # the caller may reuse a bytearray or memoryview
        self._size += len(data)
        if self._size > COALESCE_MAX:
            self._flush()

    def writelines(self, list_of_data: Any) -> None:
        for data in list_of_data:
            self.write(data)

    def _flush(self) -> None:
        if not self._pending:
            return
        data = self._pending[0] if len(self._pending) == 1 else b"".join(self._pending)
        self._pending.clear()
        self._size = 0
        if not self._transport.is_closing():
            self._transport.write(data)

    def close(self) -> None:
        self._flush()
        self._transport.close()

    def abort(self) -> None:
        self._pending.clear()
        self._size = 0
        self._transport.abort()

    def write_eof(self) -> None:
        self._flush()
        self._transport.write_eof()

    def can_write_eof(self) -> bool:
        return self._transport.can_write_eof()

    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size() + self._size

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self._transport.get_write_buffer_limits()

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self._transport.set_write_buffer_limits(high, low)

    def pause_reading(self) -> None:
        self._transport.pause_reading()

    def resume_reading(self) -> None:
        self._transport.resume_reading()

    def is_reading(self) -> bool:
        return self._transport.is_reading()

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._transport.set_protocol(protocol)

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._transport.get_protocol()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._transport.get_extra_info(name, default)
