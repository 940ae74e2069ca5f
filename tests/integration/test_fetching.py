"""One download attempt against real local HTTP(S) servers (the original's download_test.go,
ported, plus the limits it lacked: total deadline, redirect cap, size cap)."""

from __future__ import annotations

import gzip
import http.server
import os
import shutil
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

from downloader.errors import DownloadError, Interrupted
from downloader.fetching import mime
from downloader.fetching.download import MAX_CLIENTS, Fetcher, FetchLimits
from downloader.fetching.outbound import PERMISSIVE, Outbound

pytestmark = pytest.mark.integration

DATA = Path(__file__).parent.parent / "data"
Handler = Callable[[http.server.BaseHTTPRequestHandler], None]


class Server:
    """A threaded 127.0.0.1 server whose GET answers are plain functions of the request."""

    def __init__(self, routes: dict[str, Handler], tls: ssl.SSLContext | None = None) -> None:
        self.routes = routes
        self.seen: list[dict[str, str]] = []
        owner = self

        class H(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                owner.seen.append(dict(self.headers.items()))
                route = owner.routes.get(self.path.split("?")[0])
                if route is None:
                    self.send_error(404)
                    return
                route(self)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.httpd.daemon_threads = True
        if tls is not None:
            self.httpd.socket = tls.wrap_socket(self.httpd.socket, server_side=True)
        self.scheme = "https" if tls else "http"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def url(self, path: str) -> str:
        return f"{self.scheme}://127.0.0.1:{self.httpd.server_address[1]}{path}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def send(body: bytes, status: int = 200, headers: dict[str, str] | None = None) -> Handler:
    def handler(h: http.server.BaseHTTPRequestHandler) -> None:
        h.send_response(status)
        for k, v in (headers or {}).items():
            h.send_header(k, v)
        if "Content-Length" not in (headers or {}):
            h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        h.wfile.write(body)

    return handler


def trickle(body: bytes, pause: float) -> Handler:
    def handler(h: http.server.BaseHTTPRequestHandler) -> None:
        h.send_response(200)
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        for i in range(0, len(body), 100):
            try:
                h.wfile.write(body[i : i + 100])
                h.wfile.flush()
            except OSError:
                return
            time.sleep(pause)

    return handler


PNG = (DATA / "tiny.png").read_bytes()
JPEG = (DATA / "sample-1.jpg").read_bytes()


@pytest.fixture
def server() -> Iterator[Server]:
    routes: dict[str, Handler] = {
        "/tiny.png": send(PNG, headers={"Content-Type": "image/png"}),
        "/sample.jpg": send(JPEG),
        "/404": send(b"nope", 404),
        "/500": send(b"oops", 500),
        "/429": send(b"slow down", 429),
        "/204": send(b"", 204),
        "/304": send(b"", 304),
        "/eof": send(b"", headers={"Content-Length": "42", "Connection": "close"}),
        "/gzip": send(gzip.compress(JPEG), headers={"Content-Encoding": "gzip"}),
        "/slow": trickle(JPEG, 0.05),
        "/big": send(b"x" * 200_000),
    }
    srv = Server(routes)
    srv.routes["/loop"] = send(b"", 302, {"Location": srv.url("/loop")})
    srv.routes["/redirect"] = send(b"", 302, {"Location": srv.url("/tiny.png")})
    yield srv
    srv.close()


@pytest.fixture
def fetcher() -> Iterator[Fetcher]:
    f = Fetcher(
        FetchLimits(connect_timeout=2, total_timeout=10, max_redirects=3, max_bytes=100_000),
        {"User-Agent": "Downloader-Agent", "Accept": "*/*"},
        pool_size=4,
        outbound=Outbound(PERMISSIVE),  # the servers are on 127.0.0.1 (tests/integration/test_outbound.py)
    )
    yield f
    f.close()


def fetch(
    fetcher: Fetcher,
    url: str,
    tmp_path: Path,
    *,
    pattern: str = "",
    sniff: bool = False,
    headers: dict[str, str] | None = None,
    timeout: float = 0,
    cancelled: threading.Event | None = None,
    sync: bool = True,
):
    return fetcher.fetch(
        job_id="AbCdEfGhIjKlMn",
        url=url,
        proxy="",
        job_headers=headers,
        timeout=timeout,
        tmp_dir=tmp_path,
        sniff=sniff or bool(pattern),
        mime_pattern=mime.parse_pattern(pattern) if pattern else None,
        cancelled=cancelled or threading.Event(),
        sync=sync,
    )


def error_of(call: Callable[[], object]) -> DownloadError:
    with pytest.raises(DownloadError) as info:
        call()
    return info.value


def test_a_download_streams_to_the_tmp_file(fetcher: Fetcher, server: Server, tmp_path: Path) -> None:
    got = fetch(fetcher, server.url("/tiny.png"), tmp_path, pattern="image/png")
    assert got.path == tmp_path / "AbCdEfGhIjKlMn.tmp"
    assert got.path.read_bytes() == PNG and got.mime_type == "image/png" and got.response_code == 200


def test_default_headers_are_sent_and_job_headers_override_them(
    fetcher: Fetcher, server: Server, tmp_path: Path
) -> None:
    fetch(fetcher, server.url("/tiny.png"), tmp_path)
    fetch(fetcher, server.url("/tiny.png"), tmp_path, headers={"user-agent": "DL-Agent v1.0", "X-Job": "1"})
    first, second = ({k.lower(): v for k, v in seen.items()} for seen in server.seen)
    assert first["user-agent"] == "Downloader-Agent" and first["accept"] == "*/*"
    assert second["user-agent"] == "DL-Agent v1.0" and second["accept"] == "*/*" and second["x-job"] == "1"
    assert "python-requests" not in str(server.seen)


def test_gzip_is_decoded_unless_the_job_chose_its_encoding(
    fetcher: Fetcher, server: Server, tmp_path: Path
) -> None:
    assert fetch(fetcher, server.url("/gzip"), tmp_path).path.read_bytes() == JPEG
    raw = fetch(fetcher, server.url("/gzip"), tmp_path, headers={"Accept-Encoding": "gzip"})
    stored = raw.path.read_bytes()
    assert stored != JPEG and gzip.decompress(stored) == JPEG  # kept as the server sent it


@pytest.mark.parametrize("sync", [True, False], ids=["sync", "no-sync"])
def test_a_whole_download_is_synced_to_disk_only_when_asked(
    fetcher: Fetcher, server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sync: bool
) -> None:
    synced: list[int] = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real(fd))[1])

    fetched = fetch(fetcher, server.url("/sample.jpg"), tmp_path, sync=sync)

    assert fetched.path.read_bytes() == JPEG
    assert len(synced) == (1 if sync else 0)


def test_not_found_is_terminal(fetcher: Fetcher, server: Server, tmp_path: Path) -> None:
    err = error_of(lambda: fetch(fetcher, server.url("/404"), tmp_path))
    assert (err.retriable, err.internal, err.response_code) == (False, False, 404)
    assert "Received status code 404 Not Found" in str(err)
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("path,code", [("/500", 500), ("/429", 429)])
def test_server_errors_and_throttling_are_retriable(
    fetcher: Fetcher, server: Server, tmp_path: Path, path: str, code: int
) -> None:
    err = error_of(lambda: fetch(fetcher, server.url(path), tmp_path))
    assert err.retriable and not err.internal and err.response_code == code


@pytest.mark.parametrize("path", ["/204", "/304"])
def test_answers_without_content_are_failures_not_empty_files(
    fetcher: Fetcher, server: Server, tmp_path: Path, path: str
) -> None:
    err = error_of(lambda: fetch(fetcher, server.url(path), tmp_path))
    assert not err.retriable and "Received status code" in str(err)


def test_redirects_are_followed_up_to_the_cap(fetcher: Fetcher, server: Server, tmp_path: Path) -> None:
    assert fetch(fetcher, server.url("/redirect"), tmp_path).path.read_bytes() == PNG
    err = error_of(lambda: fetch(fetcher, server.url("/loop"), tmp_path))
    assert err.phase == "performing request" and "redirect" in str(err).lower()


def test_urls_and_redirect_targets_are_prepared_as_before(
    fetcher: Fetcher, server: Server, tmp_path: Path
) -> None:
    """As requests prepared them: scheme and host lower-cased, spaces and non-ASCII quoted,
    a Location's fragment kept; `final_url` is the URL as prepared."""
    server.routes["/a%20b"] = send(PNG)
    server.routes["/to-frag"] = send(b"", 302, {"Location": "/a b#part"})
    url = server.url("/a b").replace("http://127.0.0.1", "HTTP://127.0.0.1")
    assert fetch(fetcher, url, tmp_path).final_url == server.url("/a%20b")
    assert fetch(fetcher, server.url("/to-frag"), tmp_path).final_url == server.url("/a%20b#part")
    got = fetch(fetcher, server.url("/a b?q=é"), tmp_path)
    assert got.final_url == server.url("/a%20b?q=%C3%A9") and got.path.read_bytes() == PNG


def test_a_cut_body_is_an_unexpected_eof(fetcher: Fetcher, server: Server, tmp_path: Path) -> None:
    err = error_of(lambda: fetch(fetcher, server.url("/eof"), tmp_path, pattern="type/missmatch"))
    assert err.retriable and "unexpected EOF" in str(err)  # the read error wins over the mime check


def test_mime_mismatch_is_terminal(fetcher: Fetcher, server: Server, tmp_path: Path) -> None:
    err = error_of(lambda: fetch(fetcher, server.url("/tiny.png"), tmp_path, pattern="image/jpeg"))
    assert not err.retriable and not err.internal and "mime-type" in str(err)
    assert str(err).startswith("Error while validating mime type, Expected mime-type to be (image/jpeg)")


def test_bodies_above_the_size_cap_fail_terminally(fetcher: Fetcher, server: Server, tmp_path: Path) -> None:
    err = error_of(lambda: fetch(fetcher, server.url("/big"), tmp_path))
    assert not err.retriable and "413" in str(err)
    assert not list(tmp_path.iterdir())


def test_the_total_deadline_bounds_a_trickling_body(fetcher: Fetcher, server: Server, tmp_path: Path) -> None:
    started = time.monotonic()
    err = error_of(lambda: fetch(fetcher, server.url("/slow"), tmp_path, timeout=1))
    assert err.retriable and "timeout" in str(err)
    assert time.monotonic() - started < 5


def test_a_cancelled_attempt_is_an_interruption(fetcher: Fetcher, server: Server, tmp_path: Path) -> None:
    cancelled = threading.Event()
    threading.Timer(0.3, cancelled.set).start()
    with pytest.raises(Interrupted):
        fetch(fetcher, server.url("/slow"), tmp_path, cancelled=cancelled)


def test_the_watchdog_unblocks_a_stalled_read(fetcher: Fetcher, tmp_path: Path) -> None:
    def stall(h: http.server.BaseHTTPRequestHandler) -> None:
        h.send_response(200)
        h.send_header("Content-Length", "1000")
        h.end_headers()
        h.wfile.write(b"x" * 10)
        h.wfile.flush()
        time.sleep(8)

    srv = Server({"/stall": stall})
    cancelled = threading.Event()
    stop = threading.Event()

    def watchdog() -> None:
        while not stop.wait(0.1):
            fetcher.enforce_deadlines()

    threading.Thread(target=watchdog, daemon=True).start()
    threading.Timer(0.5, cancelled.set).start()
    started = time.monotonic()
    try:
        with pytest.raises(Interrupted):
            fetch(fetcher, srv.url("/stall"), tmp_path, cancelled=cancelled)
        assert time.monotonic() - started < 3
    finally:
        stop.set()
        srv.close()


def test_connection_refused_is_retriable(fetcher: Fetcher, tmp_path: Path) -> None:
    err = error_of(lambda: fetch(fetcher, "http://127.0.0.1:9/x", tmp_path))
    assert err.retriable and err.phase == "performing request" and err.response_code == 0


@pytest.mark.parametrize("url", ["ftp://127.0.0.1/x", "/just/a/path"])
def test_urls_requests_cannot_fetch_fail_terminally(fetcher: Fetcher, tmp_path: Path, url: str) -> None:
    err = error_of(lambda: fetch(fetcher, url, tmp_path))
    assert not err.retriable and err.phase == "creating request"


@pytest.fixture(scope="module")
def self_signed(tmp_path_factory: pytest.TempPathFactory) -> ssl.SSLContext:
    openssl = shutil.which("openssl")
    assert openssl, "openssl is needed to make a self-signed certificate"
    d = tmp_path_factory.mktemp("tls")
    subprocess.run(
        [
            openssl,
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-keyout",
            str(d / "key.pem"),
            "-out",
            str(d / "cert.pem"),
        ],
        check=True,
        capture_output=True,
    )
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(d / "cert.pem", d / "key.pem")
    return ctx


def test_an_untrusted_certificate_is_a_terminal_tls_error(
    fetcher: Fetcher, self_signed: ssl.SSLContext, tmp_path: Path
) -> None:
    srv = Server({"/tiny.png": send(PNG)}, tls=self_signed)
    try:
        err = error_of(lambda: fetch(fetcher, srv.url("/tiny.png"), tmp_path))
    finally:
        srv.close()
    assert not err.retriable and not err.internal and "TLS Error occured" in str(err)


def test_tls_in_a_url_is_not_mistaken_for_a_tls_error(fetcher: Fetcher, tmp_path: Path) -> None:
    err = error_of(lambda: fetch(fetcher, "http://127.0.0.1:9/tls/x509.png", tmp_path))
    assert err.retriable and "TLS Error" not in str(err)  # bug 10.1.5 of the original


def test_the_aggregations_proxy_carries_the_request(fetcher: Fetcher, tmp_path: Path) -> None:
    """TestProxy, for real: the request goes to the proxy in absolute form, not to the origin."""
    asked: list[str] = []

    def proxy(h: http.server.BaseHTTPRequestHandler) -> None:
        asked.append(h.path)
        send(PNG)(h)

    srv = Server({})
    srv.routes = _AnyPath(proxy)  # a forward proxy sees full URLs as paths
    try:
        got = fetcher.fetch(job_id="AbCdEfGhIjKlMn", url="http://origin.invalid/a.png", proxy=srv.url(""),
                            job_headers=None, timeout=0, tmp_dir=tmp_path, sniff=False, mime_pattern=None,
                            cancelled=threading.Event())  # fmt: skip
    finally:
        srv.close()
    assert asked == ["http://origin.invalid/a.png"]
    assert got.path.read_bytes() == PNG


class _AnyPath(dict[str, Handler]):
    def __init__(self, handler: Handler) -> None:
        super().__init__()
        self.handler = handler

    def get(self, key: str, default: object = None) -> Handler:  # type: ignore[override]
        return self.handler


# --- one client per proxy, the most recently used only (issue 12, item 5) --------------------


def proxy_connections(port: int) -> int:
    """Our open TCP connections to 127.0.0.1:`port` (the client ends, not the server's)."""
    return sum(
        1
        for c in psutil.Process().net_connections(kind="tcp")
        if c.raddr and c.raddr.port == port and c.status == psutil.CONN_ESTABLISHED
    )


def via(fetcher: Fetcher, proxy: str, url: str, tmp_path: Path, job_id: str) -> bytes:
    got = fetcher.fetch(job_id=job_id, url=url, proxy=proxy, job_headers=None, timeout=0, tmp_dir=tmp_path,
                        sniff=False, mime_pattern=None, cancelled=threading.Event())  # fmt: skip
    return got.path.read_bytes()


def test_clients_of_many_proxies_stay_bounded_and_a_download_in_flight_keeps_its_own(
    fetcher: Fetcher, tmp_path: Path
) -> None:
    """Each distinct aggr_proxy gets a client whose pools keep idle connections open. Jobs
    may name any number of proxies: only the MAX_CLIENTS used last are kept, and one pushed
    out while a download still reads through it is closed only after that download."""
    slow_body = bytes(range(256)) * 40
    half_sent = threading.Event()
    release = threading.Event()

    def proxy(h: http.server.BaseHTTPRequestHandler) -> None:
        if not h.path.endswith("/slow"):
            send(PNG)(h)
            return
        h.send_response(200)
        h.send_header("Content-Length", str(len(slow_body)))
        h.end_headers()
        h.wfile.write(slow_body[:1000])
        h.wfile.flush()
        half_sent.set()
        release.wait(30)
        h.wfile.write(slow_body[1000:])

    srv = Server({})
    srv.routes = _AnyPath(proxy)
    srv.httpd.handle_error = lambda *args: None  # type: ignore[method-assign]  # closed idle ones: resets
    port = srv.httpd.server_address[1]

    def proxy_url(n: int) -> str:  # distinct proxies to the one server: a client each
        return f"http://user{n}:pw@127.0.0.1:{port}"

    slow: dict[str, object] = {}

    def download_slowly() -> None:
        try:
            slow["body"] = via(
                fetcher, proxy_url(0), "http://origin.invalid/slow", tmp_path, "SlowSlowSlow00"
            )
        except Exception as exc:
            slow["error"] = exc

    thread = threading.Thread(target=download_slowly)
    try:
        thread.start()
        assert half_sent.wait(10), "the slow download did not start"
        for n in range(1, 3 * MAX_CLIENTS + 1):  # pushes proxy 0's client out, twice over
            assert (
                via(fetcher, proxy_url(n), f"http://origin.invalid/{n}.png", tmp_path, f"Fast{n:010d}") == PNG
            )
            assert fetcher.open_clients() <= MAX_CLIENTS + 1
        assert proxy_connections(port) <= MAX_CLIENTS + 1  # the kept ones, and the slow one's
        release.set()
        thread.join(30)
    finally:
        release.set()
        srv.close()
    assert slow == {"body": slow_body}, slow  # its client was not closed under it
    assert fetcher.open_clients() == MAX_CLIENTS  # ...and was closed after it
    assert proxy_connections(port) <= MAX_CLIENTS
