"""The pure part of `compare.py`: from raw runs to min / median / max per implementation, the
ratio ours/Go of the medians, and the Markdown tables. No I/O, so the unit tests import it.

A run is a dict `{"impl": "ours"|"go", "scenario": str, "round": int, "ok": bool,
"error": str|None, "metrics": {name: number|None}}`. Only runs with `ok` count in the figures;
failed runs are counted and listed apart, never averaged in.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

IMPLS = ("ours", "go")
NOT_COMPARED = "not compared"


def stats(values: Iterable[float | None]) -> dict[str, float] | None:
    vals = [float(v) for v in values if v is not None]
    if not vals:
        return None
    return {"n": len(vals), "min": min(vals), "median": statistics.median(vals), "max": max(vals)}


def ratio(ours: float | None, go: float | None) -> float | None:
    if ours is None or go is None or go == 0:
        return None
    return ours / go


def summarize(runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """{"figures": {scenario: {metric: {impl: stats}}}, "counts": {scenario: {impl: {"ok", "failed"}}},
    "failed": [{impl, scenario, round, error}]}"""
    figures: dict[str, dict[str, dict[str, Any]]] = {}
    counts: dict[str, dict[str, dict[str, int]]] = {}
    failed: list[dict[str, Any]] = []
    values: dict[tuple[str, str, str], list[float | None]] = {}
    for run in runs:
        impl, scenario = run["impl"], run["scenario"]
        c = counts.setdefault(scenario, {}).setdefault(impl, {"ok": 0, "failed": 0})
        if not run.get("ok"):
            c["failed"] += 1
            failed.append(
                {
                    "impl": impl,
                    "scenario": scenario,
                    "round": run.get("round"),
                    "error": run.get("error") or "verification failed",
                }
            )
            continue
        c["ok"] += 1
        for metric, value in (run.get("metrics") or {}).items():
            if isinstance(value, bool) or (not isinstance(value, (int, float)) and value is not None):
                continue
            values.setdefault((scenario, metric, impl), []).append(value)
    for (scenario, metric, impl), vals in values.items():
        s = stats(vals)
        if s is not None:
            figures.setdefault(scenario, {}).setdefault(metric, {})[impl] = s
    return {"figures": figures, "counts": counts, "failed": failed}


@dataclass(frozen=True)
class Row:
    label: str
    parts: tuple[tuple[str, str], ...]  # (scenario, metric)
    digits: int = 1


ROWS: tuple[Row, ...] = (
    Row("e2e jobs/s, burst (first POST → last callback)", (("burst", "e2e_jobs_per_s"),), 0),
    Row("steady jobs/s in the burst (10th–90th pct callback)", (("burst", "steady_jobs_per_s"),), 0),
    Row("first callback after a burst (s)", (("burst", "first_callback_s"),), 2),
    Row("API enqueue rate during the burst (jobs/s)", (("burst", "enqueue_jobs_per_s"),), 0),
    Row("latency p50 / p99 at 20 jobs/s (ms)", (("paced", "latency_p50_ms"), ("paced", "latency_p99_ms")), 0),
    Row("CPU ms per job, api + worker + notifier + Redis", (("burst", "cpu_ms_per_job_total"),), 2),
    Row(
        "CPU ms per job: api / worker / notifier / Redis",
        (
            ("burst", "cpu_ms_per_job_api"),
            ("burst", "cpu_ms_per_job_worker"),
            ("burst", "cpu_ms_per_job_notifier"),
            ("burst", "cpu_ms_per_job_redis"),
        ),
        2,
    ),
    Row(
        "with mime_type + extract_image_size, worker CPU ms per job",
        (("checks", "cpu_ms_per_job_worker"),),
        2,
    ),
    Row("with mime_type + extract_image_size, e2e jobs/s", (("checks", "e2e_jobs_per_s"),), 0),
    Row("steady drain, one worker process (jobs/s)", (("drain-1", "steady_callbacks_per_s"),), 0),
    Row("steady drain, one worker process (downloads/s)", (("drain-1", "steady_downloads_per_s"),), 0),
    Row(
        "worker CPU ms per job while draining, one process", (("drain-1", "worker_cpu_ms_per_job_steady"),), 2
    ),
    Row(
        "worker per job while draining (--perf): system calls / futex / context switches / fsyncs",
        (
            ("drain-1", "worker_syscalls_per_job"),
            ("drain-1", "worker_futex_per_job"),
            ("drain-1", "worker_context_switches_per_job"),
            ("drain-1", "worker_fsyncs_per_job"),
        ),
        1,
    ),
    Row(
        "drain with 1 / 2 / 4 worker processes (ours, jobs/s)",
        (
            ("drain-1", "steady_callbacks_per_s"),
            ("drain-2", "steady_callbacks_per_s"),
            ("drain-4", "steady_callbacks_per_s"),
        ),
        0,
    ),
    Row("API alone, one process, 64 connections (req/s)", (("api", "req_per_s"),), 0),
    Row("API p50 / p99 at 64 connections (ms)", (("api", "latency_p50_ms"), ("api", "latency_p99_ms")), 1),
    Row(
        "API alone: CPU ms per request, api / Redis",
        (("api", "api_cpu_ms_per_req"), ("api", "redis_cpu_ms_per_req")),
        3,
    ),
    Row(
        "Redis commands per job (all / round trips)",
        (("burst", "redis_cmds_per_job_all"), ("burst", "redis_round_trips_per_job")),
        1,
    ),
    Row("Redis scripts (EVAL/EVALSHA) per job", (("burst", "redis_scripts_per_job"),), 1),
    Row(
        "Redis commands per job, MONITOR: sent by clients / run by scripts",
        (("accounting", "monitor_client_cmds_per_job"), ("accounting", "monitor_script_cmds_per_job")),
        1,
    ),
    Row(
        "Redis commands per second, idle, all processes (fresh / after work)",
        (("paced", "idle_fresh_cmds_per_s"), ("paced", "idle_after_cmds_per_s")),
        1,
    ),
    Row(
        "peak RSS MB api / worker / notifier",
        (("burst", "peak_rss_mb_api"), ("burst", "peak_rss_mb_worker"), ("burst", "peak_rss_mb_notifier")),
        1,
    ),
)

RAW_ROWS: tuple[tuple[str, str, str, int], ...] = (
    # (label, client, metric, digits)
    ("requests, Session per thread: files/s", "requests", "files_per_s", 0),
    ("requests: CPU ms per file", "requests", "cpu_ms_per_file", 3),
    ("urllib3 PoolManager: files/s", "urllib3", "files_per_s", 0),
    ("urllib3: CPU ms per file", "urllib3", "cpu_ms_per_file", 3),
    ("aiohttp (asyncio loop): files/s", "aiohttp", "files_per_s", 0),
    ("aiohttp: CPU ms per file", "aiohttp", "cpu_ms_per_file", 3),
    ("aiohttp (uvloop): files/s", "aiohttp-uvloop", "files_per_s", 0),
    ("aiohttp (uvloop): CPU ms per file", "aiohttp-uvloop", "cpu_ms_per_file", 3),
    ("Go net/http: files/s", "go-net/http", "files_per_s", 0),
    ("Go net/http: CPU ms per file", "go-net/http", "cpu_ms_per_file", 3),
    ("Redis alone, PING: round trips/s", "redis-ping", "round_trips_per_s", 0),
    ("Redis alone, PING: Redis CPU µs per op", "redis-ping", "redis_cpu_us_per_op", 2),
    ("Redis alone, EVALSHA (3 writes): scripts/s", "redis-evalsha", "round_trips_per_s", 0),
    ("Redis alone, EVALSHA: Redis CPU µs per script", "redis-evalsha", "redis_cpu_us_per_op", 2),
    ("Redis alone, 16 pipelined PINGs per round trip: commands/s", "redis-ping-pipe16", "ops_per_s", 0),
    ("Redis alone, pipelined PING: Redis CPU µs per command", "redis-ping-pipe16", "redis_cpu_us_per_op", 2),
)


def fmt(value: float | None, digits: int) -> str:
    if value is None:
        return "–"
    return f"{value:,.{digits}f}"


def _cells(summary: dict[str, Any], row: Row, impl: str) -> tuple[str, str, str] | None:
    """min, median, max cells of `impl` for `row` (parts joined with " / "), or None when the
    implementation has no figure for any part."""
    got = [summary["figures"].get(s, {}).get(m, {}).get(impl) for s, m in row.parts]
    if all(g is None for g in got):
        return None
    return tuple(  # type: ignore[return-value]
        " / ".join(fmt(None if g is None else g[k], row.digits) for g in got)
        for k in ("min", "median", "max")
    )


def _runs_cell(summary: dict[str, Any], row: Row, impl: str) -> str:
    ok = failed = 0
    for scenario in dict.fromkeys(s for s, _ in row.parts):
        c = summary["counts"].get(scenario, {}).get(impl)
        if c:
            ok += c["ok"]
            failed += c["failed"]
    if not ok and not failed:
        return "–"
    return f"{ok}/{ok + failed}"


def _ratio_cell(summary: dict[str, Any], row: Row, compared: bool) -> str:
    if not compared:
        return NOT_COMPARED
    out = []
    for s, m in row.parts:
        fig = summary["figures"].get(s, {}).get(m, {})
        r = ratio((fig.get("ours") or {}).get("median"), (fig.get("go") or {}).get("median"))
        out.append(fmt(r, 2))
    return " / ".join(out)


def markdown_table(summary: dict[str, Any], compared: bool, rows: Sequence[Row] = ROWS) -> str:
    """The main table; with `compared` False (no original), the Go columns are empty and the
    ratio says "not compared"."""
    head = (
        "| figure | ours min | ours median | ours max | Go min | Go median | Go max | ours/Go (medians) "
        "| runs ok ours · Go |\n|---|---:|---:|---:|---:|---:|---:|---:|---|\n"
    )
    lines = []
    for row in rows:
        ours = _cells(summary, row, "ours")
        go = _cells(summary, row, "go") if compared else None
        if ours is None and go is None:
            continue
        o = ours or ("–", "–", "–")
        g = go or ("–", "–", "–")
        runs = f"{_runs_cell(summary, row, 'ours')} · {_runs_cell(summary, row, 'go') if compared else '–'}"
        lines.append(
            f"| {row.label} | {o[0]} | {o[1]} | {o[2]} | {g[0]} | {g[1]} | {g[2]} | "
            f"{_ratio_cell(summary, row, compared)} | {runs} |"
        )
    return head + "\n".join(lines) + "\n"


def scaling(summary: dict[str, Any], workers: Sequence[int] = (1, 2, 4)) -> dict[int, float | None]:
    """Median drain rate with N worker processes over the median with one (ours)."""
    fig = summary["figures"]
    base = (fig.get("drain-1", {}).get("steady_callbacks_per_s", {}).get("ours") or {}).get("median")
    out: dict[int, float | None] = {}
    for n in workers:
        med = (fig.get(f"drain-{n}", {}).get("steady_callbacks_per_s", {}).get("ours") or {}).get("median")
        out[n] = ratio(med, base)
    return out


def shorten(text: str, head: int = 160, tail: int = 340) -> str:
    """The start and the end of a long message (a log tail ends with what went wrong)."""
    return text if len(text) <= head + tail + 5 else f"{text[:head]} … {text[-tail:]}"


def failures_text(summary: dict[str, Any]) -> str:
    if not summary["failed"]:
        return "Every run passed verification.\n"
    lines = [f"**{len(summary['failed'])} failed run(s), excluded from the figures:**", ""]
    for f in summary["failed"]:
        err = shorten(" ".join(str(f["error"]).split()))
        lines.append(f"- {f['impl']} {f['scenario']} round {f['round']}: {err}")
    return "\n".join(lines) + "\n"


def summarize_raw(raw: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Raw-limit records `{"client", "round", "ok", metrics...}` → {client: {metric: stats}}
    over the ok ones, plus the failures."""
    values: dict[tuple[str, str], list[float]] = {}
    failed = []
    for rec in raw:
        if not rec.get("ok"):
            failed.append({k: rec.get(k) for k in ("client", "round", "error", "errors")})
            continue
        for k, v in rec.items():
            if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "round":
                values.setdefault((rec["client"], k), []).append(v)
    out: dict[str, Any] = {"figures": {}, "failed": failed}
    for (client, metric), vals in values.items():
        out["figures"].setdefault(client, {})[metric] = stats(vals)
    return out


def raw_table(raw_summary: dict[str, Any]) -> str:
    head = "| raw limit (16 concurrent, same host, same files) | min | median | max | runs |\n|---|---:|---:|---:|---:|\n"
    lines = []
    for label, client, metric, digits in RAW_ROWS:
        s = raw_summary["figures"].get(client, {}).get(metric)
        if s is None:
            continue
        lines.append(
            f"| {label} | {fmt(s['min'], digits)} | {fmt(s['median'], digits)} | {fmt(s['max'], digits)} | {s['n']} |"
        )
    if not lines:
        return "(no raw limits measured)\n"
    return head + "\n".join(lines) + "\n"


#: The rows of `impl_table`: (label, metric, digits), for every drain-N scenario measured.
DRAIN_ROWS: tuple[tuple[str, str, int], ...] = (
    ("steady drain (jobs/s: callbacks)", "steady_callbacks_per_s", 0),
    ("steady downloads/s", "steady_downloads_per_s", 0),
    ("worker CPU ms per job, steady", "worker_cpu_ms_per_job_steady", 2),
    ("worker CPU ms per job, start-up included", "worker_cpu_ms_per_job_incl_startup", 2),
    ("notifier CPU ms per job", "cpu_ms_per_job_notifier", 2),
    ("Redis CPU ms per job", "cpu_ms_per_job_redis", 2),
    ("Redis commands per job (all)", "redis_cmds_per_job_all", 1),
    ("Redis round trips per job", "redis_round_trips_per_job", 1),
    ("peak RSS MB, worker", "peak_rss_mb_worker", 0),
    ("worker system calls per job (--perf)", "worker_syscalls_per_job", 1),
    ("worker futex calls per job (--perf)", "worker_futex_per_job", 1),
    ("worker fsyncs per job (--perf)", "worker_fsyncs_per_job", 1),
    ("worker context switches per job (--perf)", "worker_context_switches_per_job", 1),
    ("worker task-clock ms per job (--perf)", "worker_task_clock_ms_per_job", 2),
)


def impl_table(
    summary: dict[str, Any], impls: Sequence[str], rows: Sequence[tuple[str, str, int]] = DRAIN_ROWS
) -> str:
    """The drain figures of several implementations side by side (`compare.py --floor`): per
    implementation the median and (min–max), then each one after the first two over "go" and
    over "ours" (ratios of medians)."""
    others = [i for i in impls if i not in ("ours", "go")]
    ratio_heads = [f"{o} / {base}" for o in others for base in ("go", "ours") if base in impls]
    head = "| figure | " + " | ".join([*impls, *ratio_heads]) + " |\n"
    head += "|---|" + "---:|" * (len(impls) + len(ratio_heads)) + "\n"
    lines = []
    scenarios = sorted(s for s in summary["figures"] if s.startswith("drain-"))
    for scenario in scenarios:
        for label, metric, digits in rows:
            fig = summary["figures"][scenario].get(metric, {})
            if not any(fig.get(i) for i in impls):
                continue
            cells = []
            for impl in impls:
                s = fig.get(impl)
                cells.append(
                    "–"
                    if s is None
                    else f"{fmt(s['median'], digits)} ({fmt(s['min'], digits)}–{fmt(s['max'], digits)})"
                )
            for o in others:
                for base in ("go", "ours"):
                    if base in impls:
                        med = (fig.get(o) or {}).get("median")
                        cells.append(fmt(ratio(med, (fig.get(base) or {}).get("median")), 2))
            lines.append(f"| {scenario}: {label} | " + " | ".join(cells) + " |")
        counts = summary["counts"].get(scenario, {})
        runs = [
            f"{counts[i]['ok']}/{counts[i]['ok'] + counts[i]['failed']}" if i in counts else "–"
            for i in impls
        ]
        lines.append(f"| {scenario}: runs ok | " + " | ".join(runs) + " |" + " |" * len(ratio_heads))
    if not lines:
        return "(no drain runs)\n"
    return head + "\n".join(lines) + "\n\nCells: median (min–max); ratios of medians.\n"
