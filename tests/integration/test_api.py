"""The API app in-process on a real Redis: the original's answers (Appendix A) and the new routes."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
import redis
from fastapi.testclient import TestClient

from downloader.api.main import create_app
from downloader.settings import Settings

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
