"""Issue 12 at the API's door, on a real Redis: stored data the API cannot read is a 409 with
what is wrong (never 5xx); API keys close every route, page and file tree but the documented
public ones; what can never succeed is refused at POST /download; /files/ answers with the
sniffed type; a SOCKS proxy met at fetch time fails once, clearly."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from starlette.routing import Mount, Route
from starlette.websockets import WebSocketDisconnect
from support.procs import Stack, aggr_id, free_port, job_body
from support.servers import CallbackServer, FileServer, RawServer

from downloader.api.main import create_app
from downloader.api.routes import callbacks as callback_routes
from downloader.api.routes import downloads, health, jobs, prometheus, stats, ui
from downloader.config.settings import Settings
from downloader.store import keys

pytestmark = pytest.mark.integration

DATA = Path(__file__).resolve().parent.parent / "data"
VALID = {
    "url": "http://127.0.0.1:9/a.png",
    "aggr_id": "hardening",
    "aggr_limit": 3,
    "callback_url": "http://127.0.0.1:9/cb",
}
KEY, SCOPED = "door-key-1", "door-key-2"
API_KEYS = f"{KEY}, {SCOPED}=shop-"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def client_for(redis_url: str, **settings: object) -> TestClient:
    serve_files = bool(settings.pop("serve_files", False))
    app = create_app(Settings(redis_url=redis_url, **settings), serve_files=serve_files)  # type: ignore[arg-type]
    return TestClient(app)


@pytest.fixture
def api(redis_url: str) -> Iterator[TestClient]:
    with client_for(redis_url) as client:
        yield client


def post_job(client: TestClient, **fields: object) -> str:
    resp = client.post("/download", content=json.dumps({**VALID, **fields}), headers=bearer(KEY))
    assert resp.status_code == 201, resp.text
    return str(resp.json()["id"])


# --- item 7: stored data that cannot be read is a 409, never a 5xx -------------------------


def test_a_job_hash_with_an_unknown_field_is_a_409_naming_the_field(
    api: TestClient, rdb: redis.Redis
) -> None:
    job_id = post_job(api)
    rdb.hset(keys.job(job_id), "Bogus", "x")  # a field the original's Job struct never had
    resp = api.get(f"/jobs/{job_id}")
    assert resp.status_code == 409
    assert resp.headers["content-type"].startswith("text/plain")
    assert (
        resp.text
        == f"Job {job_id} cannot be read from Redis: Field Bogus with value x was not found in Job struct\n"
    )
    assert rdb.hget(keys.job(job_id), "Bogus") == "x"  # left as it is, for inspection


CORRUPT_JOBS = {
    "bad-number": lambda db, job_id: db.hset(keys.job(job_id), "DownloadCount", "many"),
    "bad-state": lambda db, job_id: db.hset(keys.job(job_id), "DownloadState", "Exploded"),
    "bad-headers": lambda db, job_id: db.hset(keys.job(job_id), "RequestHeaders", "{"),
    "bad-options": lambda db, job_id: db.set(keys.job_options(job_id), "{not json"),
    "job-of-another-type": lambda db, job_id: (db.delete(keys.job(job_id)), db.set(keys.job(job_id), "x")),
    "errors-of-another-type": lambda db, job_id: db.set(keys.job_errors(job_id), "x"),
    "meta-of-another-type": lambda db, job_id: db.set(keys.job_meta(job_id), "x"),
    "delivered-record-unreadable": lambda db, job_id: (
        db.delete(keys.job(job_id)),
        db.hset(keys.job_meta(job_id), mapping={"Delivered": "{not json", "DeliveredAt": "1"}),
    ),
    "delivered-record-of-a-bad-job": lambda db, job_id: (
        db.delete(keys.job(job_id)),
        db.hset(
            keys.job_meta(job_id), mapping={"Delivered": '{"ID": "x", "Bogus": "1"}', "DeliveredAt": "1"}
        ),
    ),
}


@pytest.mark.parametrize("corrupt", CORRUPT_JOBS.values(), ids=CORRUPT_JOBS.keys())
def test_no_unreadable_job_makes_a_route_answer_5xx(
    api: TestClient, rdb: redis.Redis, corrupt: object
) -> None:
    job_id = post_job(api)
    rdb.hset(keys.job(job_id), "CallbackState", "Failed")
    corrupt(rdb, job_id)  # type: ignore[operator]
    resp = api.get(f"/jobs/{job_id}")
    assert resp.status_code == 409, resp.text
    assert resp.text.startswith(f"Job {job_id} cannot be read from Redis: "), resp.text
    # /retry reads the hash too: the original's 400 or a reschedule, or the 409; never 5xx
    retried = api.post(f"/retry/{job_id}")
    assert retried.status_code in (204, 400, 409), retried.text
    if retried.status_code == 409:
        assert retried.text == "Stored data cannot be read from Redis: a key holds the wrong kind of value\n"


def test_a_key_scoped_retry_of_an_unreadable_job_is_a_409(redis_url: str, rdb: redis.Redis) -> None:
    with client_for(redis_url, api_keys=API_KEYS) as client:
        job_id = post_job(client, aggr_id="shop-1")
        rdb.delete(keys.job(job_id))
        rdb.set(keys.job(job_id), "x")
        resp = client.post(f"/retry/{job_id}", headers=bearer(SCOPED))
        assert resp.status_code == 409 and "wrong kind of value" in resp.text


def test_a_scoped_key_cannot_retry_an_undecodable_job_of_another_aggregation(
    redis_url: str, rdb: redis.Redis
) -> None:
    with client_for(redis_url, api_keys=API_KEYS) as client:
        other = post_job(client, aggr_id="other-1")
        rdb.hset(keys.job(other), mapping={"CallbackState": "Failed", "Bogus": "x"})
        resp = client.post(f"/retry/{other}", headers=bearer(SCOPED))
        assert resp.status_code == 403 and resp.text == "API key not allowed for aggregation other-1\n"
        assert rdb.hget(keys.job(other), "CallbackState") == "Failed"  # not rescheduled
        own = post_job(client, aggr_id="shop-2")
        rdb.hset(keys.job(own), mapping={"CallbackState": "Failed", "Bogus": "x"})
        assert client.post(f"/retry/{own}", headers=bearer(SCOPED)).status_code == 204


def test_unreadable_times_and_counts_of_a_job_read_as_unknown(api: TestClient, rdb: redis.Redis) -> None:
    job_id = post_job(api)
    rdb.hset(
        keys.job_meta(job_id),
        mapping={
            "Crashes": "lots",
            "CreatedAt": "inf",
            "StartedAt": "1e300",
            "UpdatedAt": "nan",
            "FinishedAt": "²",
        },
    )
    rdb.hset(keys.job(job_id), mapping={"DownloadState": "Success", "DownloadURL": "http://[unclosed"})
    resp = api.get(f"/jobs/{job_id}")
    assert resp.status_code == 200, resp.text
    view = resp.json()
    assert view["crashes"] == 0 and view["download"]["download_url"] == ""
    assert [view[k] for k in ("created_at", "started_at", "updated_at", "finished_at")] == [None] * 4


def test_stats_and_the_aggregation_list_of_another_type_are_409(api: TestClient, rdb: redis.Redis) -> None:
    rdb.hset(keys.stats("processor"), "not", "a string")
    resp = api.get("/stats/processor")
    assert resp.status_code == 409
    assert resp.text == "Stored data cannot be read from Redis: a key holds the wrong kind of value\n"
    rdb.set(keys.AGGREGATIONS, "not a set")
    assert api.get("/dashboard/aggregations").status_code == 409
    assert api.get("/ui/overview").status_code == 409
    assert api.get("/metrics").status_code == 200  # counts the failed refresh instead


def test_the_dashboard_reads_around_unreadable_records(api: TestClient, rdb: redis.Redis) -> None:
    now = time.time()
    rdb.zadd(
        keys.instances("worker"),
        {json.dumps({"id": "w", "host": "h", "pid": 1, "version": "v", "started": "inf"}): now + 60},
    )
    rdb.zadd(keys.instances("api"), {"not json at all": now + 60})
    failure = {"id": "J1", "aggr_id": "a", "url": "u", "error": "e", "code": "404", "at": 1e300}
    rdb.lpush(keys.RECENT_FAILURES, json.dumps(failure), "not json", json.dumps({"id": "J2"}))
    resp = api.get("/ui/overview")
    assert resp.status_code == 200, resp.text
    overview = resp.json()
    worker = overview["instances"]["worker"][0]
    assert (worker["started_at"], worker["uptime_seconds"]) == (None, 0.0)
    assert [(f["job_id"], f["at"]) for f in overview["recent_failures"]] == [("J1", None)]
    # a per-minute count is a number or the overview says which data it cannot read
    rdb.hset(keys.throughput(int(now // 60)), "ok", "many")
    resp = api.get("/ui/overview")
    assert resp.status_code == 409 and "a per-minute count is not a number" in resp.text


# --- item 9: with API keys, every door but the documented public ones needs a key ------------

#: README, "API keys": the routes that answer without a key.
PUBLIC = {"/hb", "/healthz", "/readyz", "/metrics", "/"}
PUBLIC_PREFIX = "/static/"
STORED = "abc/abcdefghijklmn"


@pytest.fixture
def keyed(redis_url: str, tmp_path: Path) -> Iterator[TestClient]:
    """The app `downloader up` serves (files at /files/), with keys."""
    root = tmp_path / "files"
    (root / "abc").mkdir(parents=True)
    (root / STORED).write_bytes((DATA / "tiny.png").read_bytes())
    with client_for(redis_url, api_keys=API_KEYS, storage_root=root, serve_files=True) as client:
        yield client


#: The routers the app includes (FastAPI lists an included router as one opaque entry).
ROUTERS = (downloads, jobs, callback_routes, stats, health, ui, prometheus)


def doors(client: TestClient) -> list[tuple[str, str]]:
    """(method, path) of every route and mount of the app, with placeholders filled in."""
    app_routes = client.app.routes  # type: ignore[attr-defined]
    included = [r for r in app_routes if not isinstance(r, Route | Mount)]
    assert len(included) == len(ROUTERS), "a router was added: list it in ROUTERS"
    found = []
    for route in [*app_routes, *(r for module in ROUTERS for r in module.router.routes)]:
        if isinstance(route, Mount):
            path = f"{route.path}/{STORED}" if route.path == "/files" else f"{route.path}/dashboard.js"
            found += [("GET", path), ("HEAD", path)]
        elif isinstance(route, APIRoute | Route):
            path = re.sub(r"\{[^}]+\}", "x", route.path)
            found += [(method, path) for method in sorted(route.methods or ())]
    return found


def test_every_route_page_and_file_but_the_public_ones_needs_a_key(keyed: TestClient) -> None:
    checked = doors(keyed)
    paths = {path for _, path in checked}
    # FastAPI's pages and the file tree, which no route dependency guarded
    assert {"/openapi.json", "/docs", "/redoc", "/docs/oauth2-redirect", f"/files/{STORED}"} <= paths
    assert {
        "/ui/overview",
        "/download",
        "/jobs/x",
        "/retry/x",
        "/stats/x",
        "/dashboard/aggregations",
    } <= paths
    closed = 0
    for method, path in checked:
        public = path in PUBLIC or path.startswith(PUBLIC_PREFIX)
        without = keyed.request(method, path)
        wrong = keyed.request(method, path, headers=bearer("not-a-key"))
        with_key = keyed.request(method, path, headers=bearer(KEY))
        assert with_key.status_code != 401, (method, path)
        if public:
            assert without.status_code != 401 and wrong.status_code != 401, (method, path)
            continue
        closed += 1
        assert without.status_code == 401, (method, path, without.status_code)
        assert without.headers["www-authenticate"] == "Bearer"
        if method != "HEAD":
            assert without.text == "Missing API key (Authorization: Bearer <key>)\n", (method, path)
            assert wrong.text == "Invalid API key\n", (method, path)
        assert (
            wrong.status_code == 401 and wrong.headers["www-authenticate"] == 'Bearer error="invalid_token"'
        )
    assert closed >= 30


def test_with_a_key_the_documentation_and_the_files_are_served(keyed: TestClient) -> None:
    doc = keyed.get("/openapi.json", headers=bearer(KEY))
    assert doc.status_code == 200 and "/download" in doc.json()["paths"]
    for page in ("/docs", "/redoc"):
        resp = keyed.get(page, headers=bearer(KEY))
        assert resp.status_code == 200 and "text/html" in resp.headers["content-type"], page
    stored = keyed.get(f"/files/{STORED}", headers=bearer(SCOPED))
    assert stored.status_code == 200 and stored.content == (DATA / "tiny.png").read_bytes()


def test_paths_that_match_nothing_need_a_key_too(keyed: TestClient) -> None:
    for path in ("/nothing-here", "/files/", "/files/abc/missing", "/static/../openapi.json", "/docs/"):
        assert keyed.get(path).status_code == 401, path
    assert keyed.get("/nothing-here", headers=bearer(KEY)).status_code == 404


def test_under_up_the_documentation_and_the_files_need_a_key(stack: Stack, tmp_path: Path) -> None:
    cwd = tmp_path / "here"
    cwd.mkdir()
    port = free_port()
    stack.up(cwd, port, api_keys=API_KEYS)
    (stack.storage_root / "abc").mkdir(parents=True, exist_ok=True)
    (stack.storage_root / STORED).write_bytes((DATA / "tiny.png").read_bytes())
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=15, trust_env=False) as http:
        for path in ("/openapi.json", "/docs", "/redoc", f"/files/{STORED}", "/jobs/x", "/ui/overview"):
            assert http.get(path).status_code == 401, path
            assert http.get(path, headers=bearer(KEY)).status_code in (200, 404), path
        for path in ("/hb", "/healthz", "/readyz", "/metrics", "/", "/static/dashboard.js"):
            assert http.get(path).status_code == 200, path
        stored = http.get(f"/files/{STORED}", headers=bearer(KEY))
        assert stored.status_code == 200 and stored.headers["content-type"] == "image/png"


# --- "Also": /files/ answers with the sniffed type ---------------------------------------


@pytest.mark.parametrize(
    ("name", "expected"),
    [("tiny.png", "image/png"), ("sample-1.jpg", "image/jpeg"), ("tiny.pdf", "application/pdf")],
)
def test_stored_files_are_served_with_their_sniffed_type(
    redis_url: str, tmp_path: Path, name: str, expected: str
) -> None:
    (tmp_path / "abc").mkdir()
    (tmp_path / STORED).write_bytes((DATA / name).read_bytes())
    with client_for(redis_url, storage_root=tmp_path, serve_files=True) as client:
        resp = client.get(f"/files/{STORED}")
        assert resp.status_code == 200 and resp.content == (DATA / name).read_bytes()
        assert resp.headers["content-type"] == expected
        # a stranger's file served from the dashboard's origin: no scripts, no origin of ours
        assert resp.headers["content-security-policy"] == "sandbox"
        assert resp.headers["x-content-type-options"] == "nosniff"
        head = client.head(f"/files/{STORED}")
        assert head.status_code == 200 and head.headers["content-type"] == expected


def test_a_stored_html_page_is_sandboxed(redis_url: str, tmp_path: Path) -> None:
    (tmp_path / "abc").mkdir()
    (tmp_path / STORED).write_bytes(b"<!DOCTYPE html><html><script>alert(1)</script></html>")
    with client_for(redis_url, storage_root=tmp_path, serve_files=True) as client:
        resp = client.get(f"/files/{STORED}")
        assert resp.headers["content-type"] == "text/html"
        assert resp.headers["content-security-policy"] == "sandbox"


# --- item 6 and "Also": what can never succeed is a 400 at POST /download -------------------

REFUSED = [
    ("socks5-proxy", {"aggr_proxy": "socks5://127.0.0.1:1080"}, "Aggregation", 'Aggregation proxy scheme "socks5" is not supported: SOCKS proxies are not available, use an http:// or https:// proxy'),
    ("socks5h-proxy", {"aggr_proxy": "socks5h://user:pw@127.0.0.1:1080"}, "Aggregation", 'Aggregation proxy scheme "socks5h" is not supported'),
    ("unknown-callback-type", {"callback_url": None, "callback_type": "pigeon", "callback_dst": "loft"}, "Job", 'Unknown callback_type "pigeon": must be one of "http", "kafka", "sqs"'),
    ("ftp-url", {"url": "ftp://example.org/a.png"}, "Job", 'URL scheme must be http or https, was "ftp"'),
    ("file-url", {"url": "file:///etc/passwd"}, "Job", 'URL scheme must be http or https, was "file"'),
    ("mime-not-a-pattern-list", {"mime_type": "jpeg png"}, "Job", 'Invalid MimeType Pattern, "jpeg png": each item of the comma-separated list is a type/subtype pattern such as image/jpeg or image/*'),
]  # fmt: skip


@pytest.mark.parametrize(
    ("fields", "target", "reason"), [c[1:] for c in REFUSED], ids=[c[0] for c in REFUSED]
)
def test_what_can_never_succeed_is_a_400_and_stores_nothing(
    api: TestClient, rdb: redis.Redis, fields: dict[str, object], target: str, reason: str
) -> None:
    body = body_of(**fields)
    resp = api.post("/download", content=body)
    assert resp.status_code == 400
    assert resp.headers["content-type"].startswith("text/plain")
    prefix = f"Error unmarshalling body '{body}' to {target}: "
    assert resp.text.startswith(prefix + reason), resp.text
    assert "pw" not in resp.text[len(prefix) :]  # the reason never repeats a proxy's credentials
    assert rdb.keys("job:*") == [] and rdb.keys("aggr:*") == []


ORIGINAL_REFUSALS = [
    ({"url": "ftp://x/%zz", "aggr_proxy": "socks5://127.0.0.1:1"}, 'Job: Could not parse URL: parse "ftp://x/%zz": invalid URL escape "%zz"'),
    ({"callback_url": None, "callback_type": "pigeon", "callback_dst": "x", "mime_type": "[]a]"}, 'Job: Invalid MimeType Pattern, "[]a]"'),
    ({"url": "file:///x", "aggr_limit": 0}, "Aggregation: Aggregation limit must be greater than 0"),
]  # fmt: skip


@pytest.mark.parametrize(("fields", "reason"), ORIGINAL_REFUSALS)
def test_what_the_original_refused_keeps_the_originals_text(
    api: TestClient, fields: dict[str, object], reason: str
) -> None:
    body = body_of(**fields)
    resp = api.post("/download", content=body)
    assert resp.status_code == 400 and resp.text == f"Error unmarshalling body '{body}' to {reason}\n"


def body_of(**fields: object) -> str:
    """VALID with `fields` over it; a None value drops the field."""
    return json.dumps({k: v for k, v in {**VALID, **fields}.items() if v is not None})


# --- item 6: a SOCKS proxy met at fetch time (stored by the original) fails once, clearly -----


def test_a_socks_proxy_stored_by_the_original_fails_the_job_once_with_a_clear_error(
    stack: Stack, files: FileServer, callbacks: CallbackServer, rdb: redis.Redis
) -> None:
    proxy = RawServer(lambda _conn: None)  # where a SOCKS proxy would be: counts connections
    try:
        aggr = aggr_id("socks")
        # The aggregation as the Go service wrote it; a POST keeps an existing one's proxy.
        rdb.hset(
            keys.aggregation(aggr),
            mapping={
                "ID": aggr,
                "Limit": "4",
                "Proxy": f"socks5://u:secret@127.0.0.1:{proxy.port}",
                "ExpiresAt": "",
            },
        )
        api, _, _ = stack.all_three()
        job_id = api.post_job(job_body(files.url("tiny.png"), aggr, callbacks.url, max_retries=3))
        payload = callbacks.wait_for(job_id, timeout=30)
        assert payload["success"] is False
        assert payload["error"] == (
            "Error while creating request, socks5 proxies are not supported (SOCKS is not available): "
            "use an http:// or https:// proxy, retriable: false, internal: false"
        )
        assert payload["attempts"] == 1  # final at once: not retried 3 times
        assert "secret" not in payload["error"]
        assert proxy.connections == 0 and files.seen() == []
    finally:
        proxy.close()


def test_a_websocket_without_a_key_is_closed_before_it_is_accepted(keyed: TestClient) -> None:
    with pytest.raises(WebSocketDisconnect) as closed, keyed.websocket_connect("/anything"):
        pass
    assert (closed.value.code, closed.value.reason) == (1008, "Missing API key (Authorization: Bearer <key>)")
