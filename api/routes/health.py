"""GET /hb (the original's heartbeat file), /healthz (alive) and /readyz (Redis reachable)."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse, PlainTextResponse

from downloader.api.deps import SettingsDep, StoreDep
from downloader.errors import StoreError

router = APIRouter(tags=["health"])

#: The original answers these routes whatever the method; only GET is documented.
OTHER_METHODS = ["POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD"]


@router.api_route("/hb", methods=OTHER_METHODS, include_in_schema=False)
@router.get("/hb", summary="Heartbeat: 503 while the heartbeat file exists")
async def heartbeat(settings: SettingsDep) -> Response:
    path = settings.heartbeat_path
    if path:
        try:
            Path(path).stat()
        except FileNotFoundError:
            return PlainTextResponse("OK")
        except OSError:
            pass  # the original answers 503 for any other stat error too
        return PlainTextResponse(f"Service disabled, '{path}' exists!", status_code=503)
    return PlainTextResponse("OK")


@router.get("/healthz", summary="Liveness: the process serves HTTP")
async def healthz() -> JSONResponse:
    return JSONResponse({"status": "ok"})


@router.get("/readyz", summary="Readiness: Redis answers", responses={503: {"description": "Redis down"}})
async def readyz(db: StoreDep) -> JSONResponse:
    try:
        await db.ping()
    except StoreError as exc:
        return JSONResponse({"status": "unavailable", "redis": str(exc)}, status_code=503)
    return JSONResponse({"status": "ok", "redis": "ok"})
