"""The one place where errors become HTTP answers.

The original's clients match on its plain-text error bodies (`http.Error` style: text, a
newline, `nosniff`), so every error the API returns is rendered that way here.
"""

from __future__ import annotations

from collections.abc import Mapping

from fastapi import FastAPI, Request
from fastapi.responses import PlainTextResponse

from downloader.errors import RequestRejected, StoreError


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


async def _store(_: Request, exc: Exception) -> PlainTextResponse:
    return plain_error(500, str(exc))


def install(app: FastAPI) -> None:
    app.add_exception_handler(HTTPProblem, _problem)
    app.add_exception_handler(RequestRejected, _rejected)
    app.add_exception_handler(StoreError, _store)
