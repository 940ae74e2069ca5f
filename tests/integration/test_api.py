"""The API app in-process on a real Redis: the original's answers (Appendix A) and the new routes."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator

import pytest
import redis
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient

from downloader.api.main import create_app
from downloader.api.routes import callbacks, downloads, health, jobs, stats
from downloader.config.apikeys import InvalidApiKeys
from downloader.config.settings import Settings

pytestmark = pytest.mark.integration

VALID = {
    "url": "http://127.0.0.1:9/a.png",
    "aggr_id": "api-test",
    "aggr_limit": 3,
    "callback_url": "http://127.0.0.1:9/cb",
}


def client_for(redis_url: str, **settings: object) -> TestClient:
    return TestClient(create_app(Settings(redis_url=redis_url, **settings)))  # type: ignore[arg-type]


@pytest.fixture
def api(redis_url: str) -> Iterator[TestClient]:
    with client_for(redis_url, max_request_bytes=4096) as client:
        yield client


def test_created_answers_are_json_with_the_originals_bytes(api: TestClient) -> None:
    resp = api.post("/download", content=json.dumps(VALID))
    assert resp.status_code == 201
    assert resp.headers["content-type"] == "application/json"
    job_id = resp.json()["id"]
    assert resp.content == b'{"id":"' + job_id.encode() + b'"}'


def test_errors_are_the_originals_plain_text(api: TestClient) -> None:
    resp = api.post("/download", content=b'{"aggr_id":"x"}')
    assert resp.status_code == 400
    assert resp.headers["content-type"].startswith("text/plain")
    assert resp.headers["x-content-type-options"] == "nosniff"
    assert resp.text == 'Error unmarshalling body \'{"aggr_id":"x"}\' to Job: URL must be a string\n'


def test_aggregation_errors_name_the_aggregation(api: TestClient) -> None:
    resp = api.post("/download", content=json.dumps({**VALID, "aggr_limit": 0}))
    assert resp.status_code == 400
    assert "to Aggregation: Aggregation limit must be greater than 0" in resp.text


def test_bodies_above_the_limit_get_413_and_store_nothing(api: TestClient, rdb: redis.Redis) -> None:
    resp = api.post("/download", content=json.dumps({**VALID, "extra": "x" * 5000}))
    assert resp.status_code == 413
    assert rdb.keys("job:*") == []


def test_a_client_cannot_lock_its_aggregation_with_expires_at(api: TestClient, rdb: redis.Redis) -> None:
    assert api.post("/download", content=json.dumps({**VALID, "expiresAt": "99999999999"})).status_code == 201
    assert rdb.hget("aggr:api-test", "ExpiresAt") == ""


def test_job_status_shows_a_queued_job_and_404_for_unknown_ids(api: TestClient) -> None:
    job_id = api.post("/download", content=json.dumps({**VALID, "max_retries": 4})).json()["id"]
    view = api.get(f"/jobs/{job_id}").json()
    assert view["id"] == job_id and view["state"] == "queued" and view["aggr_id"] == "api-test"
    assert view["download"] == {
        "state": "Pending",
        "attempts": 0,
        "max_retries": 4,
        "response_code": 0,
        "error": "",
        "image_size": "",
        "download_url": "",
        "sha256": "",
        "size": 0,
    }
    assert view["callback"]["destination"] == VALID["callback_url"]
    assert view["created_at"] and view["next_attempt_at"] and view["lease_expires_at"] is None
    assert api.get("/jobs/NoSuchJob12345").status_code == 404


def test_retry_of_the_empty_id_names_it_retry_like_the_original(api: TestClient) -> None:
    resp = api.post("/retry/")
    assert resp.status_code == 400 and resp.text == "Error fetching retry from Redis: Not Found\n"
    assert api.get("/retry/abc").status_code == 405


def test_stats_of_a_silent_component_are_404(api: TestClient) -> None:
    resp = api.get("/stats/processor")
    assert resp.status_code == 404 and resp.text == "Could not find stats for entity processor\n"


def test_download_with_a_trailing_slash_is_not_found(api: TestClient) -> None:
    assert api.post("/download/", content=json.dumps(VALID)).status_code == 404


def test_the_openapi_document_lists_the_routes(api: TestClient) -> None:
    doc = api.get("/openapi.json").json()
    for path in ("/download", "/jobs/{job_id}", "/retry/{path}", "/stats/{component}", "/healthz", "/readyz"):
        assert path in doc["paths"], path
    body = doc["paths"]["/download"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert set(body["required"]) == {"url", "aggr_id", "aggr_limit"}


def test_health_and_readiness(api: TestClient) -> None:
    assert api.get("/healthz").json() == {"status": "ok"}
    assert api.get("/readyz").status_code == 200


def test_readiness_fails_while_redis_is_unreachable() -> None:
    with client_for("redis://127.0.0.1:9/0") as client:
        resp = client.get("/readyz")
        assert resp.status_code == 503 and resp.json()["status"] == "unavailable"
        assert client.get("/healthz").status_code == 200
        posted = client.post("/download", content=json.dumps(VALID))
        assert posted.status_code == 500 and posted.text.startswith("Error queueing Job{")


def test_a_chunked_body_without_content_length_is_limited_too(api: TestClient, rdb: redis.Redis) -> None:
    def chunks() -> Iterator[bytes]:
        yield json.dumps(VALID)[:-1].encode()
        for _ in range(10):
            yield b', "extra": "' + b"x" * 500 + b'"'
        yield b"}"

    resp = api.post("/download", content=chunks())
    assert resp.request.headers.get("transfer-encoding") == "chunked"
    assert "content-length" not in resp.request.headers
    assert resp.status_code == 413 and resp.text == "Request body larger than 4096 bytes\n"
    assert rdb.keys("job:*") == []


def test_nan_and_infinity_are_not_json(api: TestClient) -> None:
    resp = api.post("/download", content=b'{"url":"http://127.0.0.1:9/a","aggr_limit":NaN}')
    assert resp.status_code == 400
    assert resp.text.endswith("to Job: invalid character 'N' looking for beginning of value\n")


def test_max_size_may_lower_the_download_cap_but_not_raise_it(redis_url: str) -> None:
    with client_for(redis_url, max_download_bytes=1000) as client:
        ok = client.post("/download", content=json.dumps({**VALID, "max_size": 1000}))
        assert ok.status_code == 201
        resp = client.post("/download", content=json.dumps({**VALID, "max_size": 1001}))
        assert resp.status_code == 400 and resp.text.endswith("to Job: max_size must not exceed 1000\n")


# --- API keys ---------------------------------------------------------------------------

ADMIN, SHOP = "admin-key-1", "shop-key-2"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def keyed(redis_url: str) -> Iterator[TestClient]:
    with client_for(redis_url, api_keys=f"{ADMIN}, {SHOP}=shop-|partner-") as client:
        yield client


def post_job(client: TestClient, token: str, aggr_id: str) -> str:
    resp = client.post("/download", content=json.dumps({**VALID, "aggr_id": aggr_id}), headers=bearer(token))
    assert resp.status_code == 201, resp.text
    return str(resp.json()["id"])


@pytest.mark.parametrize(
    ("headers", "text", "challenge"),
    [
        ({}, "Missing API key (Authorization: Bearer <key>)\n", "Bearer"),
        ({"Authorization": "Basic YWRtaW4="}, "Missing API key (Authorization: Bearer <key>)\n", "Bearer"),
        ({"Authorization": "Bearer "}, "Missing API key (Authorization: Bearer <key>)\n", "Bearer"),
        (bearer("not-a-key"), "Invalid API key\n", 'Bearer error="invalid_token"'),
        (bearer(ADMIN + "x"), "Invalid API key\n", 'Bearer error="invalid_token"'),
    ],
)
def test_without_a_valid_key_the_answer_is_401_plain_text(
    keyed: TestClient, rdb: redis.Redis, headers: dict[str, str], text: str, challenge: str
) -> None:
    resp = keyed.post("/download", content=json.dumps(VALID), headers=headers)
    assert resp.status_code == 401
    assert resp.text == text
    assert resp.headers["www-authenticate"] == challenge
    assert resp.headers["content-type"].startswith("text/plain")
    assert rdb.keys("job:*") == []


def test_the_scheme_is_case_insensitive(keyed: TestClient) -> None:
    resp = keyed.get("/stats/processor", headers={"Authorization": f"bearer {ADMIN}"})
    assert resp.status_code == 404


def test_every_route_but_the_public_ones_needs_a_key(keyed: TestClient) -> None:
    public = {"/hb", "/healthz", "/readyz", "/metrics", "/"}
    checked = 0
    for module in (downloads, jobs, callbacks, stats, health):
        for route in module.router.routes:
            assert isinstance(route, APIRoute)
            if route.path in public:
                continue
            path = route.path.replace("{job_id}", "x").replace("{path:path}", "x").replace("{path}", "x")
            path = path.replace("{component}", "processor")
            for method in route.methods:
                resp = keyed.request(method, path)
                assert resp.status_code == 401, (method, path, resp.status_code)
                checked += 1
    assert checked >= 20
    # FastAPI's own pages too: the README lists no documentation among the public routes
    for page in ("/openapi.json", "/docs", "/redoc"):
        assert keyed.get(page).status_code == 401, page
        assert keyed.get(page, headers=bearer(ADMIN)).status_code == 200, page


def test_probes_and_the_web_page_answer_without_a_key(keyed: TestClient) -> None:
    assert keyed.get("/hb").status_code == 200
    assert keyed.get("/healthz").status_code == 200
    assert keyed.get("/readyz").status_code == 200
    # not there yet (or there, by the time this runs): never closed
    for path in ("/metrics", "/", "/static/app.js"):
        assert keyed.get(path).status_code != 401, path


def test_a_key_with_prefixes_may_only_post_to_its_aggregations(keyed: TestClient, rdb: redis.Redis) -> None:
    post_job(keyed, SHOP, "shop-images")
    post_job(keyed, SHOP, "partner-feed")
    post_job(keyed, ADMIN, "other")
    resp = keyed.post("/download", content=json.dumps({**VALID, "aggr_id": "other-2"}), headers=bearer(SHOP))
    assert resp.status_code == 403 and resp.text == "API key not allowed for aggregation other-2\n"
    assert len(rdb.keys("job:*")) == 3
    # an invalid body is still the original's 400, whoever sends it
    assert keyed.post("/download", content=b"{", headers=bearer(SHOP)).status_code == 400


def test_a_key_with_prefixes_sees_and_retries_only_its_jobs(keyed: TestClient) -> None:
    own, other = post_job(keyed, SHOP, "shop-1"), post_job(keyed, ADMIN, "other")
    assert keyed.get(f"/jobs/{own}", headers=bearer(SHOP)).status_code == 200
    assert keyed.get(f"/jobs/{other}", headers=bearer(SHOP)).status_code == 403
    assert keyed.get(f"/jobs/{other}", headers=bearer(ADMIN)).status_code == 200
    assert keyed.get("/jobs/NoSuchJob12345", headers=bearer(SHOP)).status_code == 404
    resp = keyed.post(f"/retry/{other}", headers=bearer(SHOP))
    assert resp.status_code == 403 and resp.text == "API key not allowed for aggregation other\n"
    # its own job: the original's answer (the callback is not Failed)
    resp = keyed.post(f"/retry/{own}", headers=bearer(SHOP))
    assert resp.status_code == 400 and resp.text.startswith("Error with callback state of the job Job{")
    resp = keyed.post("/retry/NoSuchJob12345", headers=bearer(SHOP))
    assert resp.status_code == 400 and resp.text == "Error fetching NoSuchJob12345 from Redis: Not Found\n"


def test_stats_for_any_key_and_aggregations_filtered_by_its_prefixes(keyed: TestClient) -> None:
    for aggr_id in ("shop-1", "partner-2", "other"):
        post_job(keyed, ADMIN, aggr_id)
    assert keyed.get("/stats/notifier", headers=bearer(SHOP)).status_code == 404

    def names(token: str) -> set[str]:
        resp = keyed.get("/dashboard/aggregations", headers=bearer(token))
        assert resp.status_code == 200
        return {row["name"] for row in resp.json()}

    assert names(SHOP) == {"jobs:shop-1", "jobs:partner-2"}
    assert names(ADMIN) == {"jobs:shop-1", "jobs:partner-2", "jobs:other"}


def test_tokens_never_reach_the_logs_or_the_answers(
    keyed: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    answers = [
        keyed.post("/download", content=json.dumps({**VALID, "aggr_id": "shop-1"}), headers=bearer(SHOP)),
        keyed.post("/download", content=json.dumps({**VALID, "aggr_id": "x"}), headers=bearer(SHOP)),
        keyed.post("/download", content=b"{", headers=bearer(SHOP)),
        keyed.get("/jobs/x", headers=bearer(SHOP)),
        keyed.get("/stats/processor", headers=bearer(SHOP + "-wrong")),
    ]
    assert [a.status_code for a in answers] == [201, 403, 400, 404, 401]
    assert caplog.records, "nothing was logged: the check would prove nothing"
    for secret in (SHOP, ADMIN):
        assert secret not in caplog.text
        for answer in answers:
            assert secret not in answer.text and secret not in str(answer.headers)


def test_unreadable_api_keys_stop_the_app_from_starting(redis_url: str) -> None:
    with pytest.raises(InvalidApiKeys) as info:
        client_for(redis_url, api_keys="good,padded=")
    assert "padded" not in str(info.value) and "good" not in str(info.value)


# --- POST /download ahead of the router (downloads.DownloadFastPath) -------------------------


def without_fast_path(redis_url: str, **settings: object) -> TestClient:
    """The app with POST /download left to FastAPI's router and its documented APIRoute."""
    app = create_app(Settings(redis_url=redis_url, **settings))  # type: ignore[arg-type]
    app.user_middleware = [m for m in app.user_middleware if m.cls is not downloads.DownloadFastPath]
    return TestClient(app)


def answers(client: TestClient) -> list[tuple[int, str, str, str]]:
    """(status, content type, body with the job id masked, challenge) of a set of POSTs."""
    posts = [
        ({**VALID, "aggr_id": "shop-1"}, bearer(SHOP)),
        ({**VALID, "aggr_id": "x"}, bearer(SHOP)),
        ({**VALID, "aggr_id": "x"}, bearer("wrong")),
        ({**VALID, "aggr_id": "x"}, {}),
        ({**VALID, "url": "ftp://x/%zz"}, bearer(ADMIN)),
        ({**VALID, "extra": "x" * 5000}, bearer(ADMIN)),
    ]
    out = []
    for body, headers in posts:
        resp = client.post("/download", content=json.dumps(body), headers=headers)
        text = resp.text
        if resp.status_code == 201:
            assert len(resp.json()["id"]) == 14
            text = text.replace(resp.json()["id"], "<id>")
        out.append(
            (resp.status_code, resp.headers["content-type"], text, resp.headers.get("www-authenticate", ""))
        )
    out.append((client.put("/download", headers=bearer(ADMIN)).status_code, "", "", ""))
    return out


def test_the_fast_path_answers_as_the_documented_route(redis_url: str) -> None:
    keys = {"api_keys": f"{ADMIN}, {SHOP}=shop-", "max_request_bytes": 4096}
    with client_for(redis_url, **keys) as fast, without_fast_path(redis_url, **keys) as routed:
        got = answers(fast)
        assert got == answers(routed)
    assert [a[0] for a in got] == [201, 403, 401, 401, 400, 413, 405]
    assert got[0][1:3] == ("application/json", '{"id":"<id>"}')


def test_the_fast_path_counts_its_requests_under_the_route_template(api: TestClient) -> None:
    def count() -> float:
        for line in api.get("/metrics").text.splitlines():
            if line.startswith(
                'downloader_http_requests_total{method="POST",route="/download",status_class="2xx"}'
            ):
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    before = count()
    assert api.post("/download", content=json.dumps(VALID)).status_code == 201
    assert api.post("/download", content=b"{").status_code == 400
    assert count() == before + 1


def test_the_fast_path_serves_behind_a_root_path(redis_url: str) -> None:
    app = create_app(Settings(redis_url=redis_url))  # type: ignore[call-arg]
    with TestClient(app, root_path="/api") as client:
        assert client.post("/api/download", content=json.dumps(VALID)).status_code == 201
        assert client.post("/api/download/", content=json.dumps(VALID)).status_code == 404
