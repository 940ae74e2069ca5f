"""A file server that honours Range and If-Range (RFC 9110), counts the body bytes it sends,
and can cut a response short, stall it, or change the file between requests: the other side of
resumable downloads (tests/integration/test_resume.py, test_proc_resume.py)."""

from __future__ import annotations

import http.server
import re
import threading


class RangeServer(http.server.ThreadingHTTPServer):
    """Serves one file at /file with ETag and Last-Modified, honouring Range and If-Range as
    RFC 9110 says; `cut_at` makes the next response stop after that many body bytes."""

    daemon_threads = True

    def __init__(self, content: bytes, etag: str = '"v1"') -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.content = content
        self.etag = etag
        self.cut_at: int | None = None
        self.sent: list[int] = []
        """Body bytes written per request."""
        self.requests: list[dict[str, str]] = []
        self.stall = False
        """With `cut_at`: hold the connection open after the cut until `release` is set (a
        transfer in progress, for a worker to be killed in the middle of)."""
        self.release = threading.Event()
        self.after_cut: tuple[bytes, str] | None = None
        """(content, etag) the file becomes right after a cut: changed between attempts."""
        self.misbehave: str = ""
        """"ignore-start": answer a range with a 206 that starts at 0; "always-206": a 206 to every GET."""
        threading.Thread(target=self.serve_forever, daemon=True).start()

    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/file"


class _Handler(http.server.BaseHTTPRequestHandler):
    server: RangeServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        srv = self.server
        srv.requests.append(dict(self.headers.items()))
        content, start = srv.content, self._range_start()
        headers = {
            "ETag": srv.etag,
            "Last-Modified": "Wed, 02 Dec 2026 10:00:00 GMT",
            "Accept-Ranges": "bytes",
        }
        if srv.misbehave == "always-206":
            start = 0
        if srv.misbehave == "ignore-start" and start is not None:
            start = 0
        if start is None:
            status, body = 200, content
        else:
            status, body = 206, content[start:]
            headers["Content-Range"] = f"bytes {start}-{len(content) - 1}/{len(content)}"
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        cut, srv.cut_at = srv.cut_at, None
        payload = body if cut is None else body[:cut]
        self.wfile.write(payload)
        self.wfile.flush()
        srv.sent.append(len(payload))
        if cut is not None:
            self.close_connection = True
            if srv.after_cut is not None:
                (srv.content, srv.etag), srv.after_cut = srv.after_cut, None
            if srv.stall:
                srv.release.wait(60)

    def _range_start(self) -> int | None:
        match = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range", ""))
        if match is None:
            return None
        if_range = self.headers.get("If-Range")
        if if_range is not None and if_range != self.server.etag:
            return None  # the file changed: the whole of it, with a 200
        start = int(match.group(1))
        return start if start < len(self.server.content) else None
