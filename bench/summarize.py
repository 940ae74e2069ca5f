#!/usr/bin/env python3
"""One line per result file of bench/e2e.py, then medians per kind of run.

    $REPO/.venv/bin/python $REPO/bench/summarize.py [--quiet-only] /tmp/e2e*.json

Runs are grouped by what was varied (`--checks`, `--rate`, `--concurrency`, extra `--env`).
A run is "quiet" when other processes used at most 0.1 core during it and the CPU calibration
before and after stayed at most 10% above the best seen: on a shared host only those compare.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

#: Variables every run sets; anything else in params.env was varied on purpose.
BASE_ENV = {
    "DOWNLOADER_REDIS_URL",
    "DOWNLOADER_STORAGE_ROOT",
    "DOWNLOADER_TMP_DIR",
    "DOWNLOADER_DOWNLOAD_URL",
    "DOWNLOADER_LOG_LEVEL",
    "DOWNLOADER_WORKER_CONCURRENCY",
    "DOWNLOADER_NOTIFIER_CONCURRENCY",
}

COLUMNS = (
    ("run", 36),
    ("quiet", 5),
    ("calib", 7),
    ("other", 5),
    ("enq/s", 6),
    ("e2e/s", 6),
    ("stdy/s", 6),
    ("1st cb", 6),
    ("p50 ms", 7),
    ("p95 ms", 7),
    ("get>cb", 6),
    ("wrk ms/j", 8),
    ("ntf ms/j", 8),
    ("api ms/j", 8),
    ("wrk RSS", 7),
    ("api RSS", 7),
    ("ntf RSS", 7),
    ("ok", 3),
)
FIRST_NUMERIC = 4


def group_of(r: dict[str, Any]) -> str:
    p = r["params"]
    parts = ["checks on" if p["checks"] else "checks off"]
    if p.get("enqueue_rate_limit"):
        parts.append(f"rate {p['enqueue_rate_limit']:g}/s")
    if isinstance(p.get("worker_concurrency"), int):
        parts.append(f"concurrency {p['worker_concurrency']}")
    if p["jobs"] != 1000:
        parts.append(f"{p['jobs']} jobs")
    for name, value in sorted(p.get("env", {}).items()):
        if name not in BASE_ENV:
            parts.append(f"{name.removeprefix('DOWNLOADER_')}={value}")
    if p.get("profiled"):
        parts.append("profiled")
    return ", ".join(parts)


def row(name: str, r: dict[str, Any], best_calibration: float) -> list[Any]:
    res, host, procs = r["results"], r["host"], r["processes"]
    calib = host.get("calibration_ms_before_after") or []
    other = host.get("busy_cores_of_other_processes")
    quiet = bool(calib) and max(calib) <= best_calibration * 1.1 and other is not None and other <= 0.1
    return [
        name,
        "y" if quiet else "",
        "/".join(str(round(x)) for x in calib),
        other,
        res["enqueue_jobs_per_s"],
        res["e2e_jobs_per_s"],
        res["steady_jobs_per_s"],
        res["first_callback_after_s"],
        res["latency_ms"].get("p50"),
        res["latency_ms"].get("p95"),
        res["phase_get_to_callback_ms"].get("p50"),
        procs["worker"]["cpu_ms_per_job"],
        procs["notifier"]["cpu_ms_per_job"],
        procs["api"]["cpu_ms_per_job"],
        procs["worker"]["peak_rss_mb"],
        procs["api"]["peak_rss_mb"],
        procs["notifier"]["peak_rss_mb"],
        "y" if res["ok"] else "NO",
    ]


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quiet-only", action="store_true", help="medians over quiet runs only")
    ap.add_argument("files", nargs="+")
    args = ap.parse_args(argv)
    docs = [(Path(f), json.loads(Path(f).read_text())) for f in args.files]
    calibrations = [
        min(d["host"]["calibration_ms_before_after"])
        for _, d in docs
        if d["host"].get("calibration_ms_before_after")
    ]
    best = min(calibrations, default=float("inf"))
    groups: dict[str, list[list[Any]]] = {}
    for path, doc in docs:
        groups.setdefault(group_of(doc), []).append(row(path.stem, doc, best))
    print(_line([name for name, _ in COLUMNS]))
    for label, rows in groups.items():
        print(f"-- {label}")
        for values in rows:
            print(_line(values))
        chosen = [r for r in rows if r[1] == "y"] if args.quiet_only else rows
        if not chosen:
            continue
        med: list[Any] = [f"median of {len(chosen)}{' quiet' if args.quiet_only else ''}", "", "", ""]
        for i in range(FIRST_NUMERIC, len(COLUMNS) - 1):
            nums = [r[i] for r in chosen if isinstance(r[i], int | float)]
            med.append(round(statistics.median(nums), 2) if nums else "")
        med.append("")
        print(_line(med))
    return 0


def _line(values: list[Any]) -> str:
    cells = []
    for i, (value, (_, width)) in enumerate(zip(values, COLUMNS, strict=True)):
        text = "" if value is None else str(value)
        cells.append(text.ljust(width) if i == 0 else text.rjust(width))
    return "  ".join(cells)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
