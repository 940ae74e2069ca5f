"""The one place where errors become HTTP answers.

The original's clients match on its plain-text error bodies (`http.Error` style: text, a
newline, `nosniff`), so every error the API returns is rendered that way here.

Stored data that cannot be read (a job hash with a field or value this service does not
know, a key of the wrong Redis type) is answered 409 Conflict with what is wrong, never 5xx:
the request is fine and retrying it changes nothing (a 5xx invites retries and pages the
operator for what is a property of one record). The record stays as it is for inspection.
"""

from __future__ import annotations

from collections.abc import Mapping

import redis
from fastapi import FastAPI, Request
from fastapi.responses import PlainTextResponse

from downloader.errors import RequestRejected, StoreError
from downloader.jobs.models import CorruptJobError

#: The status of an answer about stored data that cannot be read.
UNREADABLE_STATUS = 409
_WRONGTYPE = "WRONGTYPE Operation against a key holding the wrong kind of value"


class HTTPProblem(Exception):
    """Raised by routes for an answer other than success: a status and the original's text."""

    def __init__(self, status: int, text: str, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(text)
        self.status = status
        self.text = text
        self.headers = dict(headers or {})


def unauthorized(presented: bool) -> HTTPProblem:
    """401 for a missing or unknown API key (RFC 6750: the challenge names the scheme)."""
    if presented:
        return HTTPProblem(401, "Invalid API key", {"WWW-Authenticate": 'Bearer error="invalid_token"'})
    return HTTPProblem(401, "Missing API key (Authorization: Bearer <key>)", {"WWW-Authenticate": "Bearer"})


def forbidden(aggr_id: str) -> HTTPProblem:
    """403 for a valid API key whose aggregation prefixes do not cover `aggr_id`."""
    return HTTPProblem(403, f"API key not allowed for aggregation {aggr_id}")


def plain_error(status: int, text: str, headers: Mapping[str, str] | None = None) -> PlainTextResponse:
    return PlainTextResponse(
        text + "\n", status_code=status, headers={"X-Content-Type-Options": "nosniff", **(headers or {})}
    )


async def _problem(_: Request, exc: Exception) -> PlainTextResponse:
    assert isinstance(exc, HTTPProblem)
    return plain_error(exc.status, exc.text, exc.headers)


async def _rejected(_: Request, exc: Exception) -> PlainTextResponse:
    assert isinstance(exc, RequestRejected)
    return plain_error(400, exc.reason)


def unreadable(what: str, why: str) -> HTTPProblem:
    """409 for stored data that cannot be read (`what`: "Job <id>", or "Stored data")."""
    return HTTPProblem(UNREADABLE_STATUS, f"{what} cannot be read from Redis: {why}")


def is_unreadable(exc: StoreError) -> bool:
    """Redis is fine, but a key read holds another type than ours (pipelines prefix the text)."""
    return isinstance(exc.__cause__, redis.ResponseError) and _WRONGTYPE in str(exc.__cause__)


async def _store(request: Request, exc: Exception) -> PlainTextResponse:
    assert isinstance(exc, StoreError)
    if is_unreadable(exc):
        return _render(unreadable(_subject(request), "a key holds the wrong kind of value"))
    return plain_error(500, str(exc))


async def _corrupt(request: Request, exc: Exception) -> PlainTextResponse:
    return _render(unreadable(_subject(request), str(exc)))


def _subject(request: Request) -> str:
    job_id = request.path_params.get("job_id")
    return f"Job {job_id}" if job_id else "Stored data"


def _render(problem: HTTPProblem) -> PlainTextResponse:
    return plain_error(problem.status, problem.text, problem.headers)


def install(app: FastAPI) -> None:
    app.add_exception_handler(HTTPProblem, _problem)
    app.add_exception_handler(RequestRejected, _rejected)
    app.add_exception_handler(StoreError, _store)
    app.add_exception_handler(CorruptJobError, _corrupt)
