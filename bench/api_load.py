#!/usr/bin/env python3
"""Load test of the API alone: POST /download under wrk, with the API process' CPU per request.

It starts, on 127.0.0.1 and under a temporary directory:

* a private `redis-server` (from PATH; `--save '' --appendonly no`);
* the product's `downloader api --host 127.0.0.1 --port P` (no worker, no notifier: jobs
  simply pile up in Redis, which is what the API's cost does not depend on).

Then, for each of `--runs` rounds, it warms up with `--warmup` seconds of the same load and
runs `wrk -t<threads> -c<connections> -d<duration>s --latency` with a Lua script that POSTs a
fixed valid job body (`url` http://127.0.0.1:1/x.png, `aggr_limit` 4, `callback_url`
http://127.0.0.1:1/cb), its `aggr_id` cycling over `--aggregations` values. It reports req/s,
p50/p90/p99/max latency, non-2xx answers and socket errors (from wrk), and the CPU seconds
(utime+stime from /proc) of the API process and of Redis per request, measured over the wrk
run only. Nothing is ever fetched: the jobs are only queued.

Needs `wrk` (Debian: `apt-get install wrk`) and `redis-server` on PATH. Run it from a directory
other than the repository root (its `downloader/` folder would hide the installed
`downloader.api`, `.worker` and `.operator`):

    cd /tmp && $REPO/.venv/bin/python $REPO/bench/api_load.py --json /tmp/api.json

`--profile DIR` also records the API with py-spy (`--py-spy PATH`, default: on PATH or
/tmp/pyspy/bin/py-spy) during each measured run, in speedscope and raw (collapsed) formats.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from hostinfo import (
    CLK_TCK,
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

# wrk's Lua: the requests are formatted once per thread, `done` prints one JSON line.
LUA = r"""
local bodies = {BODIES}
local reqs = {}
local n = 0
init = function(args)
  for i, body in ipairs(bodies) do
    reqs[i] = wrk.format("POST", "/download", {["Content-Type"] = "application/json"}, body)
  end
end
request = function()
  n = n + 1
  return reqs[(n % #reqs) + 1]
end
done = function(summary, latency, requests)
  io.write(string.format(
    'WRKJSON {"requests": %d, "duration_us": %d, "bytes": %d, "connect": %d, "read": %d, ' ..
    '"write": %d, "timeout": %d, "status": %d, "p50_us": %d, "p90_us": %d, "p99_us": %d, ' ..
    '"max_us": %d, "mean_us": %f}\n',
    summary.requests, summary.duration, summary.bytes, summary.errors.connect,
    summary.errors.read, summary.errors.write, summary.errors.timeout, summary.errors.status,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max,
    latency.mean))
end
"""


class SetupError(Exception):
    pass


def user_system_seconds(pid: int) -> tuple[float, float]:
    """(utime, stime) of `pid` from /proc/<pid>/stat; (0, 0) once it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0, 0.0
    fields = text[text.rindex(")") + 2 :].split()
    return int(fields[11]) / CLK_TCK, int(fields[12]) / CLK_TCK


def lua_script(aggregations: int, tag: str) -> str:
    bodies = []
    for k in range(aggregations):
        body = json.dumps(
            {
                "url": "http://127.0.0.1:1/x.png",
                "aggr_id": f"{tag}-a{k}",
                "aggr_limit": 4,
                "callback_url": "http://127.0.0.1:1/cb",
            },
            separators=(",", ":"),
        )
        bodies.append(json.dumps(body))  # a JSON string is a valid Lua string literal here
    return LUA.replace("{BODIES}", "{" + ", ".join(bodies) + "}")


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.tmp = Path(tempfile.mkdtemp(prefix="downloader-apiload-"))
        self.popen: dict[str, subprocess.Popen[bytes]] = {}

    def spawn(self, name: str, cmd: list[str], env: dict[str, str] | None = None) -> None:
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

    def tail(self, name: str, size: int = 3000) -> str:
        try:
            return (self.tmp / f"{name}.log").read_text(errors="replace")[-size:]
        except OSError:
            return "(no log)"

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise SetupError("redis-server is not on PATH")
        if shutil.which("wrk") is None:
            raise SetupError("wrk is not on PATH (Debian: apt-get install wrk)")
        self.redis_port = free_port()
        self.spawn("redis", [binary, "--port", str(self.redis_port), "--bind", "127.0.0.1",
                             "--save", "", "--appendonly", "no", "--dir", str(self.tmp)])  # fmt: skip
        import redis

        self.redis = redis.Redis(port=self.redis_port, socket_connect_timeout=1)
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
        env = dict(os.environ)
        env.update(
            DOWNLOADER_REDIS_URL=f"redis://127.0.0.1:{self.redis_port}/0",
            DOWNLOADER_STORAGE_ROOT=str(self.tmp / "files"),
            DOWNLOADER_TMP_DIR=str(self.tmp / "tmp"),
            DOWNLOADER_LOG_LEVEL="WARNING",
            DOWNLOADER_ALLOW_PRIVATE_NETWORKS="true",
            NO_PROXY="127.0.0.1",
            no_proxy="127.0.0.1",
        )
        for extra in self.args.env:
            name, _, value = extra.partition("=")
            env[name] = value
        self.env = {k: v for k, v in env.items() if k.startswith("DOWNLOADER_")}
        self.api_port = free_port()
        exe = str(VENV_BIN / "downloader")
        self.spawn("api", [exe, "api", "--host", "127.0.0.1", "--port", str(self.api_port)], env)
        deadline = time.monotonic() + self.args.startup_timeout
        while time.monotonic() < deadline:
            if self.popen["api"].poll() is not None:
                raise SetupError(f"the API exited ({self.popen['api'].returncode}): {self.tail('api')}")
            with contextlib.suppress(OSError, http.client.HTTPException):
                conn = http.client.HTTPConnection("127.0.0.1", self.api_port, timeout=2)
                conn.request("GET", "/hb")
                ok = conn.getresponse().status == 200
                conn.close()
                if ok:
                    return
            time.sleep(0.05)
        raise SetupError("the API did not answer /hb: " + self.tail("api"))

    def check_post(self, script: Path) -> None:
        """One POST by hand: the body must be accepted, or every figure is about errors."""
        body = json.dumps({"url": "http://127.0.0.1:1/x.png", "aggr_id": "check", "aggr_limit": 4,
                           "callback_url": "http://127.0.0.1:1/cb"})  # fmt: skip
        conn = http.client.HTTPConnection("127.0.0.1", self.api_port, timeout=5)
        conn.request("POST", "/download", body, {"Content-Type": "application/json"})
        answer = conn.getresponse()
        text = answer.read()
        conn.close()
        if answer.status != 201:
            raise SetupError(f"POST /download answered {answer.status}: {text!r}")

    def wrk(self, script: Path, seconds: float) -> dict[str, Any]:
        a = self.args
        cmd = ["wrk", f"-t{a.threads}", f"-c{a.connections}", f"-d{seconds:g}s", "--latency",
               "--timeout", "5s", "-s", str(script), f"http://127.0.0.1:{self.api_port}"]  # fmt: skip
        out = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=seconds + 60)
        if out.returncode != 0:
            raise SetupError(f"wrk failed ({out.returncode}): {out.stderr or out.stdout}")
        for line in out.stdout.splitlines():
            if line.startswith("WRKJSON "):
                parsed: dict[str, Any] = json.loads(line[len("WRKJSON ") :])
                parsed["text"] = out.stdout
                return parsed
        raise SetupError("no summary from wrk: " + out.stdout)

    def server_histogram(self) -> dict[float, float]:
        """The API's own request-duration histogram of POST /download (cumulative counts by
        upper bound), from its /metrics."""
        conn = http.client.HTTPConnection("127.0.0.1", self.api_port, timeout=10)
        conn.request("GET", "/metrics")
        text = conn.getresponse().read().decode()
        conn.close()
        out: dict[float, float] = {}
        prefix = 'downloader_http_request_duration_seconds_bucket{le="'
        for line in text.splitlines():
            if line.startswith(prefix) and 'route="/download"' in line:
                bound = line[len(prefix) :].split('"', 1)[0]
                out[float(bound)] = float(line.rsplit(" ", 1)[1])
        return out

    def profiler(self, run: int) -> subprocess.Popen[bytes] | None:
        if not self.args.profile:
            return None
        spy = self.args.py_spy or shutil.which("py-spy") or "/tmp/pyspy/bin/py-spy"
        out = Path(self.args.profile)
        out.mkdir(parents=True, exist_ok=True)
        fmt = self.args.profile_format
        ext = {"speedscope": "json", "raw": "txt", "flamegraph": "svg"}[fmt]
        return subprocess.Popen(
            [spy, "record", "--nonblocking", "-r", "250", "-f", fmt, "-o", str(out / f"api-run{run}.{ext}"),
             "-p", str(self.popen["api"].pid), "-d", str(int(self.args.duration) + 1)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip

    def run(self) -> dict[str, Any]:
        a = self.args
        self.start()
        script = self.tmp / "post.lua"
        script.write_text(lua_script(a.aggregations, f"load{os.getpid()}"))
        self.check_post(script)
        api_pid, redis_pid = self.popen["api"].pid, self.popen["redis"].pid
        runs: list[dict[str, Any]] = []
        for i in range(a.runs):
            if a.warmup > 0:
                self.wrk(script, a.warmup)
            spy = self.profiler(i)
            cpu0 = (proc_cpu_seconds(api_pid) or 0.0, proc_cpu_seconds(redis_pid) or 0.0, host_busy_seconds())
            us0 = user_system_seconds(api_pid)
            hist0 = self.server_histogram()
            got = self.wrk(script, a.duration)
            hist1 = self.server_histogram()
            us1 = user_system_seconds(api_pid)
            cpu1 = (proc_cpu_seconds(api_pid) or 0.0, proc_cpu_seconds(redis_pid) or 0.0, host_busy_seconds())
            if spy is not None:
                spy.wait(timeout=60)
            n = max(got["requests"], 1)
            seconds = got["duration_us"] / 1e6
            row = {
                "req_s": round(got["requests"] / seconds, 1),
                "requests": got["requests"],
                "p50_ms": round(got["p50_us"] / 1000, 2),
                "p90_ms": round(got["p90_us"] / 1000, 2),
                "p99_ms": round(got["p99_us"] / 1000, 2),
                "max_ms": round(got["max_us"] / 1000, 2),
                "non_2xx": got["status"],
                "socket_errors": got["connect"] + got["read"] + got["write"] + got["timeout"],
                "api_cpu_s": round(cpu1[0] - cpu0[0], 2),
                "api_cpu_ms_per_req": round((cpu1[0] - cpu0[0]) * 1000 / n, 4),
                "api_user_ms_per_req": round((us1[0] - us0[0]) * 1000 / n, 4),
                "api_system_ms_per_req": round((us1[1] - us0[1]) * 1000 / n, 4),
                "redis_cpu_ms_per_req": round((cpu1[1] - cpu0[1]) * 1000 / n, 4),
                "host_busy_cores": round((cpu1[2] - cpu0[2]) / seconds, 2),
            }
            served = {b: hist1.get(b, 0.0) - hist0.get(b, 0.0) for b in sorted(hist1)}
            total = served.get(float("inf"), 0.0) or 1.0
            # the share of requests the API itself answered within each bound (from its ASGI call)
            row["server_within_ms"] = {f"{b * 1000:g}": round(c / total, 4) for b, c in served.items()
                                       if b != float("inf")}  # fmt: skip
            runs.append(row)
            print(f"  run {i + 1}: {row['req_s']:.0f} req/s, p50 {row['p50_ms']} ms, p99 {row['p99_ms']} ms, "
                  f"non-2xx {row['non_2xx']}, errors {row['socket_errors']}, "
                  f"api {row['api_cpu_ms_per_req']:.3f} ms CPU/req (user {row['api_user_ms_per_req']:.3f}, "
                  f"sys {row['api_system_ms_per_req']:.3f}), redis {row['redis_cpu_ms_per_req']:.3f}, "
                  f"host busy {row['host_busy_cores']} cores")  # fmt: skip
            if a.verbose:
                print(got["text"])
                print("  server-side, share answered within (ms):", row["server_within_ms"])
        median = {k: statistics.median(r[k] for r in runs) for k in runs[0] if k != "server_within_ms"}
        return {
            "bench": "api_load",
            "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "host": {"cpu": cpu_model(), "cores": os.cpu_count(), "calibrate_ms": calibrate()},
            "redis_version": self.redis_version,
            "config": {
                "threads": a.threads,
                "connections": a.connections,
                "duration_s": a.duration,
                "warmup_s": a.warmup,
                "runs": a.runs,
                "aggregations": a.aggregations,
                "env": self.env,
            },
            "api_rss_kb": proc_status(api_pid).get("VmHWM"),
            "runs": runs,
            "median": median,
        }

    def cleanup(self) -> None:
        for proc in self.popen.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in self.popen.values():
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
        if not self.args.keep:
            shutil.rmtree(self.tmp, ignore_errors=True)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=2, help="wrk threads (2)")
    p.add_argument("--connections", type=int, default=64, help="wrk connections (64)")
    p.add_argument("--duration", type=float, default=10.0, help="seconds per measured run (10)")
    p.add_argument("--warmup", type=float, default=2.0, help="seconds of load before each run (2)")
    p.add_argument("--runs", type=int, default=1, help="measured runs; the summary is their median (1)")
    p.add_argument("--aggregations", type=int, default=10, help="aggr_id values the bodies cycle over (10)")
    p.add_argument("--env", action="append", default=[], metavar="NAME=VALUE", help="extra API setting")
    p.add_argument("--startup-timeout", type=float, default=30.0)
    p.add_argument("--profile", metavar="DIR", help="record the API with py-spy during each run")
    p.add_argument("--profile-format", default="speedscope", choices=["speedscope", "raw", "flamegraph"])
    p.add_argument("--py-spy", metavar="PATH", help="py-spy executable")
    p.add_argument("--json", metavar="FILE", help="write the result here")
    p.add_argument("--keep", action="store_true", help="keep the temp dir (logs)")
    p.add_argument("-v", "--verbose", action="store_true", help="print wrk's own report")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    interrupt_on_signals()
    bench = Bench(args)
    result: dict[str, Any] = {}
    try:
        result = bench.run()
    except KeyboardInterrupt:
        print("\ninterrupted; cleaning up", file=sys.stderr)
        return 130
    except SetupError as exc:
        print(f"setup failed: {exc}", file=sys.stderr)
        return 2
    finally:
        text = bench.tail("api", 2000).strip()
        if text and text != "(no log)":
            print(f"--- api log (tail) ---\n{text}", file=sys.stderr)
        bench.cleanup()
    m = result["median"]
    print(f"median of {len(result['runs'])}: {m['req_s']:.0f} req/s, p50 {m['p50_ms']} ms, p99 {m['p99_ms']} ms,"
          f" non-2xx {m['non_2xx']:.0f}, api {m['api_cpu_ms_per_req']:.3f} ms CPU/req")  # fmt: skip
    write_result(args.json, result)
    return 0 if m["non_2xx"] == 0 and m["socket_errors"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
