"""The web dashboard: the page at `/` (files in api/static/) and the one JSON call it polls.

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
from downloader.api.deps import GrantDep, StoreDep
from downloader.api.schemas import (
    AggregationRow,
    FailureView,
    InstanceView,
    MinutePoint,
    Overview,
    Totals,
)
from downloader.config.apikeys import Grant
from downloader.errors import AttemptPhase, FailureReason
from downloader.store import ATTEMPT_KINDS, Instance, keys

log = logging.getLogger("downloader.api")
router = APIRouter(tags=["ui"])

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"
#: Rows the overview returns at most: the page stays light with thousands of aggregations.
AGGREGATIONS_CAP = 500
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
async def overview(db: StoreDep, grant: GrantDep) -> Overview:
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
    for row in rows:
        row.limit, row.paused = limits[row.id], row.id in paused
    series = [_point(m, _minute_totals(counts[m], grant)) for m in minutes]
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
            succeeded=sum(p.succeeded for p in series),
            failed=sum(p.failed for p in series),
            retried=sum(p.retried for p in series),
            jobs_per_minute=round(recent_total / elapsed, 2),
        ),
        series=series,
        recent_failures=[
            f for f in map(_failure, await db.recent_failures()) if f and grant.covers(f.aggr_id)
        ],
    )


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
