"""The stored files at /files/ (`downloader up`), served with the type libmagic finds in them.

Stored files are named by job id, without an extension, so a type guessed from the name is
always wrong; the worker found the real one with libmagic when it stored the file, and the
same sniff over the file's first bytes gives it again here. The files are whatever strangers'
servers sent, served from the dashboard's own origin: `Content-Security-Policy: sandbox`
puts a served HTML page in an origin of its own, without scripts, so it can read neither
the page's API key nor anything else of ours; `nosniff` keeps browsers to the type we send.
"""

from __future__ import annotations

import os
from pathlib import Path

import anyio.to_thread
from starlette.responses import FileResponse, Response
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

from downloader.fetching import mime

FILE_HEADERS = {"Content-Security-Policy": "sandbox", "X-Content-Type-Options": "nosniff"}


class StoredFiles(StaticFiles):
    """StaticFiles whose file answers carry the sniffed Content-Type and FILE_HEADERS."""

    async def get_response(self, path: str, scope: Scope) -> Response:
        response = await super().get_response(path, scope)
        if isinstance(response, FileResponse):
            # A read and libmagic (~20 us) per file: in a thread, as StaticFiles' own stat is.
            response.headers["content-type"] = await anyio.to_thread.run_sync(sniff_file, response.path)
            response.headers.update(FILE_HEADERS)
        return response


def sniff_file(path: str | os.PathLike[str]) -> str:
    """libmagic's mime type of the file's first bytes, as the worker found it."""
    with Path(path).open("rb") as stored:
        return mime.sniff(stored.read(mime.SNIFF_BYTES))
