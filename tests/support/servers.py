"""Local HTTP servers for the integration tests: a file server and a callback server.

Both listen on 127.0.0.1 on a free port, run in a daemon thread and record what they saw.

`FileServer` serves `tests/data/<name>` (and files added with `add_file`) at `/files/<name>`:

* canned answers queued per path (`answer(name, status, headers, body)`), used before the
  real file, like the original suite's `fsChan`; a `Content-Length` larger than the body
  makes the client see the connection close early (`unexpected EOF`);
* slow answers: `?delay=<s>&chunk=<bytes>` streams the body in chunks with a pause before
  each, `?hold=<s>` waits before answering at all; `?nolength=1` sends no Content-Length
  (the body ends when the connection closes);
* a record of every request (path, query, headers, start and end times) and a concurrency
  counter: requests in flight now and at most, overall and per `?aggr=<tag>`.

`CallbackServer` records every POST body; it answers `status` (200), or the next entry of
a queue of statuses set with `answer_next`; `hold_next` makes it slow to answer.

`RawServer` hands every connection to a function of the test's, for servers that misbehave
below HTTP (trickling, endless, silent).
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import json
import select
import socket
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, cast

DATA = Path(__file__).resolve().parent.parent / "data"

#: Errors of a client that went away while we were answering it (aborted download).
_GONE = (BrokenPipeError, ConnectionResetError, ConnectionAbortedError, TimeoutError)


def wait_until(
    predicate: Callable[[], Any], timeout: float = 20.0, message: str = "condition", interval: float = 0.05
) -> Any:
    """Poll `predicate` until it returns something truthy (returned); AssertionError on timeout."""
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while True:
        try:
            value = predicate()
        except Exception as exc:  # keep polling; say what the last error was
            last = exc
        else:
            if value:
                return value
        if time.monotonic() >= deadline:
            why = f" (last error: {last!r})" if last is not None else ""
            raise AssertionError(f"timed out after {timeout:g}s waiting for {message}{why}")
        time.sleep(interval)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128


class _Base:
    def __init__(self) -> None:
        self._httpd: _Server | None = None
        self._thread: threading.Thread | None = None
        self.stopping = threading.Event()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        raise NotImplementedError

    @property
    def port(self) -> int:
        assert self._httpd is not None, "server not started"
        return int(self._httpd.server_address[1])

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, port: int = 0) -> _Base:
        """Listen on `port` (0: a free one)."""
        self._httpd = _Server(("127.0.0.1", port), self._handler())
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self.stopping.set()  # wakes handlers that hold or trickle an answer
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def __enter__(self) -> _Base:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# --- the file server --------------------------------------------------------------------


@dataclasses.dataclass
class Canned:
    status: int
    headers: dict[str, str] = dataclasses.field(default_factory=dict)
    body: bytes = b""


@dataclasses.dataclass
class Seen:
    """One request the file server received."""

    path: str
    query: dict[str, str]
    headers: list[tuple[str, str]]
    started: float
    ended: float | None = None
    status: int = 0
    served: float | None = None
    """When the last write began, the client still connected: stamped just before it, so a
    busy server thread that gets back late never stretches a request past its true end."""
    aborted: bool = False
    """The client was gone before the answer was written (e.g. a killed worker)."""
    client_port: int = 0

    @property
    def name(self) -> str:
        return self.path.rsplit("/", 1)[-1]

    def header_dict(self) -> dict[str, str]:
        return dict(self.headers)


class FileServer(_Base):
    PREFIX = "/files/"

    def __init__(self, root: Path = DATA) -> None:
        super().__init__()
        self.root = root
        self._lock = threading.Lock()
        self._extra: dict[str, bytes] = {}
        self._canned: dict[str, collections.deque[Canned]] = collections.defaultdict(collections.deque)
        self.requests: list[Seen] = []
        self.in_flight = 0

    # --- what tests call ---------------------------------------------------------

    def url(self, name: str, **query: object) -> str:
        qs = urllib.parse.urlencode({k: str(v) for k, v in query.items()})
        return f"{self.base}{self.PREFIX}{name}" + (f"?{qs}" if qs else "")

    def add_file(self, name: str, data: bytes) -> None:
        with self._lock:
            self._extra[name] = data

    def content(self, name: str) -> bytes:
        with self._lock:
            if name in self._extra:
                return self._extra[name]
        return (self.root / name).read_bytes()

    def answer(
        self, name: str, status: int, headers: Mapping[str, str] | None = None, body: bytes = b""
    ) -> None:
        """Queue a canned answer for the next request of `name` (before the real file)."""
        with self._lock:
            self._canned[name].append(Canned(status, dict(headers or {}), body))

    def seen(self, name: str | None = None) -> list[Seen]:
        with self._lock:
            return [r for r in self.requests if name is None or r.name == name]

    def peak_downloads_for(self, tag: str) -> int:
        """The most answers of `tag` being served at one instant, from each answered request's
        [start, last write]: a span inside the time its client was downloading, so an overlap
        here is a true one. It does not count the time a busy server thread takes to get back
        to its bookkeeping, nor requests whose client was already gone (a killed worker's
        request the server only reached later)."""
        return len(self.peak_requests_for(tag))

    def peak_requests_for(self, tag: str) -> list[Seen]:
        """The answered requests of `tag` that were being served together at its peak."""
        with self._lock:
            answered = [r for r in self.requests if r.query.get("aggr") == tag and r.served is not None]
        events = sorted([(r.started, 1, n) for n, r in enumerate(answered)]
                        + [(cast(float, r.served), -1, n) for n, r in enumerate(answered)])  # fmt: skip
        current: set[int] = set()
        peak: set[int] = set()
        for _, step, n in events:  # an end sorts before a start at the same instant
            if step > 0:
                current.add(n)
            else:
                current.discard(n)
            if len(current) > len(peak):
                peak = set(current)
        return [answered[n] for n in sorted(peak, key=lambda n: answered[n].started)]

    # --- internals ----------------------------------------------------------------

    def _enter(self, seen: Seen) -> None:
        with self._lock:
            self.requests.append(seen)
            self.in_flight += 1

    def _leave(self, seen: Seen) -> None:
        with self._lock:
            seen.ended = time.monotonic()
            self.in_flight -= 1

    def _next_canned(self, name: str) -> Canned | None:
        with self._lock:
            queue = self._canned.get(name)
            return queue.popleft() if queue else None

    def _lookup(self, name: str) -> bytes | None:
        if not name or "/" in name or name.startswith("."):
            return None
        with self._lock:
            if name in self._extra:
                return self._extra[name]
        path = self.root / name
        return path.read_bytes() if path.is_file() else None

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                parts = urllib.parse.urlsplit(self.path)
                query = dict(urllib.parse.parse_qsl(parts.query))
                seen = Seen(parts.path, query, list(self.headers.items()), time.monotonic(),
                            client_port=self.client_address[1])  # fmt: skip
                server._enter(seen)
                try:
                    self._answer(parts.path, query, seen)
                except _GONE:
                    seen.aborted = True
                    seen.served = None
                    self.close_connection = True
                finally:
                    server._leave(seen)

            def _answer(self, path: str, query: dict[str, str], seen: Seen) -> None:
                hold = float(query.get("hold", 0) or 0)
                if hold and server.stopping.wait(hold):
                    return
                name = path[len(server.PREFIX) :] if path.startswith(server.PREFIX) else ""
                canned = server._next_canned(name) if name else None
                if canned is not None:
                    self._send(seen, canned.status, canned.headers, canned.body)
                    return
                data = server._lookup(name)
                if data is None:
                    self._send(seen, 404, {"Content-Type": "text/plain"}, b"404 page not found\n")
                    return
                headers = {"Content-Type": "application/octet-stream", "Content-Length": str(len(data))}
                if query.get("nolength"):
                    # No length: the body runs until we close the connection.
                    del headers["Content-Length"]
                    headers["Connection"] = "close"
                    self.close_connection = True
                delay = float(query.get("delay", 0) or 0)
                if not delay and "Content-Length" in headers:
                    self._send(seen, 200, headers, data)
                    return
                chunk = max(1, int(query.get("chunk", 0) or max(1, len(data) // 10)))
                self._start(seen, 200, headers)
                for i in range(0, len(data), chunk):
                    if delay and server.stopping.wait(delay):
                        self.close_connection = True
                        return
                    if i + chunk >= len(data):
                        self._last_write(seen)
                    self.wfile.write(data[i : i + chunk])
                    self.wfile.flush()

            def _last_write(self, seen: Seen) -> None:
                if _peer_gone(self.connection):  # a dead client's socket still takes one write
                    raise ConnectionResetError("the client is gone")
                seen.served = time.monotonic()

            def _start(self, seen: Seen, status: int, headers: Mapping[str, str]) -> None:
                seen.status = status
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.end_headers()

            def _send(self, seen: Seen, status: int, headers: Mapping[str, str], body: bytes) -> None:
                headers = dict(headers)
                declared = next((v for k, v in headers.items() if k.lower() == "content-length"), None)
                if declared is None:
                    headers["Content-Length"] = str(len(body))
                elif int(declared) != len(body):
                    # A lying Content-Length: send what we have and hang up (a truncated body).
                    headers["Connection"] = "close"
                    self.close_connection = True
                self._start(seen, status, headers)
                self._last_write(seen)
                if body:
                    self.wfile.write(body)
                self.wfile.flush()

        return Handler


def _peer_gone(sock: socket.socket) -> bool:
    """Whether the client closed or reset its end: while it waits for our answer it sends
    nothing, so anything readable is its hang-up."""
    try:
        readable, _, _ = select.select([sock], [], [], 0)
        return bool(readable) and sock.recv(1, socket.MSG_PEEK) == b""
    except OSError:
        return True


# --- the callback server ----------------------------------------------------------------


@dataclasses.dataclass
class Callback:
    path: str
    headers: dict[str, str]
    raw: bytes
    answered: int  # the status we answered, -1 while (or if never) answered
    at: float

    @property
    def payload(self) -> Any:
        return json.loads(self.raw)


class CallbackServer(_Base):
    def __init__(self, status: int = 200) -> None:
        super().__init__()
        self.status = status
        self._lock = threading.Lock()
        self._next: collections.deque[int] = collections.deque()
        self._holds: collections.deque[float] = collections.deque()
        self.received: list[Callback] = []

    @property
    def url(self) -> str:
        return f"{self.base}/callback"

    def answer_next(self, statuses: Iterable[int]) -> None:
        """Answer these statuses to the next POSTs, then `status` again."""
        with self._lock:
            self._next.extend(statuses)

    def all(self) -> list[Callback]:
        with self._lock:
            return list(self.received)

    def for_job(self, job_id: str) -> list[Callback]:
        with self._lock:
            return [c for c in self.received if _job_id(c.raw) == job_id]

    def delivered(self, job_id: str) -> list[Callback]:
        """The callbacks of `job_id` that we answered with a 2xx."""
        return [c for c in self.for_job(job_id) if 200 <= c.answered < 300]

    def wait_for(self, job_id: str, timeout: float = 20.0) -> dict[str, Any]:
        """The payload of the first callback of `job_id` we answered with a 2xx."""
        found: list[Callback] = wait_until(
            lambda: self.delivered(job_id), timeout, f"a delivered callback of job {job_id}"
        )
        payload: dict[str, Any] = found[0].payload
        return payload

    def wait_for_count(self, count: int, timeout: float = 30.0) -> list[Callback]:
        def enough() -> list[Callback] | None:
            got = [c for c in self.all() if 200 <= c.answered < 300]
            return got if len(got) >= count else None

        result: list[Callback] = wait_until(enough, timeout, f"{count} delivered callbacks")
        return result

    def hold_next(self, count: int, seconds: float) -> None:
        """Keep the next `count` POSTs waiting `seconds` before answering (a slow client)."""
        with self._lock:
            self._holds.extend([seconds] * count)

    def _take_hold(self) -> float:
        with self._lock:
            return self._holds.popleft() if self._holds else 0.0

    def _take_status(self) -> int:
        with self._lock:
            return self._next.popleft() if self._next else self.status

    def _record(self, cb: Callback) -> None:
        with self._lock:
            self.received.append(cb)

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                cb = Callback(self.path, dict(self.headers.items()), raw, -1, time.monotonic())
                server._record(cb)
                hold = server._take_hold()
                if hold and server.stopping.wait(hold):
                    self.close_connection = True  # never answered: stays -1
                    return
                status = cb.answered = server._take_status()
                body = b"{}"
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except _GONE:
                    self.close_connection = True

        return Handler


def _job_id(raw: bytes) -> str | None:
    try:
        doc = json.loads(raw)
    except ValueError:
        return None
    return doc.get("job_id") if isinstance(doc, dict) else None


class RawServer:
    """A listening socket on 127.0.0.1: every connection is counted and handed to
    `serve(conn)` in a thread of its own, then closed (socket errors end it quietly)."""

    def __init__(self, serve: Callable[[socket.socket], None]) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.sock.getsockname()[1])
        self.connections = 0
        self._serve = serve
        threading.Thread(target=self._accept, name="raw-server", daemon=True).start()

    def close(self) -> None:
        self.sock.close()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._run, args=(conn,), daemon=True).start()

    def _run(self, conn: socket.socket) -> None:
        with conn, contextlib.suppress(OSError):
            self._serve(conn)


def read_request_head(conn: socket.socket) -> bytes | None:
    """The next request's head, through its blank line; None once the client hung up.
    (Bodies are not read: the tests' clients send small ones along with the head.)"""
    head = b""
    while b"\r\n\r\n" not in head:
        data = conn.recv(65536)
        if not data:
            return None
        head += data
    return head
