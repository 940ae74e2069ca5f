"""The harness shared by `e2e.py` and `compare.py`: test files, the two helper HTTP servers
(file server, callback receiver), a private Redis, child processes, job bodies, posting,
Redis command accounting and the per-job verification.

Everything listens on 127.0.0.1. The scripts of bench/ run from this folder and import it by name.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import math
import multiprocessing as mp
import os
import queue
import random
import resource
import signal
import statistics
import struct
import subprocess
import threading
import time
import zlib
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from hostinfo import free_port, percentile, proc_cpu_seconds, proc_status, set_pdeathsig

MP = mp.get_context("fork")  # children are forked before any thread of the parent starts


class SetupError(RuntimeError):
    """Something the benchmark needs did not start; the message carries the log tail."""


# --- small helpers ------------------------------------------------------------------------


def summary_ms(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    ms = [v * 1000 for v in values]
    return {
        "p50": round(percentile(ms, 50), 1),
        "p95": round(percentile(ms, 95), 1),
        "p99": round(percentile(ms, 99), 1),
        "max": round(max(ms), 1),
        "mean": round(statistics.fmean(ms), 1),
    }


def steady_rate(times: Iterable[float]) -> float | None:
    """Events/s between the 10th and the 90th percentile event: the rate once running,
    without the start-up ramp (aggregation discovery) and the tail."""
    ordered = sorted(times)
    if len(ordered) < 20:
        return None
    lo, hi = ordered[len(ordered) // 10], ordered[(len(ordered) * 9) // 10]
    return round((len(ordered) * 8 / 10) / (hi - lo), 1) if hi > lo else None


# --- test files -----------------------------------------------------------------------------


def png_file(seed: int, side: int) -> bytes:
    """A valid RGB PNG of side x side random pixels (incompressible, so its size is ~3*side^2)."""
    rng = random.Random(seed)
    row = 3 * side
    raw = b"".join(b"\x00" + rng.randbytes(row) for _ in range(side))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(raw, 1))
        + chunk(b"IEND", b"")
    )


def png_side(size: int) -> int:
    """The side in pixels of a `png_file` of about `size` bytes."""
    return max(1, round(math.sqrt(max(1, size - 70) / 3)))


# --- the two helper HTTP servers (each in its own process) ----------------------------------


async def serve_http(port_out: Any, stop: Any, on_request: Any, finish: Any) -> None:
    """A minimal HTTP/1.1 server with keep-alive; `on_request(method, path, body)` -> (status,
    content type, body). Reports its port through `port_out`, runs until `stop` is set."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, asyncio.LimitOverrunError):
                    return
                lines = head.split(b"\r\n")
                method, path, _version = lines[0].split(b" ", 2)
                length = 0
                close = False
                for line in lines[1:]:
                    name, _, value = line.partition(b":")
                    name = name.strip().lower()
                    if name == b"content-length":
                        length = int(value.strip())
                    elif name == b"connection" and value.strip().lower() == b"close":
                        close = True
                body = await reader.readexactly(length) if length else b""
                status, ctype, payload = on_request(method, path, body)
                reason = {200: b"OK", 404: b"Not Found"}.get(status, b"Other")
                writer.write(
                    b"HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %d\r\n%s\r\n"
                    % (status, reason, ctype, len(payload), b"Connection: close\r\n" if close else b"")
                )
                writer.write(payload)
                await writer.drain()
                if close:
                    return
        except (ConnectionError, asyncio.IncompleteReadError, ValueError, asyncio.CancelledError):
            return  # a client gone, or this server shutting down
        finally:
            with contextlib.suppress(Exception):
                writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, backlog=4096, reuse_address=True)
    port_out.put(server.sockets[0].getsockname()[1])
    async with server:
        while not stop.is_set():
            await asyncio.sleep(0.05)
    finish()


def child_setup() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops us through `stop`
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    set_pdeathsig()
    # The original opens a new connection per callback and up to aggr_limit downloads per
    # aggregation at once: leave room for thousands of sockets.
    with contextlib.suppress(ValueError, OSError):
        _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    with contextlib.suppress(ImportError):
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def file_server_main(files: list[bytes], port_out: Any, stop: Any, report: Any) -> None:
    """Serves `files[i]` at `/f/<i>.png` and at `/f/<tag>/<i>.png`. It records when each URL
    is first requested: untagged ones go to `report` when it stops (e2e.py); tagged ones are
    answered, and forgotten, by `GET /_gets/<tag>` as JSON `{i: monotonic time}` (compare.py),
    and counted, not forgotten, by `GET /_count/<tag>`."""
    child_setup()
    first_get: dict[int, float] = {}
    tagged: dict[str, dict[int, float]] = {}
    gets = [0]
    not_found = [0]

    def on_request(method: bytes, path: bytes, body: bytes) -> tuple[int, bytes, bytes]:
        now = time.monotonic()
        gets[0] += 1
        if path.startswith(b"/f/") and path.endswith(b".png"):
            tag, _, name = path[3:-4].rpartition(b"/")
            try:
                i = int(name)
                data = files[i]
            except (ValueError, IndexError):
                pass
            else:
                if tag:
                    tagged.setdefault(tag.decode("latin-1"), {}).setdefault(i, now)
                else:
                    first_get.setdefault(i, now)
                return 200, b"image/png", data
        elif path.startswith(b"/_gets/"):
            gets[0] -= 1
            seen = tagged.pop(path[7:].decode("latin-1"), {})
            return 200, b"application/json", json.dumps(seen).encode()
        elif path.startswith(b"/_count/"):
            gets[0] -= 1
            return 200, b"text/plain", str(len(tagged.get(path[8:].decode("latin-1"), {}))).encode()
        not_found[0] += 1
        return 404, b"text/plain", b"not found\n"

    def finish() -> None:
        report.put({"requests": gets[0], "not_found": not_found[0], "first_get": first_get})

    asyncio.run(serve_http(port_out, stop, on_request, finish))


def callback_server_main(port_out: Any, stop: Any, arrivals: Any) -> None:
    """Records `(arrival time, path, parsed JSON body)` of every request and answers 200."""
    child_setup()

    def on_request(method: bytes, path: bytes, body: bytes) -> tuple[int, bytes, bytes]:
        now = time.monotonic()
        try:
            doc = json.loads(body)
        except ValueError:
            doc = {"unparsable": body[:200].decode("latin-1")}
        arrivals.put((now, path.decode("latin-1"), doc))
        return 200, b"text/plain", b"ok"

    asyncio.run(serve_http(port_out, stop, on_request, lambda: None))


class Helpers:
    """The file server and the callback receiver of a whole compare session, shared by every
    run of both implementations. Callbacks are filed by the path they were POSTed to
    (`/cb/<tag>`), so each run sees only its own. Create it before starting any thread."""

    def __init__(self, files: list[bytes]) -> None:
        self.stop = MP.Event()
        self.arrivals: Any = MP.Queue()
        self.report: Any = MP.Queue()
        ports: Any = MP.Queue()
        self.children = {
            "fileserver": MP.Process(
                target=file_server_main,
                args=(files, ports, self.stop, self.report),
                name="bench-fileserver",
                daemon=True,
            ),
            "callbacks": MP.Process(
                target=callback_server_main,
                args=(ports, self.stop, self.arrivals),
                name="bench-callbacks",
                daemon=True,
            ),
        }
        self.children["fileserver"].start()
        self.file_port = int(ports.get(timeout=20))
        self.children["callbacks"].start()
        self.callback_port = int(ports.get(timeout=20))
        self.lock = threading.Lock()
        self.by_path: dict[str, list[tuple[float, dict[str, Any]]]] = {}
        self.count = 0
        self._stop_collector = threading.Event()
        self._collector = threading.Thread(target=self._collect, name="collector", daemon=True)
        self._collector.start()

    def _collect(self) -> None:
        while not self._stop_collector.is_set():
            try:
                t, path, doc = self.arrivals.get(timeout=0.1)
            except queue.Empty:
                continue
            except (EOFError, OSError):
                return
            with self.lock:
                self.by_path.setdefault(path, []).append((t, doc))
                self.count += 1

    def file_url(self, tag: str, i: int) -> str:
        return f"http://127.0.0.1:{self.file_port}/f/{tag}/{i}.png"

    def callback_url(self, tag: str) -> str:
        return f"http://127.0.0.1:{self.callback_port}/cb/{tag}"

    def callbacks(self, tag: str) -> list[tuple[float, dict[str, Any]]]:
        with self.lock:
            return list(self.by_path.get(f"/cb/{tag}", []))

    def pop_callbacks(self, tag: str) -> list[tuple[float, dict[str, Any]]]:
        with self.lock:
            return self.by_path.pop(f"/cb/{tag}", [])

    def first_gets(self, tag: str) -> dict[int, float]:
        """When the file server first saw each file of `tag` requested (and forget them)."""
        conn = http.client.HTTPConnection("127.0.0.1", self.file_port, timeout=10)
        try:
            conn.request("GET", f"/_gets/{tag}")
            return {int(k): v for k, v in json.loads(conn.getresponse().read()).items()}
        finally:
            conn.close()

    def fetched(self, tag: str) -> int:
        """How many files of `tag` have been requested so far (they are not forgotten)."""
        conn = http.client.HTTPConnection("127.0.0.1", self.file_port, timeout=10)
        try:
            conn.request("GET", f"/_count/{tag}")
            return int(conn.getresponse().read())
        finally:
            conn.close()

    def alive(self) -> list[str]:
        return [name for name, child in self.children.items() if not child.is_alive()]

    def pids(self) -> dict[str, int]:
        return {name: child.pid for name, child in self.children.items() if child.pid}

    def close(self) -> None:
        self._stop_collector.set()
        self.stop.set()
        for child in self.children.values():
            child.join(3)
            if child.is_alive():
                child.kill()
                child.join(3)
        for q in (self.arrivals, self.report):
            q.cancel_join_thread()
            q.close()


# --- child processes ---------------------------------------------------------------------------


class Procs:
    """Named child processes, each with its log file in `logdir`, PR_SET_PDEATHSIG and its
    own session; `stop_all` ends them (SIGTERM, then SIGKILL)."""

    def __init__(self, logdir: Path) -> None:
        self.logdir = logdir
        self.popen: dict[str, subprocess.Popen[bytes]] = {}
        self.started: dict[str, float] = {}

    def start(
        self, name: str, cmd: list[str], env: dict[str, str] | None = None, cwd: Path | None = None
    ) -> None:
        log = (self.logdir / f"{name}.log").open("wb")
        try:
            self.popen[name] = subprocess.Popen(
                cmd,
                env=env,
                cwd=cwd or self.logdir,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                preexec_fn=set_pdeathsig,
            )
        except OSError as exc:
            raise SetupError(f"cannot start {name} ({cmd[0]}): {exc}") from exc
        finally:
            log.close()
        self.started[name] = time.monotonic()

    def tail(self, name: str, size: int = 3000) -> str:
        try:
            return (self.logdir / f"{name}.log").read_text(errors="replace")[-size:]
        except OSError:
            return "(no log)"

    def check_alive(self) -> None:
        for name, proc in self.popen.items():
            if proc.poll() is not None:
                raise SetupError(f"{name} exited with status {proc.returncode}:\n{self.tail(name)}")

    def pids(self) -> dict[str, int]:
        return {name: p.pid for name, p in self.popen.items()}

    def stop(self, names: Iterable[str], timeout: float = 10) -> None:
        names = [n for n in names if n in self.popen]
        for name in names:
            with contextlib.suppress(ProcessLookupError):
                self.popen[name].terminate()
        deadline = time.monotonic() + timeout
        for name in names:
            try:
                self.popen[name].wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    self.popen[name].kill()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.popen[name].wait(5)

    def stop_all(self, timeout: float = 10, last: Iterable[str] = ("redis",)) -> None:
        """Stop everything, the names in `last` (Redis) after the others."""
        last = [n for n in last if n in self.popen]
        self.stop([n for n in self.popen if n not in last], timeout)
        self.stop(last, timeout)


def cpu_of(pids: dict[str, int]) -> dict[str, float | None]:
    return {name: proc_cpu_seconds(pid) for name, pid in pids.items()}


def peak_rss_mb(pid: int) -> float | None:
    kb = proc_status(pid).get("VmHWM")
    return None if kb is None else round(kb / 1024, 1)


# --- Redis -------------------------------------------------------------------------------------


def start_redis(procs: Procs, binary: str, workdir: Path, name: str = "redis") -> tuple[int, Any]:
    """A private redis-server on a free port (no persistence); returns (port, client)."""
    import redis

    port = free_port()
    procs.start(
        name,
        [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(workdir),
        ],
        cwd=workdir,
    )
    client = redis.Redis(port=port, decode_responses=True, socket_connect_timeout=1)
    deadline = time.monotonic() + 20
    while True:
        try:
            client.ping()
            return port, client
        except redis.RedisError:
            if time.monotonic() > deadline or procs.popen[name].poll() is not None:
                raise SetupError(f"{binary} did not start:\n{procs.tail(name)}") from None
            time.sleep(0.05)


def redis_snapshot(client: Any) -> dict[str, Any]:
    """`INFO commandstats` and `INFO stats`, pipelined in one round trip (so this costs exactly
    two INFO calls and one read event, which `redis_diff` takes off)."""
    pipe = client.pipeline(transaction=False)
    pipe.info("commandstats")
    pipe.info("stats")
    cmdstats, stats = pipe.execute()
    calls: dict[str, int] = {}
    rejected: dict[str, int] = {}
    for key, value in cmdstats.items():
        name = key.removeprefix("cmdstat_")
        calls[name] = int(value.get("calls", 0))
        rejected[name] = int(value.get("rejected_calls", 0))
    return {
        "t": time.monotonic(),
        "calls": calls,
        "rejected": rejected,
        "total_commands_processed": int(stats.get("total_commands_processed", 0)),
        "total_reads_processed": int(stats.get("total_reads_processed", 0)),
        "total_connections_received": int(stats.get("total_connections_received", 0)),
    }


#: Commands a script runs by (one call each, whatever the script does inside).
SCRIPT_CALLS = ("eval", "evalsha", "eval_ro", "evalsha_ro", "fcall", "fcall_ro")


def redis_diff(a: dict[str, Any], b: dict[str, Any], own: dict[str, int] | None = None) -> dict[str, Any]:
    """What the processes asked of Redis between two snapshots, without the snapshots' own cost.

    * `all`: every executed command in `INFO commandstats` (calls + rejected_calls), which in
      Redis 6.2 and 7 counts the commands that scripts run with redis.call as well as the
      scripts themselves (EVALSHA counts 1, and each redis.call inside it 1 more);
    * `read_events`: `total_reads_processed`, the times Redis read a client socket: one per
      request, or per pipeline / MULTI..EXEC block sent in one write, so the client round trips;
    * `scripts`: EVAL/EVALSHA calls; `by_command`: the `all` figure per command."""
    by_command: dict[str, int] = {}
    for name in set(a["calls"]) | set(b["calls"]) | set(b["rejected"]):
        n = b["calls"].get(name, 0) - a["calls"].get(name, 0)
        n += b["rejected"].get(name, 0) - a["rejected"].get(name, 0)
        if name == "info":
            n -= 2  # the two INFO of snapshot `a`
        n -= (own or {}).get(name, 0)
        if n:
            by_command[name] = n
    return {
        "seconds": round(b["t"] - a["t"], 3),
        "all": sum(by_command.values()),
        "read_events": b["total_reads_processed"]
        - a["total_reads_processed"]
        - 1
        - sum((own or {}).values()),
        "scripts": sum(by_command.get(n, 0) for n in SCRIPT_CALLS),
        "connections": b["total_connections_received"] - a["total_connections_received"],
        "by_command": dict(sorted(by_command.items(), key=lambda kv: -kv[1])),
    }


class Monitor:
    """`MONITOR` on its own connection, in a thread. Between the commands `ECHO <start>` and
    `ECHO <end>` (sent by the caller) it counts the commands clients sent (each command of a
    pipeline or of a MULTI block once) apart from those scripts ran (`[<db> lua]` lines).
    Redis formats every command for it, which costs Redis CPU: use it only in its own run."""

    def __init__(self, port: int, start: str, end: str) -> None:
        import socket

        self.start_line = f'"echo" "{start}"'.encode()
        self.end_line = f'"echo" "{end}"'.encode()
        self.counts: dict[str, Any] = {"client": 0, "lua": 0, "by_client_command": {}, "complete": False}
        self._counting = False
        self._buf = b""
        self._stop = threading.Event()
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.sock.sendall(b"MONITOR\r\n")
        first = self._readline()
        if first != b"+OK":
            raise SetupError(f"MONITOR answered {first!r}")
        self.sock.settimeout(0.2)
        self.thread = threading.Thread(target=self._run, name="monitor", daemon=True)
        self.thread.start()

    def _readline(self) -> bytes | None:
        while b"\r\n" not in self._buf:
            try:
                chunk = self.sock.recv(1 << 16)
            except TimeoutError:
                if self._stop.is_set():
                    return None
                continue
            except OSError:
                return None
            if not chunk:
                return None
            self._buf += chunk
        line, _, self._buf = self._buf.partition(b"\r\n")
        return line

    def _run(self) -> None:
        while True:
            line = self._readline()
            if line is None:
                return
            # +1700000000.123456 [0 127.0.0.1:5555] "cmd" "arg" ...   or   [0 lua] "cmd" ...
            _, _, rest = line.partition(b"[")
            source, _, args = rest.partition(b"] ")
            if not self._counting:
                if args.lower().startswith(self.start_line):
                    self._counting = True
                continue
            if args.lower().startswith(self.end_line):
                self._counting = False
                self.counts["complete"] = True
                return
            if source.endswith(b" lua"):
                self.counts["lua"] += 1
            else:
                self.counts["client"] += 1
                cmd = args.split(b" ", 1)[0].strip(b'"').decode("latin-1").lower()
                by = self.counts["by_client_command"]
                by[cmd] = by.get(cmd, 0) + 1

    def result(self, timeout: float = 10) -> dict[str, Any]:
        """The counts, once the end marker was seen (or after `timeout`)."""
        self.thread.join(timeout)
        self._stop.set()
        with contextlib.suppress(OSError):
            self.sock.close()
        self.thread.join(2)
        out = dict(self.counts)
        out["by_client_command"] = dict(sorted(out["by_client_command"].items(), key=lambda kv: -kv[1]))
        return out


# --- jobs --------------------------------------------------------------------------------------


def job_body(
    *,
    url: str,
    aggr_id: str,
    aggr_limit: int,
    callback_dst: str,
    extra: str,
    checks: bool,
) -> bytes:
    doc: dict[str, Any] = {
        "url": url,
        "aggr_id": aggr_id,
        "aggr_limit": aggr_limit,
        "callback_type": "http",
        "callback_dst": callback_dst,
        "extra": extra,
    }
    if checks:
        doc["mime_type"] = "image/png"
        doc["extract_image_size"] = True
    return json.dumps(doc).encode()


class Posted:
    """What `post_jobs` did: per job its send and 201 times, its id, and any rejections."""

    def __init__(self, n: int) -> None:
        self.sent = [0.0] * n
        self.accepted = [0.0] * n
        self.ids: list[str | None] = [None] * n
        self.rejects: list[str] = []
        self.posted = 0


def post_jobs(
    port: int, bodies: list[bytes], clients: int = 8, rate: float = 0, out: Posted | None = None
) -> Posted:
    """POST every body to /download from `clients` threads, each with one keep-alive
    connection; as fast as the API answers, or at `rate` jobs/s (open loop: job i is due at
    start + i / rate). A failed POST is not retried (it may have been queued)."""
    n = len(bodies)
    res = out or Posted(n)
    start: list[float] = []
    barrier = threading.Barrier(clients, action=lambda: start.append(time.monotonic()))
    lock = threading.Lock()

    def client(c: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        barrier.wait()
        for i in range(c, n, clients):
            if rate:
                delay = start[0] + i / rate - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            resp, data = None, b""
            try:
                res.sent[i] = time.monotonic()
                conn.request("POST", "/download", bodies[i], {"Content-Type": "application/json"})
                resp = conn.getresponse()
                data = resp.read()
                res.accepted[i] = time.monotonic()
            except (OSError, http.client.HTTPException) as exc:
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
                with lock:
                    res.rejects.append(f"job {i}: {type(exc).__name__}: {exc}")
            if resp is not None and resp.status == 201:
                try:
                    res.ids[i] = json.loads(data)["id"]
                except (ValueError, KeyError, TypeError):
                    with lock:
                        res.rejects.append(f"job {i}: 201 with {data[:200]!r}")
            elif resp is not None:
                with lock:
                    res.rejects.append(f"job {i}: {resp.status} {data[:200]!r}")
            with lock:
                res.posted += 1
        conn.close()

    threads = [threading.Thread(target=client, args=(c,), name=f"client-{c}") for c in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return res


def http_ok(port: int, path: str = "/hb") -> bool:
    with contextlib.suppress(OSError, http.client.HTTPException):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
        try:
            conn.request("GET", path)
            return conn.getresponse().status == 200
        finally:
            conn.close()
    return False


def verify_jobs(
    *,
    ids: list[str | None],
    docs: list[dict[str, Any]],
    files: list[bytes],
    storage_root: Path,
    url_of: Callable[[int], str],
    expect_image: str,
    expected_jobs: int,
    rejects: list[str],
) -> dict[str, Any]:
    """Each accepted job must have exactly one callback, `success: true`, `response_code` 200,
    its `extra` (its index), its `resource_url`, a `download_url` ending in `<id[:3]>/<id>`,
    `image_size` `expect_image` (empty without the checks), and its stored file must exist
    under `storage_root/<id[:3]>/<id>` with the served size. No callback may be stray."""
    by_id: dict[str, list[dict[str, Any]]] = {}
    stray = 0
    for doc in docs:
        job_id = doc.get("job_id")
        if not isinstance(job_id, str):
            stray += 1
            continue
        by_id.setdefault(job_id, []).append(doc)
    index_of = {job_id: i for i, job_id in enumerate(ids) if job_id is not None}
    stray += sum(1 for job_id in by_id if job_id not in index_of)
    missing: list[str] = []
    duplicated: list[str] = []
    failed: list[str] = []
    bad_payload: list[dict[str, Any]] = []
    files_ok, files_missing, files_wrong_size = 0, [], []
    for i, job_id in enumerate(ids):
        if job_id is None:
            continue
        got = by_id.get(job_id, [])
        if not got:
            missing.append(job_id)
            continue
        if len(got) > 1:
            duplicated.append(job_id)
        doc = got[0]
        if not doc.get("success"):
            failed.append(f"{job_id}: {doc.get('error')}")
        if (
            doc.get("extra") != str(i)
            or doc.get("response_code") != 200
            or not str(doc.get("download_url", "")).endswith(f"{job_id[:3]}/{job_id}")
            or doc.get("image_size") != expect_image
            or doc.get("resource_url") != url_of(i)
        ):
            bad_payload.append(
                {
                    k: doc.get(k)
                    for k in ("job_id", "extra", "response_code", "download_url", "image_size", "error")
                }
            )
        path = storage_root / job_id[:3] / job_id
        try:
            size = path.stat().st_size
        except OSError:
            files_missing.append(job_id)
            continue
        if size == len(files[i]):
            files_ok += 1
        else:
            files_wrong_size.append(f"{job_id}: {size} != {len(files[i])}")
    accepted = sum(1 for x in ids if x is not None)
    ok = (
        accepted == expected_jobs
        and not (missing or duplicated or failed or bad_payload or files_missing or files_wrong_size)
        and stray == 0
    )
    return {
        "ok": ok,
        "accepted": accepted,
        "rejected": rejects[:20],
        "callbacks_received": len(docs),
        "jobs_with_one_successful_callback": accepted - len(missing) - len(duplicated) - len(failed),
        "missing": missing[:20],
        "missing_count": len(missing),
        "duplicated_count": len(duplicated),
        "failed_count": len(failed),
        "failed": failed[:20],
        "bad_payload_count": len(bad_payload),
        "bad_payload": bad_payload[:5],
        "stray_callbacks": stray,
        "files_ok": files_ok,
        "files_missing_count": len(files_missing),
        "files_wrong_size": files_wrong_size[:20],
    }


def self_children_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def environ_without_downloader() -> dict[str, str]:
    """This process's environment without any DOWNLOADER_* (so only what a run sets counts)."""
    return {k: v for k, v in os.environ.items() if not k.startswith("DOWNLOADER_")}
