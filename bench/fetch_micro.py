"""Micro-benchmark of the two outbound hot paths: the download GET and the HTTP callback POST.

A raw HTTP/1.1 server with keep-alive runs in a subprocess on 127.0.0.1 (asyncio, uvloop when
installed). It answers every GET with the same 10,218-byte PNG and every POST with `200 OK`.
This process then makes

* N downloads through `Fetcher.fetch`, called as the worker calls it (worker/attempts.py:
  proxy "", no job headers, no job timeout or size cap, sniffing on, no mime pattern, a
  cancellation event, tmp files under a temp dir, each file removed afterwards as the worker
  does once it is stored), from T threads, with the watchdog (`enforce_deadlines`) running
  every 0.5 s as in the worker;
* N callbacks through `HttpBackend.deliver` (a payload of the real shape, ~480 bytes) from T
  threads;
* N times what a download does with its tmp file alone (write, fsync, unlink), from T threads:
  the part of a download's CPU that is the file system's, not HTTP's.

Only this process's CPU is counted (`time.process_time`: user + system, all threads), from
the first request of a round to its last; a warm-up round opens the connections first. It
prints files/s (or callbacks/s) and CPU ms per file for each round and their medians.

    .venv/bin/python bench/fetch_micro.py [-n 3000] [-t 16] [--rounds 3] [--tmp DIR] [--json out.json]

`--tmp /dev/shm` takes the disk's fsync out of the figures (the machine's disk is noisy).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

FILE_BYTES = 10_218


# --- the server (subprocess) -----------------------------------------------------------------


def png_of_size(size: int) -> bytes:
    """A valid-looking PNG (signature, IHDR of 58x58 RGB, one IDAT, IEND) of exactly `size` bytes."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    head = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 58, 58, 8, 2, 0, 0, 0))
    tail = chunk(b"IEND", b"")
    filler = size - len(head) - len(tail) - 12
    return head + chunk(b"IDAT", random.Random(7).randbytes(filler)) + tail


def serve() -> None:
    body = png_of_size(FILE_BYTES)
    get_answer = (
        b"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nContent-Length: %d\r\n\r\n" % len(body)
    ) + body
    post_answer = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"

    class Conn(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport: asyncio.Transport = transport  # type: ignore[assignment]
            self.buf = b""

        def data_received(self, data: bytes) -> None:
            self.buf += data
            while True:
                end = self.buf.find(b"\r\n\r\n")
                if end < 0:
                    return
                head = self.buf[:end]
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value.strip())
                if len(self.buf) < end + 4 + length:
                    return
                self.buf = self.buf[end + 4 + length :]
                self.transport.write(post_answer if head.startswith(b"POST") else get_answer)

    def orphaned() -> None:  # the parent holds our stdin open: when it goes, so do we
        sys.stdin.buffer.read()
        os._exit(0)

    threading.Thread(target=orphaned, daemon=True).start()

    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(Conn, "127.0.0.1", 0, backlog=1024)
        port = server.sockets[0].getsockname()[1]
        print(port, flush=True)
        await server.serve_forever()

    try:
        import uvloop

        uvloop.run(main())
    except ImportError:
        asyncio.run(main())


# --- the client ------------------------------------------------------------------------------


def measure(calls: int, threads: int, one: Callable[[int], None]) -> tuple[float, float]:
    """(calls per second, CPU ms per call) of `calls` calls of `one(i)` from `threads` threads."""
    counter = iter(range(calls))
    lock = threading.Lock()
    errors: list[BaseException] = []

    def loop() -> None:
        while True:
            with lock:
                i = next(counter, None)
            if i is None:
                return
            try:
                one(i)
            except BaseException as exc:  # reported below
                errors.append(exc)
                return

    cpu0, wall0 = time.process_time(), time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        for future in [pool.submit(loop) for _ in range(threads)]:
            future.result()
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    if errors:
        raise RuntimeError(f"{len(errors)} calls failed, first: {errors[0]!r}") from errors[0]
    return calls / wall, cpu * 1000 / calls


def run(args: argparse.Namespace) -> dict[str, object]:
    from downloader.config.settings import Settings
    from downloader.delivery.notifying import HttpBackend, Message, encode, payload
    from downloader.fetching.download import Fetcher, FetchLimits
    from downloader.fetching.outbound import PERMISSIVE, Outbound
    from downloader.jobs.models import Job, State

    settings = Settings()
    server = subprocess.Popen(
        [sys.executable, __file__, "--serve"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert server.stdout is not None
        port = int(server.stdout.readline())
        base = f"http://127.0.0.1:{port}"
        fetcher = Fetcher(
            FetchLimits(
                connect_timeout=settings.connect_timeout_seconds,
                total_timeout=settings.download_timeout_seconds,
                max_redirects=settings.max_redirects,
                max_bytes=settings.max_download_bytes,
            ),
            settings.default_request_headers,
            pool_size=args.threads,
            outbound=Outbound(PERMISSIVE),
        )
        stop = threading.Event()

        def watchdog() -> None:  # as the worker's loop does
            while not stop.wait(0.5):
                fetcher.enforce_deadlines()

        threading.Thread(target=watchdog, daemon=True).start()
        tmp = Path(tempfile.mkdtemp(prefix="fetch-micro-", dir=args.tmp))
        cancelled = threading.Event()

        def download(i: int) -> None:
            fetched = fetcher.fetch(job_id=f"Job{i:011d}", url=f"{base}/f/{i}.png", proxy="", job_headers=None,
                                    timeout=0.0, max_bytes=0, tmp_dir=tmp, sniff=True, mime_pattern=None,
                                    cancelled=cancelled)  # fmt: skip
            assert fetched.size == FILE_BYTES and fetched.mime_type == "image/png", fetched
            fetched.path.unlink()

        backend = HttpBackend(settings.callback_timeout_seconds, args.threads, PERMISSIVE)
        job = Job(id="AbCdEfGhIjKlMn", url=f"{base}/f/1.png", aggr_id="bench", callback_url=f"{base}/cb",
                  extra="some client data", download_state=State.SUCCESS, response_code=200,
                  download_count=1)  # fmt: skip
        body = encode(payload(job))
        headers = {"X-Downloader-Delivery": "AbCdEfGhIjKlMn.1"}

        def callback(i: int) -> None:
            backend.deliver(Message("AbCdEfGhIjKlMn", f"{base}/cb", body, headers))

        data = png_of_size(FILE_BYTES)

        def file_only(i: int) -> None:  # what a download costs without any HTTP: the floor
            path = tmp / f"Job{i:011d}.tmp"
            with path.open("wb") as out:
                out.write(data)
                out.flush()
                os.fsync(out.fileno())
            path.unlink()

        results: dict[str, object] = {"n": args.n, "threads": args.threads, "file_bytes": FILE_BYTES,
                                      "callback_bytes": len(body)}  # fmt: skip
        for name, one in (("downloads", download), ("callbacks", callback), ("tmp files", file_only)):
            measure(min(args.n, 300), args.threads, one)  # warm-up: connections, caches
            rounds = [measure(args.n, args.threads, one) for _ in range(args.rounds)]
            rates, cpus = [r for r, _ in rounds], [c for _, c in rounds]
            results[name] = {"per_s": rates, "cpu_ms": cpus, "median_per_s": statistics.median(rates),
                             "median_cpu_ms": statistics.median(cpus)}  # fmt: skip
            for rate, cpu in rounds:
                print(f"{name:9}  {rate:8.0f}/s  {cpu:6.3f} ms CPU each", flush=True)
            print(f"{name:9}  median {statistics.median(rates):8.0f}/s  {statistics.median(cpus):6.3f} ms CPU each",
                  flush=True)  # fmt: skip
        stop.set()
        fetcher.close()
        backend.close()
        os.rmdir(tmp)
        return results
    finally:
        server.terminate()
        server.wait(10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("-n", type=int, default=3000, help="requests per round (default 3000)")
    parser.add_argument("-t", "--threads", type=int, default=16, help="client threads (default 16)")
    parser.add_argument("--rounds", type=int, default=3, help="measured rounds per path (default 3)")
    parser.add_argument("--tmp", default=None, help="where the tmp files go (default: the system's)")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    if args.serve:
        serve()
        return
    results = run(args)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
