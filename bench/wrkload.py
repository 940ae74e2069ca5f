"""POST /download load with Debian's `wrk` (closed loop: each connection sends its next request
when the previous answer arrived), for the "API alone" figures of `compare.py`.

`run_wrk` writes a small Lua script that POSTs one fixed body and, when done, prints one line
`WRKJSON {...}` with the request count, errors and latency percentiles (microseconds). It
returns that, plus the wall time and the CPU seconds wrk itself used (RUSAGE_CHILDREN), so a
reader can check that the client was not the bottleneck.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

LUA = r"""
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = [==[%BODY%]==]

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests":%d,"duration_us":%d,"bytes":%d,"err_connect":%d,"err_read":%d,' ..
    '"err_write":%d,"err_status":%d,"err_timeout":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,' ..
    '"max_us":%d,"mean_us":%.1f}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status,
    e.timeout, latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency.max, latency.mean))
end
"""


def find_wrk(explicit: str | None = None) -> str | None:
    return explicit or shutil.which("wrk")


def _run(cmd: list[str], timeout: float) -> tuple[str, str, int]:
    """Run `cmd` to its end (killed after `timeout`); its stdout, stderr and exit status."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
    return out.decode(errors="replace"), err.decode(errors="replace"), proc.returncode


def run_wrk(
    *,
    wrk: str,
    url: str,
    body: bytes,
    workdir: Path,
    connections: int = 64,
    threads: int = 1,
    seconds: float = 10,
) -> dict[str, Any]:
    """One wrk run of `seconds` against `url`; the parsed WRKJSON line plus derived figures."""
    import resource

    script = workdir / "post.lua"
    script.write_text(LUA.replace("%BODY%", body.decode()))
    cmd = [
        wrk,
        f"-t{threads}",
        f"-c{connections}",
        f"-d{max(1, round(seconds))}s",
        "--timeout",
        "10s",
        "-s",
        str(script),
        url,
    ]
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.monotonic()
    out, err, status = _run(cmd, seconds + 30)
    wall = time.monotonic() - t0
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (ru1.ru_utime + ru1.ru_stime) - (ru0.ru_utime + ru0.ru_stime)
    doc: dict[str, Any] = {}
    for line in out.splitlines():
        if line.startswith("WRKJSON "):
            doc = json.loads(line[len("WRKJSON ") :])
    if status != 0 or not doc:
        raise RuntimeError(f"wrk failed (status {status}): {err[-2000:]} {out[-2000:]}")
    duration = doc["duration_us"] / 1e6
    errors = sum(doc[k] for k in doc if k.startswith("err_"))
    return {
        "command": " ".join(cmd),
        "requests": doc["requests"],
        "seconds": round(duration, 3),
        "req_per_s": round(doc["requests"] / duration, 1) if duration > 0 else 0,
        "latency_ms": {
            "p50": round(doc["p50_us"] / 1000, 2),
            "p90": round(doc["p90_us"] / 1000, 2),
            "p99": round(doc["p99_us"] / 1000, 2),
            "max": round(doc["max_us"] / 1000, 2),
            "mean": round(doc["mean_us"] / 1000, 2),
        },
        "errors": {k[4:]: doc[k] for k in doc if k.startswith("err_")},
        "error_count": errors,
        "wrk_cpu_s": round(cpu, 3),
        "wrk_cores": round(cpu / wall, 2) if wall > 0 else None,
        "wall_s": round(wall, 3),
    }
