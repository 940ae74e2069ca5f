#!/usr/bin/env python3
"""End-to-end benchmark of Downloader: jobs per second from POST /download to the callback.

It starts everything itself, on 127.0.0.1 and under a temporary directory:

* a private `redis-server` (from PATH; `--save '' --appendonly no`);
* a file server (asyncio, raw HTTP/1.1 with keep-alive, in its own process) serving N
  distinct small PNG files at `/f/<i>.png`;
* a callback receiver (same kind of server, its own process) that records every POST body
  and its arrival time and answers 200;
* the product: `downloader api`, ONE `downloader worker`, one `downloader notifier`.

Then it POSTs `--jobs` jobs from `--clients` keep-alive client threads, spread over
`--aggregations` aggregations, waits for every callback and reports: enqueue rate, end-to-end
time and jobs/s (first POST sent -> last callback received), per-job latency percentiles
(with a breakdown: API, queue wait until the file server sees the GET, GET -> callback), and
peak RSS and CPU seconds of every process. It checks that each job got exactly one
successful callback and that every stored file exists with the right size; any miss makes
the exit status 1.

Run it with the project's venv from a directory other than the repository root (the repo's
`downloader/` folder would hide the installed `downloader.api`, `.worker` and `.operator`):

    cd /tmp && $REPO/.venv/bin/python $REPO/bench/e2e.py --json /tmp/e2e.json
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import math
import os
import platform
import queue
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from harness import (
    MP,
    SetupError,
    callback_server_main,
    file_server_main,
    png_file,
    steady_rate,
    summary_ms,
)
from hostinfo import (
    VENV_BIN,
    calibrate,
    cpu_model,
    free_port,
    host_busy_seconds,
    interrupt_on_signals,
    proc_cpu_seconds,
    proc_status,
    self_cpu,
    set_pdeathsig,
    write_result,
)

# --- the benchmark ------------------------------------------------------------------------------


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.tmp = Path(tempfile.mkdtemp(prefix="downloader-bench-"))
        self.popen: dict[str, subprocess.Popen[bytes]] = {}
        self.children: dict[str, Any] = {}
        self.stop_children = MP.Event()
        self.arrivals: Any = MP.Queue()
        self.file_report: Any = MP.Queue()
        self.callbacks: list[tuple[float, str, dict[str, Any]]] = []
        self.cb_lock = threading.Lock()
        self.collector_stop = threading.Event()
        self.timeline: list[dict[str, Any]] = []
        self.sampler_stop = threading.Event()
        self.redis: Any = None
        self.run_tag = f"b{os.getpid()}"

    # --- setup ---

    def start_redis(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise SetupError("redis-server is not on PATH")
        self.redis_port = free_port()
        log = (self.tmp / "redis.log").open("wb")
        self.popen["redis"] = subprocess.Popen(
            [
                binary,
                "--port",
                str(self.redis_port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.tmp),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=set_pdeathsig,
        )
        log.close()
        import redis

        self.redis = redis.Redis(port=self.redis_port, decode_responses=True, socket_connect_timeout=1)
        deadline = time.monotonic() + 20
        while True:
            try:
                self.redis.ping()
                break
            except redis.RedisError:
                if time.monotonic() > deadline or self.popen["redis"].poll() is not None:
                    raise SetupError("redis-server did not start: " + self.tail("redis")) from None
                time.sleep(0.05)
        self.redis_version = self.redis.info("server").get("redis_version", "?")

    def start_helpers(self, files: list[bytes]) -> None:
        ports: Any = MP.Queue()
        self.children["fileserver"] = MP.Process(
            target=file_server_main,
            args=(files, ports, self.stop_children, self.file_report),
            name="bench-fileserver",
            daemon=True,
        )
        self.children["fileserver"].start()
        self.file_port = ports.get(timeout=20)
        self.children["callbacks"] = MP.Process(
            target=callback_server_main,
            args=(ports, self.stop_children, self.arrivals),
            name="bench-callbacks",
            daemon=True,
        )
        self.children["callbacks"].start()
        self.callback_port = ports.get(timeout=20)

    def start_product(self) -> None:
        env = dict(os.environ)
        env.update(
            DOWNLOADER_REDIS_URL=f"redis://127.0.0.1:{self.redis_port}/0",
            DOWNLOADER_STORAGE_ROOT=str(self.tmp / "files"),
            DOWNLOADER_TMP_DIR=str(self.tmp / "tmp"),
            DOWNLOADER_DOWNLOAD_URL="http://localhost/files",
            DOWNLOADER_LOG_LEVEL="WARNING",
            # the file server and the receiver are on 127.0.0.1, which the service refuses by default
            DOWNLOADER_ALLOW_PRIVATE_NETWORKS="true",
            NO_PROXY="127.0.0.1",
            no_proxy="127.0.0.1",
        )
        if self.args.concurrency:
            env["DOWNLOADER_WORKER_CONCURRENCY"] = str(self.args.concurrency)
        if self.args.notifier_concurrency:
            env["DOWNLOADER_NOTIFIER_CONCURRENCY"] = str(self.args.notifier_concurrency)
        for extra in self.args.env:
            name, _, value = extra.partition("=")
            env[name] = value
        self.env = {k: v for k, v in env.items() if k.startswith("DOWNLOADER_")}
        self.api_port = free_port()
        exe = str(VENV_BIN / "downloader")
        commands = {
            "api": [exe, "api", "--host", "127.0.0.1", "--port", str(self.api_port)],
            "worker": [exe, "worker"],
            "notifier": [exe, "notifier"],
        }
        for name, cmd in commands.items():
            log = (self.tmp / f"{name}.log").open("wb")
            self.popen[name] = subprocess.Popen(
                cmd,
                env=env,
                cwd=self.tmp,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                preexec_fn=set_pdeathsig,
            )
            log.close()

    def wait_ready(self) -> float:
        t0 = time.monotonic()
        deadline = t0 + self.args.startup_timeout
        hb = False
        while time.monotonic() < deadline:
            self.check_alive()
            if not hb:
                with contextlib.suppress(OSError, http.client.HTTPException):
                    conn = http.client.HTTPConnection("127.0.0.1", self.api_port, timeout=2)
                    conn.request("GET", "/hb")
                    hb = conn.getresponse().status == 200
                    conn.close()
            if hb and self.redis.exists("stats:processor", "stats:notifier") == 2:
                return time.monotonic() - t0
            time.sleep(0.05)
        raise SetupError(f"not ready after {self.args.startup_timeout} s (api /hb ok: {hb})")

    def check_alive(self) -> None:
        for name, proc in self.popen.items():
            if proc.poll() is not None:
                raise SetupError(f"{name} exited with status {proc.returncode}: {self.tail(name)}")
        for name, child in self.children.items():
            if not child.is_alive():
                raise SetupError(f"the benchmark's {name} process died")

    def tail(self, name: str, size: int = 3000) -> str:
        try:
            return (self.tmp / f"{name}.log").read_text(errors="replace")[-size:]
        except OSError:
            return "(no log)"

    # --- measurement threads ---

    def collect(self) -> None:
        while not self.collector_stop.is_set():
            try:
                item = self.arrivals.get(timeout=0.1)
            except queue.Empty:
                continue
            with self.cb_lock:
                self.callbacks.append(item)

    def drain_arrivals(self) -> None:
        while True:
            try:
                item = self.arrivals.get(timeout=0.2)
            except queue.Empty:
                return
            with self.cb_lock:
                self.callbacks.append(item)

    def pids(self) -> dict[str, int]:
        out = {name: p.pid for name, p in self.popen.items()}
        out.update({name: c.pid for name, c in self.children.items()})
        return out

    def sample(self, t_zero: float) -> None:
        import redis

        aggrs = self.aggregation_ids()
        client = redis.Redis(port=self.redis_port, decode_responses=True)
        pids = self.pids()
        while not self.sampler_stop.wait(self.args.sample_interval):
            row: dict[str, Any] = {"t": round(time.monotonic() - t_zero, 3)}
            for name in ("api", "worker", "notifier", "redis"):
                cpu = proc_cpu_seconds(pids[name])
                row[f"cpu_{name}"] = None if cpu is None else round(cpu, 2)
            row["rss_worker_kb"] = proc_status(pids["worker"]).get("VmRSS")
            with contextlib.suppress(redis.RedisError):
                pipe = client.pipeline(transaction=False)
                for a in aggrs:
                    pipe.zcard(f"jobs:{a}")
                for a in aggrs:
                    pipe.zcard(f"inflight:{a}")
                pipe.zcard("CallbackQueue")
                pipe.zcard("CallbackInflight")
                got = pipe.execute()
                k = len(aggrs)
                row["queued"] = sum(got[:k])
                row["inflight"] = sum(got[k : 2 * k])
                row["callback_queued"] = got[2 * k]
                row["callback_inflight"] = got[2 * k + 1]
            with self.cb_lock:
                row["callbacks"] = len(self.callbacks)
            row["posted"] = self.posted
            self.timeline.append(row)
        client.close()

    # --- the load ---

    def aggregation_ids(self) -> list[str]:
        return [f"{self.run_tag}-a{k}" for k in range(self.args.aggregations)]

    def job_body(self, i: int) -> bytes:
        a = self.args
        doc: dict[str, Any] = {
            "url": f"http://127.0.0.1:{self.file_port}/f/{i}.png",
            "aggr_id": self.aggregation_ids()[i % a.aggregations],
            "aggr_limit": a.aggr_limit,
            "callback_type": "http",
            "callback_dst": f"http://127.0.0.1:{self.callback_port}/cb",
            "extra": str(i),
        }
        if a.checks:
            doc["mime_type"] = "image/png"
            doc["extract_image_size"] = True
        return json.dumps(doc).encode()

    def enqueue(self) -> None:
        n, clients = self.args.jobs, self.args.clients
        self.sent = [0.0] * n
        self.accepted = [0.0] * n
        self.ids: list[str | None] = [None] * n
        self.rejects: list[str] = []
        self.posted = 0
        bodies = [self.job_body(i) for i in range(n)]
        start: list[float] = []
        barrier = threading.Barrier(clients, action=lambda: start.append(time.monotonic()))
        lock = threading.Lock()
        rate = self.args.rate

        def client(c: int) -> None:
            conn = http.client.HTTPConnection("127.0.0.1", self.api_port, timeout=60)
            barrier.wait()
            for i in range(c, n, clients):
                if rate:  # open loop: job i is due at start + i / rate
                    delay = start[0] + i / rate - time.monotonic()
                    if delay > 0:
                        time.sleep(delay)
                resp, data = None, b""
                try:
                    self.sent[i] = time.monotonic()
                    conn.request("POST", "/download", bodies[i], {"Content-Type": "application/json"})
                    resp = conn.getresponse()
                    data = resp.read()
                    self.accepted[i] = time.monotonic()
                except (OSError, http.client.HTTPException) as exc:
                    # Not retried: the job may have been queued, and a second POST would
                    # make a second job. Counted as rejected, which fails the run.
                    conn.close()
                    conn = http.client.HTTPConnection("127.0.0.1", self.api_port, timeout=60)
                    with lock:
                        self.rejects.append(f"job {i}: {type(exc).__name__}: {exc}")
                if resp is not None and resp.status == 201:
                    self.ids[i] = json.loads(data)["id"]
                elif resp is not None:
                    with lock:
                        self.rejects.append(f"job {i}: {resp.status} {data[:200]!r}")
                with lock:
                    self.posted += 1
            conn.close()

        threads = [threading.Thread(target=client, args=(c,), name=f"client-{c}") for c in range(clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    def wait_callbacks(self) -> bool:
        expected = {i for i in self.ids if i is not None}
        deadline = time.monotonic() + self.args.timeout
        last_count, last_progress = -1, time.monotonic()
        while time.monotonic() < deadline:
            with self.cb_lock:
                got = {doc.get("job_id") for _, _, doc in self.callbacks}
                count = len(self.callbacks)
            if expected <= got:
                return True
            if count != last_count:
                last_count, last_progress = count, time.monotonic()
            elif time.monotonic() - last_progress > self.args.stall_timeout:
                print(f"no callback for {self.args.stall_timeout} s; giving up", file=sys.stderr)
                return False
            self.check_alive()
            time.sleep(0.02)
        print(f"timeout after {self.args.timeout} s", file=sys.stderr)
        return False

    # --- run ---

    def run(self) -> dict[str, Any]:
        a = self.args
        side = max(1, round(math.sqrt(max(1, a.size - 70) / 3)))
        files = [png_file(i, side) for i in range(a.jobs)]
        self.start_redis()
        self.start_helpers(files)
        self.start_product()
        startup = self.wait_ready()
        pids = self.pids()
        collector = threading.Thread(target=self.collect, name="collector", daemon=True)
        collector.start()
        self.calibration_before = calibrate()
        load_before = os.getloadavg()
        cpu0 = {name: proc_cpu_seconds(pid) for name, pid in pids.items()}
        self_cpu0 = self_cpu()
        host0 = host_busy_seconds()
        self.posted = 0
        t_zero = time.monotonic()
        sampler = threading.Thread(target=self.sample, args=(t_zero,), name="sampler", daemon=True)
        sampler.start()
        py_spy = self.start_profiler()

        self.enqueue()
        t_enqueued = time.monotonic()
        complete = self.wait_callbacks()
        t_done = time.monotonic()
        cpu1 = {name: proc_cpu_seconds(pid) for name, pid in pids.items()}
        self_cpu1 = self_cpu()
        host1 = host_busy_seconds()
        status = {name: proc_status(pid) for name, pid in pids.items()}
        self.stop_profiler(py_spy)
        time.sleep(a.settle)  # let late duplicates arrive
        self.sampler_stop.set()
        sampler.join()
        self.collector_stop.set()
        collector.join()
        self.drain_arrivals()
        load_after = os.getloadavg()
        self.calibration_after = calibrate()

        verification = self.verify(files, side)
        leftovers = self.redis_leftovers()
        stats = self.product_stats()
        file_report = self.stop_helpers()
        return self.report(
            files=files,
            side=side,
            startup=startup,
            t_zero=t_zero,
            t_enqueued=t_enqueued,
            t_done=t_done,
            complete=complete,
            cpu0=cpu0,
            cpu1=cpu1,
            status=status,
            self_cpu=self_cpu1 - self_cpu0,
            host_busy=host1 - host0,
            verification=verification,
            leftovers=leftovers,
            stats=stats,
            file_report=file_report,
            load=(load_before, load_after),
        )

    def start_profiler(self) -> list[subprocess.Popen[bytes]]:
        if not self.args.py_spy:
            return []
        procs = []
        for name in self.args.profile:
            out = Path(self.args.profile_dir) / f"{name}.txt"
            out.parent.mkdir(parents=True, exist_ok=True)
            procs.append(
                subprocess.Popen(
                    [
                        self.args.py_spy,
                        "record",
                        "-p",
                        str(self.popen[name].pid),
                        "-r",
                        "200",
                        "--threads",
                        "--format",
                        "raw",
                        "-o",
                        str(out),
                        "--nonblocking",
                        *(["--gil"] if self.args.profile_gil else []),
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=(self.tmp / f"py-spy-{name}.log").open("wb"),
                    start_new_session=True,
                )
            )
        time.sleep(1.0)  # py-spy attaches
        return procs

    def stop_profiler(self, procs: list[subprocess.Popen[bytes]]) -> None:
        for p in procs:
            p.send_signal(signal.SIGINT)
        for p in procs:
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()

    def verify(self, files: list[bytes], side: int) -> dict[str, Any]:
        by_id: dict[str, list[dict[str, Any]]] = {}
        stray = 0
        for _, _path, doc in self.callbacks:
            job_id = doc.get("job_id")
            if not isinstance(job_id, str):
                stray += 1
                continue
            by_id.setdefault(job_id, []).append(doc)
        index_of = {job_id: i for i, job_id in enumerate(self.ids) if job_id is not None}
        stray += sum(1 for job_id in by_id if job_id not in index_of)
        missing, duplicated, failed, bad_payload = [], [], [], []
        files_ok, files_missing, files_wrong_size = 0, [], []
        root = self.tmp / "files"
        for i, job_id in enumerate(self.ids):
            if job_id is None:
                continue
            docs = by_id.get(job_id, [])
            if not docs:
                missing.append(job_id)
                continue
            if len(docs) > 1:
                duplicated.append(job_id)
            doc = docs[0]
            if not doc.get("success"):
                failed.append(f"{job_id}: {doc.get('error')}")
            expect_image = f"{side}x{side}" if self.args.checks else ""
            if (
                doc.get("extra") != str(i)
                or doc.get("response_code") != 200
                or not str(doc.get("download_url", "")).endswith(f"{job_id[:3]}/{job_id}")
                or doc.get("image_size") != expect_image
                or doc.get("resource_url") != f"http://127.0.0.1:{self.file_port}/f/{i}.png"
            ):
                bad_payload.append(
                    {
                        k: doc.get(k)
                        for k in ("job_id", "extra", "response_code", "download_url", "image_size", "error")
                    }
                )
            path = root / job_id[:3] / job_id
            try:
                size = path.stat().st_size
            except OSError:
                files_missing.append(job_id)
                continue
            if size == len(files[i]):
                files_ok += 1
            else:
                files_wrong_size.append(f"{job_id}: {size} != {len(files[i])}")
        accepted = sum(1 for x in self.ids if x is not None)
        ok = (
            accepted == self.args.jobs
            and not (missing or duplicated or failed or bad_payload or files_missing or files_wrong_size)
            and stray == 0
        )
        return {
            "ok": ok,
            "accepted": accepted,
            "rejected": self.rejects[:20],
            "callbacks_received": len(self.callbacks),
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

    def redis_leftovers(self) -> dict[str, Any]:
        r = self.redis
        aggrs = self.aggregation_ids()
        return {
            "job_hashes": sum(1 for _ in r.scan_iter("job:*", count=1000)),
            "queued": sum(r.zcard(f"jobs:{a}") for a in aggrs),
            "inflight": sum(r.zcard(f"inflight:{a}") for a in aggrs),
            "callback_queue": r.zcard("CallbackQueue"),
            "callback_inflight": r.zcard("CallbackInflight"),
            "deletion_queue": r.zcard("JobDeletionQueue"),
            "used_memory_mb": round(int(r.info("memory")["used_memory"]) / 2**20, 1),
        }

    def product_stats(self) -> dict[str, Any]:
        """GET /stats/<component> once both were republished after the run (every
        DOWNLOADER_STATS_INTERVAL_SECONDS, 5 s by default), so their counters cover it."""
        want = sum(1 for i in self.ids if i is not None)
        deadline = time.monotonic() + self.args.stats_wait
        while True:
            out = self._read_stats()
            processor, notifier = out.get("processor"), out.get("notifier")
            covered = (
                isinstance(processor, dict)
                and isinstance(notifier, dict)
                and processor.get("spawnedWorkers", 0) >= want
                and notifier.get("successfulCallbacks", 0) + notifier.get("failedCallbacks", 0) >= want
            )
            if covered or time.monotonic() > deadline:
                return out
            time.sleep(0.25)

    def _read_stats(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for component in ("processor", "notifier"):
            with contextlib.suppress(OSError, http.client.HTTPException, ValueError):
                conn = http.client.HTTPConnection("127.0.0.1", self.api_port, timeout=5)
                conn.request("GET", f"/stats/{component}")
                resp = conn.getresponse()
                body = resp.read()
                out[component] = json.loads(body) if resp.status == 200 else f"{resp.status} {body[:200]!r}"
                conn.close()
        return out

    def stop_helpers(self) -> dict[str, Any]:
        self.stop_children.set()
        report: dict[str, Any] = {}
        with contextlib.suppress(queue.Empty):
            report = self.file_report.get(timeout=10)
        for child in self.children.values():
            child.join(5)
        return report

    def report(self, **m: Any) -> dict[str, Any]:
        a = self.args
        n_ok = m["verification"]["accepted"]
        sent = [t for t in self.sent if t]
        t_first = min(sent) if sent else m["t_zero"]
        accepted_times = [t for t, i in zip(self.accepted, self.ids, strict=True) if i is not None]
        t_last_accept = max(accepted_times) if accepted_times else t_first
        first_cb: dict[str, float] = {}
        for t, _, doc in self.callbacks:
            jid = doc.get("job_id")
            if isinstance(jid, str) and jid not in first_cb:
                first_cb[jid] = t
        cb_times = [first_cb[i] for i in self.ids if i is not None and i in first_cb]
        t_last_cb = max(cb_times) if cb_times else m["t_done"]
        e2e = t_last_cb - t_first
        first_get = m["file_report"].get("first_get", {})
        lat, api, wait, rest = [], [], [], []
        for i, jid in enumerate(self.ids):
            if jid is None or jid not in first_cb:
                continue
            lat.append(first_cb[jid] - self.sent[i])
            api.append(self.accepted[i] - self.sent[i])
            if i in first_get:
                wait.append(first_get[i] - self.accepted[i])
                rest.append(first_cb[jid] - first_get[i])
        if self.args.per_job:
            self.write_per_job(first_get, first_cb, t_first)
        run_wall = m["t_done"] - m["t_zero"]
        processes: dict[str, Any] = {}
        for name in m["cpu0"]:
            c0, c1 = m["cpu0"][name], m["cpu1"][name]
            st = m["status"][name]
            cpu_run = None if c0 is None or c1 is None else round(c1 - c0, 2)
            processes[name] = {
                "pid": self.pids()[name],
                "cpu_s_run": cpu_run,
                "cpu_s_total": None if c1 is None else round(c1, 2),
                "cpu_util_run": None if cpu_run is None or e2e <= 0 else round(cpu_run / e2e, 2),
                "cpu_ms_per_job": None if cpu_run is None or not n_ok else round(1000 * cpu_run / n_ok, 2),
                "peak_rss_mb": round(st.get("VmHWM", 0) / 1024, 1),
                "rss_mb": round(st.get("VmRSS", 0) / 1024, 1),
                "threads": st.get("Threads"),
            }
        processes["bench_client"] = {"cpu_s_run": round(m["self_cpu"], 2)}
        ours = m["self_cpu"] + sum(p["cpu_s_run"] or 0 for p in processes.values() if "pid" in p)
        others = max(0.0, m["host_busy"] - ours)
        first_cb_at = min(cb_times) - t_first if cb_times else None
        sizes = [len(f) for f in m["files"]]
        return {
            "benchmark": "downloader e2e (POST /download -> HTTP callback)",
            "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "host": {
                "cpus": os.cpu_count(),
                "cpu_model": cpu_model(),
                "python": platform.python_version(),
                "redis": self.redis_version,
                "calibration_ms_before_after": [self.calibration_before, self.calibration_after],
                "loadavg_before": [round(x, 2) for x in m["load"][0]],
                "loadavg_after": [round(x, 2) for x in m["load"][1]],
                "busy_cores_during_run": round(m["host_busy"] / run_wall, 2) if run_wall > 0 else None,
                "busy_cores_of_other_processes": round(others / run_wall, 2) if run_wall > 0 else None,
            },
            "params": {
                "jobs": a.jobs,
                "aggregations": a.aggregations,
                "aggr_limit": a.aggr_limit,
                "clients": a.clients,
                "enqueue_rate_limit": a.rate or None,
                "checks": a.checks,
                "worker_concurrency": a.concurrency or "default (16)",
                "notifier_concurrency": a.notifier_concurrency or "default (8)",
                "file_bytes_mean": round(statistics.fmean(sizes)),
                "image_side_px": m["side"],
                "profiled": bool(a.py_spy),
                "env": self.env,
            },
            "results": {
                "complete": m["complete"],
                "ok": m["verification"]["ok"] and m["complete"],
                "startup_s": round(m["startup"], 2),
                "enqueue_s": round(t_last_accept - t_first, 3),
                "enqueue_jobs_per_s": round(n_ok / (t_last_accept - t_first), 1) if n_ok else 0,
                "first_callback_after_s": None if first_cb_at is None else round(first_cb_at, 3),
                "e2e_s": round(e2e, 3),
                "e2e_jobs_per_s": round(len(cb_times) / e2e, 1) if e2e > 0 else 0,
                "steady_jobs_per_s": steady_rate(cb_times),
                "cpu_util_while_processing": self.window_util(
                    min(cb_times, default=0), t_last_cb, m["t_zero"]
                ),
                "latency_ms": summary_ms(lat),
                "phase_api_ms": summary_ms(api),
                "phase_queue_wait_ms": summary_ms(wait),
                "phase_get_to_callback_ms": summary_ms(rest),
                "measurement_wall_s": round(run_wall, 3),
            },
            "processes": processes,
            "verification": m["verification"],
            "redis_after": m["leftovers"],
            "file_server": {k: v for k, v in m["file_report"].items() if k != "first_get"},
            "product_stats": m["stats"],
            "timeline": self.timeline,
        }

    def write_per_job(self, first_get: dict[int, float], first_cb: dict[str, float], t0: float) -> None:
        """One CSV line per job: times in seconds since the first POST."""

        def rel(t: float | None) -> str:
            return "" if not t else f"{t - t0:.4f}"

        lines = ["index,job_id,aggregation,post_sent,post_accepted,get_received,callback_received"]
        for i, jid in enumerate(self.ids):
            aggr = self.aggregation_ids()[i % self.args.aggregations]
            lines.append(
                f"{i},{jid or ''},{aggr},{rel(self.sent[i])},{rel(self.accepted[i])},"
                f"{rel(first_get.get(i))},{rel(first_cb.get(jid or ''))}"
            )
        Path(self.args.per_job).write_text("\n".join(lines) + "\n")

    def window_util(self, t_from: float, t_to: float, t_zero: float) -> dict[str, float]:
        """CPU cores used by each product process between the first and the last callback
        (from the timeline), i.e. while jobs were being processed."""
        rows = [r for r in self.timeline if t_from - t_zero <= r["t"] <= t_to - t_zero]
        if len(rows) < 2:
            return {}
        first, last = rows[0], rows[-1]
        dt = last["t"] - first["t"]
        out = {}
        for name in ("api", "worker", "notifier", "redis"):
            a, b = first.get(f"cpu_{name}"), last.get(f"cpu_{name}")
            if a is not None and b is not None and dt > 0:
                out[name] = round((b - a) / dt, 2)
        return out

    # --- teardown ---

    def cleanup(self) -> None:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        self.sampler_stop.set()
        self.collector_stop.set()
        self.stop_children.set()
        product = [n for n in ("api", "worker", "notifier") if n in self.popen]
        for name in product:
            with contextlib.suppress(ProcessLookupError):
                self.popen[name].terminate()
        for name in product:
            try:
                self.popen[name].wait(30)
            except subprocess.TimeoutExpired:
                self.popen[name].kill()
                self.popen[name].wait(5)
        if "redis" in self.popen:
            with contextlib.suppress(ProcessLookupError):
                self.popen["redis"].terminate()
            try:
                self.popen["redis"].wait(10)
            except subprocess.TimeoutExpired:
                self.popen["redis"].kill()
        for child in self.children.values():
            child.join(3)
            if child.is_alive():
                child.kill()
                child.join(3)
        for q in (self.arrivals, self.file_report):
            q.cancel_join_thread()
            q.close()
        if self.redis is not None:
            with contextlib.suppress(Exception):
                self.redis.close()
        if self.args.keep:
            print(f"kept {self.tmp}", file=sys.stderr)
        else:
            shutil.rmtree(self.tmp, ignore_errors=True)


def print_summary(r: dict[str, Any]) -> None:
    res, p, v = r["results"], r["params"], r["verification"]
    print()
    print(
        f"Downloader e2e: {p['jobs']} jobs of ~{p['file_bytes_mean']} B over {p['aggregations']} "
        f"aggregations, {p['clients']} clients, worker concurrency {p['worker_concurrency']}, "
        f"checks={'on' if p['checks'] else 'off'}{' (PROFILED)' if p['profiled'] else ''}"
    )
    print(
        f"  host: {r['host']['cpus']} cpus, load {r['host']['loadavg_before']} -> {r['host']['loadavg_after']}; "
        f"during the run {r['host']['busy_cores_during_run']} cores busy, "
        f"{r['host']['busy_cores_of_other_processes']} of them not ours; "
        f"cpu calibration {r['host']['calibration_ms_before_after']} ms"
    )
    print(
        f"  enqueue:  {res['enqueue_jobs_per_s']:>8} jobs/s  ({res['enqueue_s']} s for {v['accepted']} jobs)"
    )
    print(
        f"  e2e:      {res['e2e_jobs_per_s']:>8} jobs/s  ({res['e2e_s']} s first POST -> last callback; "
        f"first callback after {res['first_callback_after_s']} s; steady {res['steady_jobs_per_s']} jobs/s)"
    )
    for label, key in (
        ("latency", "latency_ms"),
        ("  api", "phase_api_ms"),
        ("  queue", "phase_queue_wait_ms"),
        ("  get->cb", "phase_get_to_callback_ms"),
    ):
        s = res[key]
        if s:
            print(f"  {label:<9} p50 {s['p50']:>8} ms  p95 {s['p95']:>8} ms  max {s['max']:>8} ms")
    busy = res.get("cpu_util_while_processing") or {}
    print("  process     cpu-s(run)  ms/job  cores(e2e)  cores(processing)  peak RSS MB  threads")
    for name, pr in r["processes"].items():
        if name == "bench_client":
            print(f"  {name:<12}{pr['cpu_s_run']:>9}")
            continue
        print(
            f"  {name:<12}{pr['cpu_s_run']:>9}  {pr['cpu_ms_per_job']:>6}  {pr['cpu_util_run']:>10}  "
            f"{busy.get(name, ''):>17}  {pr['peak_rss_mb']:>11}  {pr['threads']!s:>7}"
        )
    print(
        f"  verified: {v['jobs_with_one_successful_callback']}/{v['accepted']} jobs with exactly one "
        f"successful callback; {v['files_ok']} files stored with the right size; "
        f"missing {v['missing_count']}, duplicated {v['duplicated_count']}, failed {v['failed_count']}, "
        f"bad payload {v['bad_payload_count']}, stray {v['stray_callbacks']}"
    )
    if v["failed"]:
        print(f"  first failures: {v['failed'][:3]}")
    if v["rejected"]:
        print(f"  rejected POSTs: {v['rejected'][:3]}")
    print(f"  redis after: {r['redis_after']}")
    if not res["complete"]:
        print("  not every callback arrived within --timeout / --stall-timeout (late ones counted above)")
    print(f"  result: {'OK' if res['ok'] else 'FAILED'}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    ap.add_argument("--jobs", type=int, default=1000, help="jobs to enqueue (default 1000)")
    ap.add_argument("--aggregations", type=int, default=10, help="aggregations the jobs are spread over (10)")
    ap.add_argument("--aggr-limit", type=int, default=100, help="aggr_limit of every job (100)")
    ap.add_argument("--clients", type=int, default=8, help="POSTing client threads (8)")
    ap.add_argument(
        "--concurrency", type=int, default=0, help="DOWNLOADER_WORKER_CONCURRENCY (product default)"
    )
    ap.add_argument(
        "--notifier-concurrency",
        type=int,
        default=0,
        help="DOWNLOADER_NOTIFIER_CONCURRENCY (product default)",
    )
    ap.add_argument(
        "--rate",
        type=float,
        default=0,
        help="enqueue at this many jobs/s (open loop) instead of as fast as the API takes them",
    )
    ap.add_argument("--size", type=int, default=10240, help="approximate bytes per file (10240)")
    ap.add_argument(
        "--checks", action="store_true", help="jobs ask for mime_type image/png and extract_image_size"
    )
    ap.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="extra environment for the product processes (repeatable)",
    )
    ap.add_argument("--json", metavar="PATH", help="write the result as JSON here")
    ap.add_argument("--per-job", metavar="PATH", help="write each job's timings as CSV here")
    ap.add_argument("--timeout", type=float, default=600, help="give up waiting for callbacks after (600 s)")
    ap.add_argument("--stall-timeout", type=float, default=90, help="give up after no callback for (90 s)")
    ap.add_argument("--startup-timeout", type=float, default=60)
    ap.add_argument(
        "--settle", type=float, default=1.0, help="wait for duplicate callbacks after the last (1 s)"
    )
    ap.add_argument(
        "--stats-wait",
        type=float,
        default=7.0,
        help="after the run, wait this long at most for /stats to cover it (7 s)",
    )
    ap.add_argument("--sample-interval", type=float, default=0.25, help="timeline sampling period (0.25 s)")
    ap.add_argument("--py-spy", metavar="EXE", help="profile with this py-spy during the run (skews figures)")
    ap.add_argument(
        "--profile",
        action="append",
        default=[],
        choices=["worker", "notifier", "api"],
        help="process to profile with --py-spy (repeatable; default worker)",
    )
    ap.add_argument(
        "--profile-gil",
        action="store_true",
        help="py-spy samples only the thread holding the GIL (Python CPU, not waits)",
    )
    ap.add_argument("--profile-dir", default="py-spy", help="where py-spy's raw stacks go (./py-spy)")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (logs, files)")
    args = ap.parse_args(argv)
    if args.py_spy and not args.profile:
        args.profile = ["worker"]
    if args.jobs < 1 or args.aggregations < 1 or args.clients < 1:
        ap.error("--jobs, --aggregations and --clients must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    interrupt_on_signals()
    bench = Bench(args)
    try:
        result = bench.run()
    except KeyboardInterrupt:
        print("\ninterrupted; cleaning up", file=sys.stderr)
        return 130
    except SetupError as exc:
        print(f"setup failed: {exc}", file=sys.stderr)
        return 2
    finally:
        print_log_tails(bench)
        bench.cleanup()
    print_summary(result)
    write_result(args.json, result)
    return 0 if result["results"]["ok"] else 1


def print_log_tails(bench: Bench) -> None:
    """The product logs at WARNING: anything in them is worth seeing."""
    for name in ("api", "worker", "notifier"):
        text = bench.tail(name, 2000).strip()
        if text and text != "(no log)":
            print(f"--- {name} log (tail) ---\n{text}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
