#!/usr/bin/env python3
"""Raw limits for `compare.py`: how fast plain clients fetch the same files from the same file
server, and how many round trips Redis alone serves, on this host, in the same session.

* `python rawlimits.py fetch --client requests|urllib3|aiohttp|aiohttp-uvloop --base URL --n N -c C`
  GETs `URL/<i>.png` for i < N with C concurrent requests and prints one JSON line: files,
  errors, bytes, seconds, cpu_s (this process's utime+stime during the fetches only, after the
  imports). `requests`: C threads, each with its own `requests.Session` (defaults); `urllib3`:
  C threads sharing one `PoolManager(maxsize=C)`; `aiohttp`: C tasks sharing one
  `ClientSession` (`TCPConnector(limit=C)`), on asyncio's default loop or on uvloop.
* `bench/rawclient/` (Go, standard library only) does the same with `net/http` (`-mode http`),
  and drives Redis alone over raw RESP (`-mode redis`): C connections each sending one command
  and waiting for its reply, for PING, a 3-write EVALSHA, and 16 pipelined PINGs per round trip.
  `go_client()` builds it into `~/.cache/downloader-bench/rawclient-<source hash>/` (outside the
  repository), once per source version.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "downloader-bench"


def _cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


# --- the Python clients (run in a child process: `fetch`) --------------------------------------


def fetch_threads(get: Any, base: str, n: int, c: int) -> tuple[int, int]:
    nxt = iter(range(n))
    lock = threading.Lock()
    errors = [0]
    nbytes = [0]

    def work() -> None:
        while True:
            with lock:
                i = next(nxt, None)
            if i is None:
                return
            try:
                size = get(f"{base}/{i}.png")
            except Exception:
                with lock:
                    errors[0] += 1
                continue
            with lock:
                if size < 0:
                    errors[0] += 1
                else:
                    nbytes[0] += size

    threads = [threading.Thread(target=work) for _ in range(c)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return errors[0], nbytes[0]


def fetch_requests(base: str, n: int, c: int) -> tuple[int, int]:
    import requests

    local = threading.local()

    def get(url: str) -> int:
        session = getattr(local, "session", None)
        if session is None:
            session = local.session = requests.Session()
        resp = session.get(url, timeout=30)
        return len(resp.content) if resp.status_code == 200 else -1

    return fetch_threads(get, base, n, c)


def fetch_urllib3(base: str, n: int, c: int) -> tuple[int, int]:
    import urllib3

    pool = urllib3.PoolManager(maxsize=c, retries=False, timeout=30)

    def get(url: str) -> int:
        resp = pool.request("GET", url)
        return len(resp.data) if resp.status == 200 else -1

    return fetch_threads(get, base, n, c)


def fetch_aiohttp(base: str, n: int, c: int, uvloop: bool) -> tuple[int, int]:
    import asyncio

    import aiohttp

    async def main() -> tuple[int, int]:
        nxt = iter(range(n))
        errors = nbytes = 0
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=c)) as session:

            async def work() -> None:
                nonlocal errors, nbytes
                for i in nxt:
                    try:
                        async with session.get(f"{base}/{i}.png") as resp:
                            body = await resp.read()
                            if resp.status == 200:
                                nbytes += len(body)
                            else:
                                errors += 1
                    except Exception:
                        errors += 1

            await asyncio.gather(*(work() for _ in range(c)))
        return errors, nbytes

    if uvloop:
        import uvloop as uv

        return uv.run(main())
    return asyncio.run(main())


def fetch_main(args: argparse.Namespace) -> int:
    clients = {
        "requests": lambda: fetch_requests(args.base, args.n, args.c),
        "urllib3": lambda: fetch_urllib3(args.base, args.n, args.c),
        "aiohttp": lambda: fetch_aiohttp(args.base, args.n, args.c, uvloop=False),
        "aiohttp-uvloop": lambda: fetch_aiohttp(args.base, args.n, args.c, uvloop=True),
    }
    # import the client before measuring (its import is not per-file cost)
    __import__({"requests": "requests", "urllib3": "urllib3"}.get(args.client, "aiohttp"))
    cpu0, t0 = _cpu(), time.monotonic()
    errors, nbytes = clients[args.client]()
    seconds, cpu = time.monotonic() - t0, _cpu() - cpu0
    print(json.dumps({"files": args.n, "errors": errors, "bytes": nbytes, "seconds": seconds, "cpu_s": cpu}))
    return 0


# --- used by compare.py ------------------------------------------------------------------------


def _json_line(out: str) -> dict[str, Any]:
    for line in reversed(out.strip().splitlines()):
        if line.startswith("{"):
            return dict(json.loads(line))
    raise ValueError(f"no JSON line in {out[-500:]!r}")


def fetch_result(client: str, doc: dict[str, Any], concurrency: int) -> dict[str, Any]:
    files, seconds, cpu = doc["files"], doc["seconds"], doc["cpu_s"]
    return {
        "client": client,
        "concurrency": concurrency,
        "ok": doc["errors"] == 0,
        "errors": doc["errors"],
        "files": files,
        "bytes": doc["bytes"],
        "seconds": round(seconds, 3),
        "files_per_s": round(files / seconds, 1) if seconds > 0 else None,
        "cpu_ms_per_file": round(1000 * cpu / files, 3) if files else None,
        "cores": round(cpu / seconds, 2) if seconds > 0 else None,
    }


def run_python_fetch(client: str, base: str, n: int, c: int, timeout: float = 300) -> dict[str, Any]:
    cmd = [sys.executable, str(HERE / "rawlimits.py"), "fetch", "--client", client, "--base", base]
    cmd += ["--n", str(n), "-c", str(c)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    if proc.returncode != 0:
        return {"client": client, "ok": False, "error": proc.stderr[-1500:]}
    return fetch_result(client, _json_line(proc.stdout), c)


def go_client(go: str | None = None) -> tuple[Path | None, str]:
    """The built rawclient (cached by the hash of its source), or None and why not."""
    src = HERE / "rawclient"
    go = (
        go
        or shutil.which("go")
        or ("/usr/local/go/bin/go" if Path("/usr/local/go/bin/go").exists() else None)
    )
    digest = hashlib.sha256()
    for name in ("go.mod", "main.go"):
        digest.update((src / name).read_bytes())
    out = CACHE / f"rawclient-{digest.hexdigest()[:16]}" / "rawclient"
    if out.exists():
        return out, "cached"
    if not go:
        return None, "go is not installed"
    out.parent.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, GOTOOLCHAIN="local", GOFLAGS="-mod=mod", CGO_ENABLED="0")
    proc = subprocess.run(
        [go, "build", "-o", str(out), "."], cwd=src, env=env, capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        return None, f"go build failed: {proc.stderr[-1500:]}"
    return out, "built"


def run_go_fetch(binary: Path, base: str, n: int, c: int, timeout: float = 300) -> dict[str, Any]:
    cmd = [str(binary), "-mode", "http", "-base", base, "-n", str(n), "-c", str(c)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    if proc.returncode != 0:
        return {"client": "go-net/http", "ok": False, "error": proc.stderr[-1500:]}
    return fetch_result("go-net/http", _json_line(proc.stdout), c)


def run_redis_alone(
    binary: Path, port: int, redis_cpu: Any, cmd: str, c: int, seconds: float
) -> dict[str, Any]:
    """One `rawclient -mode redis` run; `redis_cpu()` reads redis-server's CPU seconds."""
    args = [str(binary), "-mode", "redis", "-addr", f"127.0.0.1:{port}", "-c", str(c)]
    args += ["-seconds", str(seconds), "-cmd", cmd]
    cpu0 = redis_cpu()
    proc = subprocess.run(args, capture_output=True, text=True, timeout=seconds + 60, check=False)
    cpu1 = redis_cpu()
    if proc.returncode != 0:
        return {"client": f"redis-{cmd}", "ok": False, "error": proc.stderr[-1500:]}
    doc = _json_line(proc.stdout)
    secs = doc["seconds"]
    redis_s = None if cpu0 is None or cpu1 is None else cpu1 - cpu0
    return {
        "client": f"redis-{cmd}",
        "connections": c,
        "ok": doc["errors"] == 0,
        "errors": doc["errors"],
        "ops": doc["ops"],
        "round_trips": doc["round_trips"],
        "seconds": round(secs, 3),
        "ops_per_s": round(doc["ops"] / secs, 1) if secs > 0 else None,
        "round_trips_per_s": round(doc["round_trips"] / secs, 1) if secs > 0 else None,
        "redis_cpu_us_per_op": None
        if redis_s is None or not doc["ops"]
        else round(1e6 * redis_s / doc["ops"], 2),
        "redis_cores": None if redis_s is None or secs <= 0 else round(redis_s / secs, 2),
        "client_cores": round(doc["cpu_s"] / secs, 2) if secs > 0 else None,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)
    f = sub.add_parser("fetch", help="fetch N files with a Python client; print one JSON line")
    f.add_argument("--client", choices=["requests", "urllib3", "aiohttp", "aiohttp-uvloop"], required=True)
    f.add_argument("--base", required=True, help="URL prefix: files are BASE/<i>.png")
    f.add_argument("--n", type=int, default=1000)
    f.add_argument("-c", type=int, default=16)
    args = ap.parse_args(argv)
    return fetch_main(args)


if __name__ == "__main__":
    sys.exit(main())
