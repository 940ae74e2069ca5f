"""The one place where errors become HTTP answers.

The original's clients match on its plain-text error bodies (`http.Error` style: text, a
newline, `nosniff`), so every error the API returns is rendered that way here.
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import PlainTextResponse

from downloader.errors import RequestRejected, StoreError


class HTTPProblem(Exception):
    """Raised by routes for an answer other than success: a status and the original's text."""

    def __init__(self, status: int, text: str) -> None:
        super().__init__(text)
        self.status = status
        self.text = text


def plain_error(status: int, text: str) -> PlainTextResponse:
    return PlainTextResponse(text + "\n", status_code=status, headers={"X-Content-Type-Options": "nosniff"})


async def _problem(_: Request, exc: Exception) -> PlainTextResponse:
    assert isinstance(exc, HTTPProblem)
    return plain_error(exc.status, exc.text)


async def _rejected(_: Request, exc: Exception) -> PlainTextResponse:
    assert isinstance(exc, RequestRejected)
    return plain_error(400, exc.reason)


async def _store(_: Request, exc: Exception) -> PlainTextResponse:
    return plain_error(500, str(exc))


def install(app: FastAPI) -> None:
    app.add_exception_handler(HTTPProblem, _problem)
    app.add_exception_handler(RequestRejected, _rejected)
    app.add_exception_handler(StoreError, _store)
