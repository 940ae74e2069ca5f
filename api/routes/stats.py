"""GET /stats/<component> and GET /dashboard/aggregations (reference 1.3, 1.5)."""

from __future__ import annotations

import json

from fastapi import APIRouter, Response

from downloader.api import errors
from downloader.api.deps import GrantDep, StoreDep
from downloader.api.errors import HTTPProblem
from downloader.api.schemas import AggregationQueue
from downloader.errors import StoreError
from downloader.store.keys import QUEUE_PREFIX

router = APIRouter(tags=["stats"])

#: The original answers these routes whatever the method; only GET is documented.
OTHER_METHODS = ["POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD"]
CORS = {"Access-Control-Allow-Origin": "*"}


@router.api_route("/stats/{component}", methods=OTHER_METHODS, include_in_schema=False)
@router.get(
    "/stats/{component}",
    summary="Counters of processor or notifier",
    responses={
        200: {"description": "Flat JSON object of integer counters"},
        404: {"description": "The component is not reporting"},
    },
)
async def component_stats(component: str, db: StoreDep) -> Response:
    raw = await db.stats(component)
    if raw is None:
        raise HTTPProblem(404, f"Could not find stats for entity {component}")
    return Response(content=raw, media_type="application/json", headers=CORS)


@router.api_route("/dashboard/aggregations", methods=OTHER_METHODS, include_in_schema=False)
@router.get(
    "/dashboard/aggregations",
    response_model=list[AggregationQueue],
    summary="Queued jobs per aggregation (those the API key covers)",
)
async def aggregations(db: StoreDep, grant: GrantDep) -> Response:
    try:
        sizes = await db.queue_sizes()
    except StoreError as exc:
        if errors.is_unreadable(exc):
            raise  # stored data, not Redis: answered by the error mapping (409)
        raise HTTPProblem(500, f"Error scanning for aggregation keys: {exc}") from exc
    visible = [(name, size) for name, size in sizes if grant.covers(name.removeprefix(QUEUE_PREFIX))]
    body = json.dumps([{"name": name, "size": size} for name, size in visible], separators=(",", ":"))
    return Response(content=body, media_type="application/json", headers=CORS)
