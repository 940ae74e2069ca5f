"""The web dashboard: the page at `/` (files in api/static/) and the JSON calls it polls
(`/ui/overview`, and `/ui/hosts` for its "Hosts" card).

GET /ui/overview gathers, in a few pipelined round trips, the live instances of each role,
the aggregations with backlog, limit and recent rates, per-minute totals and the recent
failures. Every part is bounded: aggregations are capped, the series is 30 minutes long.
"""

from __future__ import annotations

import datetime
import enum
import json
import logging
import math
import time
from collections.abc import Iterable, Mapping
from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse

from downloader import __version__
from downloader.api import errors
from downloader.api.deps import GrantDep, SettingsDep, StoreDep
from downloader.api.schemas import (
    AggregationMinute,
    AggregationRow,
    AggregationSeries,
    CallbackHost,
    FailureView,
    HostRow,
    HostsView,
    InstanceView,
    MinutePoint,
    Overview,
    Totals,
)
from downloader.cluster import kube
from downloader.config.apikeys import Grant
from downloader.delivery.notifying import destination_host
from downloader.errors import AttemptPhase, FailureReason
from downloader.jobs.hosts import HostPolicy
from downloader.store import ATTEMPT_KINDS, Instance, keys

log = logging.getLogger("downloader.api")
router = APIRouter(tags=["ui"])

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"
#: Rows the overview returns at most: the page stays light with thousands of aggregations.
AGGREGATIONS_CAP = 500
#: Hosts the "Hosts" card lists at most.
HOSTS_CAP = 50
#: Aggregations whose per-minute series (finished jobs, latency) the overview returns.
SERIES_AGGREGATIONS = 6
#: Destination hosts the callbacks table lists at most.
CALLBACK_HOSTS_CAP = 50
#: Minutes behind the rates and error rates ("recently").
WINDOW_MINUTES = 5
SERIES_MINUTES = keys.THROUGHPUT_MINUTES
#: The page loads nothing from elsewhere, and nothing may frame it.
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "Cache-Control": "no-cache",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}

Counts = dict[str, int]


@router.get("/", include_in_schema=False)
async def page() -> FileResponse:
    return FileResponse(STATIC_DIR / "index.html", headers=PAGE_HEADERS)


@router.get(
    "/ui/overview",
    response_model=Overview,
    summary="Everything the web dashboard shows, in one bounded answer",
    description=f"Instances by role, aggregations (largest backlog first, at most {AGGREGATIONS_CAP}; "
    "those the API key covers), totals, finished attempts per minute and the recent failures.",
)
async def overview(db: StoreDep, grant: GrantDep, settings: SettingsDep) -> Overview:
    now = time.time()
    minute = int(now // 60)
    minutes = list(range(minute - SERIES_MINUTES + 1, minute + 1))
    recent = minutes[-WINDOW_MINUTES:]
    # Per-aggregation fields are read for the window only, unless a scoped key needs them
    # all to compute its own totals.
    try:
        counts = await db.throughput(minutes, minutes if grant.prefixes else recent)
    except ValueError as exc:  # a per-minute count that is not a number (written by hand)
        raise errors.unreadable("Stored data", f"a per-minute count is not a number ({exc})") from exc
    window = _per_aggregation((counts[m] for m in recent), grant)
    elapsed = (WINDOW_MINUTES - 1) + (now % 60) / 60  # the current minute is only partly over
    backlogs = {a: (queued, running) for a, queued, running in await db.backlogs(grant.covers)}
    rows = _rows(backlogs, window, elapsed)[:AGGREGATIONS_CAP]
    limits, paused = await db.aggregation_limits([row.id for row in rows])
    remembered = _remembered_limits(counts[m] for m in recent)
    for row in rows:
        row.limit, row.paused = limits[row.id] or remembered.get(row.id), row.id in paused
    try:
        latencies = await db.per_minute(keys.LATENCY_PREFIX, recent)
        series = await _aggregation_series(db, rows, minutes, counts)
    except ValueError as exc:
        raise errors.unreadable("Stored data", f"a per-minute count is not a number ({exc})") from exc
    histograms = _histograms(latencies.values())
    for row in rows:
        row.latency_p50, row.latency_p95 = _percentiles(histograms.get(row.id, {}))
    # Callbacks are counted by destination, not aggregation: a scoped key sees none.
    hosts, sampled = (None, False) if grant.prefixes else await _callback_hosts(db, minutes)
    points = [_point(m, _minute_totals(counts[m], grant)) for m in minutes]
    recent_total = sum(c.get("ok", 0) + c.get("failed", 0) for c in map(counts.__getitem__, recent))
    return Overview(
        generated_at=_iso(now) or "",
        version=__version__,
        instances=_instances(await db.instances(now), now),
        aggregations=rows,
        aggregations_cap=AGGREGATIONS_CAP,
        window_minutes=WINDOW_MINUTES,
        series_minutes=SERIES_MINUTES,
        totals=Totals(
            aggregations=len(backlogs.keys() | window.keys()),
            pending=sum(q for q, _ in backlogs.values()),
            in_flight=sum(r for _, r in backlogs.values()),
            # Callbacks are not counted per aggregation: a scoped key sees none.
            callbacks_queued=None if grant.prefixes else await db.callbacks_queued(),
            succeeded=sum(p.succeeded for p in points),
            failed=sum(p.failed for p in points),
            retried=sum(p.retried for p in points),
            jobs_per_minute=round(recent_total / elapsed, 2),
        ),
        series=points,
        recent_failures=[
            f for f in map(_failure, await db.recent_failures()) if f and grant.covers(f.aggr_id)
        ],
        operator_expected=kube.has_access(settings) or await db.operator_in_use(),
        aggregation_series=series,
        callback_hosts=hosts,
        callback_hosts_sampled=sampled,
    )


def _remembered_limits(minutes: Iterable[Counts]) -> dict[str, int]:
    """`<aggr>:limit` of the recent minutes (the latest wins): limits of drained aggregations."""
    out: dict[str, int] = {}
    for fields in minutes:
        for field, value in fields.items():
            aggr_id, _, kind = field.rpartition(":")
            if aggr_id and kind == keys.THROUGHPUT_LIMIT_KIND and value > 0:
                out[aggr_id] = value
    return out


def _histograms(minutes: Iterable[Counts]) -> dict[str, Counts]:
    """Each aggregation's latency counts per bucket bound, summed over `minutes`, in one pass
    (a bound has no colon; an aggregation id may)."""
    out: dict[str, Counts] = {}
    for fields in minutes:
        for field, value in fields.items():
            aggr_id, _, bound = field.rpartition(":")
            if aggr_id:
                into = out.setdefault(aggr_id, {})
                into[bound] = into.get(bound, 0) + value
    return out


_BOUND_ORDER = {bound: i for i, bound in enumerate((*keys.LATENCY_BOUNDS, keys.LATENCY_ABOVE))}


def _percentiles(histogram: Mapping[str, int]) -> tuple[float | None, float | None]:
    """p50 and p95 in seconds: the bound of the bucket each falls in (above the last bound,
    the last bound: "at least")."""
    buckets = sorted((b, n) for b, n in histogram.items() if b in _BOUND_ORDER and n > 0)
    buckets.sort(key=lambda pair: _BOUND_ORDER[pair[0]])
    total = sum(n for _, n in buckets)
    if not total:
        return None, None

    def at(share: float) -> float:
        seen = 0
        for bound, n in buckets:
            seen += n
            if seen >= share * total:
                return float(bound) if bound != keys.LATENCY_ABOVE else float(keys.LATENCY_BOUNDS[-1])
        return float(keys.LATENCY_BOUNDS[-1])

    return at(0.5), at(0.95)


async def _aggregation_series(
    db: StoreDep, rows: list[AggregationRow], minutes: list[int], counts: Mapping[int, Counts]
) -> list[AggregationSeries]:
    """Per minute, finished jobs and latency of the busiest aggregations: a few fields each,
    read by name, however many aggregations there are."""
    busiest = sorted(
        (r for r in rows if r.succeeded + r.failed or r.pending + r.in_flight),
        key=lambda r: (-(r.succeeded + r.failed), -(r.pending + r.in_flight), r.id),
    )[:SERIES_AGGREGATIONS]
    names = [r.id for r in busiest]
    done = await db.per_minute(
        keys.THROUGHPUT_PREFIX, minutes, [f"{a}:{kind}" for a in names for kind in ("ok", "failed")]
    )
    bounds = (*keys.LATENCY_BOUNDS, keys.LATENCY_ABOVE)
    latency = await db.per_minute(keys.LATENCY_PREFIX, minutes, [f"{a}:{b}" for a in names for b in bounds])
    out = []
    per_minute = {minute: _histograms([latency[minute]]) for minute in minutes}
    for aggr_id in names:
        points = []
        for minute in minutes:
            fields = done[minute]
            ok, failed = fields.get(f"{aggr_id}:ok", 0), fields.get(f"{aggr_id}:failed", 0)
            p50, p95 = _percentiles(per_minute[minute].get(aggr_id, {}))
            points.append(
                AggregationMinute(
                    minute=_iso(minute * 60) or "",
                    finished=ok + failed,
                    failed=failed,
                    latency_p50=p50,
                    latency_p95=p95,
                )
            )
        out.append(AggregationSeries(id=aggr_id, points=points))
    return out


async def _callback_hosts(db: StoreDep, minutes: list[int]) -> tuple[list[CallbackHost], bool]:
    """Callbacks pending (queued or being delivered: a sample when there are many) and failed
    over the series, per destination host; fleet-wide, so only for unscoped keys."""
    destinations = await db.callback_destinations()
    pending: Counts = {}
    for backend, where in destinations:
        host = destination_host(backend, where)
        pending[host] = pending.get(host, 0) + 1
    try:
        failures = await db.per_minute(keys.CALLBACK_HOSTS_PREFIX, minutes)
    except ValueError as exc:
        raise errors.unreadable("Stored data", f"a per-minute count is not a number ({exc})") from exc
    failed: dict[str, Counts] = {}
    for fields in failures.values():
        for field, value in fields.items():
            host, _, kind = field.rpartition(":")
            if host and kind in ("retried", "failed"):
                into = failed.setdefault(host, {})
                into[kind] = into.get(kind, 0) + value
    rows = [
        CallbackHost(
            host=host,
            pending=pending.get(host, 0),
            retried=failed.get(host, {}).get("retried", 0),
            failed=failed.get(host, {}).get("failed", 0),
        )
        for host in pending.keys() | failed.keys()
    ]
    rows.sort(key=lambda r: (-r.pending, -r.failed, -r.retried, r.host))
    return rows[:CALLBACK_HOSTS_CAP], len(destinations) >= keys.CALLBACK_HOSTS_SAMPLE


def _per_aggregation(minutes: Iterable[Counts], grant: Grant) -> dict[str, Counts]:
    """`<aggr>:<kind>` fields summed per aggregation (totals have no colon: skipped)."""
    out: dict[str, Counts] = {}
    for fields in minutes:
        for field, value in fields.items():
            aggr_id, _, kind = field.rpartition(":")
            if aggr_id and kind in ATTEMPT_KINDS and grant.covers(aggr_id):
                into = out.setdefault(aggr_id, {})
                into[kind] = into.get(kind, 0) + value
    return out


def _minute_totals(fields: Counts, grant: Grant) -> Counts:
    if not grant.prefixes:
        return fields
    return {
        kind: sum(c.get(kind, 0) for c in _per_aggregation([fields], grant).values())
        for kind in ATTEMPT_KINDS
    }


def _rows(
    backlogs: Mapping[str, tuple[int, int]], window: Mapping[str, Counts], elapsed: float
) -> list[AggregationRow]:
    """Every aggregation with a backlog or recent work, largest backlog (then busiest) first."""
    rows = []
    for aggr_id in backlogs.keys() | window.keys():
        queued, running = backlogs.get(aggr_id, (0, 0))
        c = window.get(aggr_id, {})
        ok, failed, retried = c.get("ok", 0), c.get("failed", 0), c.get("retried", 0)
        attempts = ok + failed + retried
        rows.append(
            AggregationRow(
                id=aggr_id,
                limit=None,
                paused=False,
                pending=queued,
                in_flight=running,
                jobs_per_minute=round((ok + failed) / elapsed, 2),
                error_rate=round((failed + retried) / attempts, 4) if attempts else None,
                succeeded=ok,
                failed=failed,
                retried=retried,
            )
        )
    rows.sort(key=lambda r: (-(r.pending + r.in_flight), -r.jobs_per_minute, r.id))
    return rows


def _point(minute: int, fields: Counts) -> MinutePoint:
    return MinutePoint(
        minute=_iso(minute * 60) or "",
        succeeded=fields.get("ok", 0),
        failed=fields.get("failed", 0),
        retried=fields.get("retried", 0),
    )


def _instances(
    found: Mapping[str, list[tuple[Instance, float]]], now: float
) -> dict[str, list[InstanceView]]:
    return {
        role: sorted(
            (_instance(i, expires, now) for i, expires in entries), key=lambda v: (v.host, v.pid, v.id)
        )
        for role, entries in found.items()
    }


def _instance(i: Instance, expires: float, now: float) -> InstanceView:
    # A start time that is no time (`inf`, `nan`: the entry is anyone's to write) reads as
    # unknown; JSON has no infinite uptime.
    started = i.started if math.isfinite(i.started) and _iso(i.started) else 0.0
    return InstanceView(
        id=i.id,
        host=i.host,
        pid=i.pid,
        version=i.version,
        started_at=_iso(started),
        uptime_seconds=round(max(0.0, now - started), 1) if started else 0.0,
        last_seen_seconds=round(max(0.0, now - (expires - keys.INSTANCE_TTL_SECONDS)), 1),
    )


def _failure(raw: str) -> FailureView | None:
    """A record of `RecentFailures`; None for one that cannot be read."""
    try:
        record = json.loads(raw)
        code = str(record.get("code") or "0")
        return FailureView(
            job_id=str(record["id"]),
            aggr_id=str(record["aggr_id"]),
            url=str(record.get("url", "")),
            error=str(record.get("error", "")),
            response_code=int(code) if code.isdigit() else 0,
            at=_iso(record.get("at")),
            phase=_known(AttemptPhase, record.get("phase")),
            reason=_known(FailureReason, record.get("reason")),
        )
    except (ValueError, KeyError, TypeError, AttributeError):
        return None


def _known(kind: type[enum.StrEnum], value: object) -> str:
    """`value` if it is one of `kind`'s (a phase or reason), else "": the fields stay bounded."""
    return value if isinstance(value, str) and value in {m.value for m in kind} else ""


def _iso(stamp: float | None) -> str | None:
    """None for no time, and for a stored one that is not a time (`inf`, year 10^10)."""
    if not stamp:
        return None
    try:
        return datetime.datetime.fromtimestamp(float(stamp), tz=datetime.UTC).isoformat(timespec="seconds")
    except (ValueError, OverflowError, OSError):
        return None


@router.get(
    "/ui/hosts",
    response_model=HostsView,
    summary="Politeness per origin host: in flight, limit and Retry-After pause of the busiest hosts",
    description=f"At most {HOSTS_CAP} hosts claimed for or paused within the last hour, busiest first. "
    "Hosts are fleet-wide, so a key scoped to some aggregations sees none.",
)
async def hosts_card(db: StoreDep, grant: GrantDep, settings: SettingsDep) -> HostsView:
    if grant.prefixes:
        return HostsView(hosts=[], cap=HOSTS_CAP, scoped=True)
    policy = HostPolicy.from_settings(settings)
    rows = []
    for load in await db.host_loads(most=HOSTS_CAP):
        rule = policy.resolve(load.host)
        rows.append(
            HostRow(
                host=load.host,
                in_flight=load.in_flight,
                limit=rule.limit or None,
                requests_per_second=rule.rate or None,
                paused_until=_iso(load.paused_until),
            )
        )
    return HostsView(hosts=rows, cap=HOSTS_CAP, scoped=False)
