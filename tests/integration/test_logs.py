"""Logs of real api, worker and notifier processes in JSON at DEBUG: every line parses, a job's
download and callback lines carry job_id/aggr_id/event/duration, uvicorn's lines are JSON too,
and no secret (signing keys, API keys, the Redis password, Kafka and AWS secrets) ever shows."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from support.procs import Stack, aggr_id, free_port, job_body
from support.servers import CallbackServer, FileServer, wait_until

pytestmark = pytest.mark.integration

SIGNING_KEYS = ("signkey-old-4f1d9c2b", "signkey-new-7a3e5b90")
API_TOKEN = "apitoken-8e3c1a5d"
REDIS_PASSWORD = "redispass-b71c0e93"
KAFKA_PASSWORD = "kafkapass-2d6f8a41"
AWS_SECRET = "awssecret-9c3e7b12"
SECRETS = (*SIGNING_KEYS, API_TOKEN, REDIS_PASSWORD, KAFKA_PASSWORD, AWS_SECRET)


@pytest.fixture
def password_redis(tmp_path: Path) -> Iterator[str]:
    """A redis-server of this test only, with a password (the session's has none)."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail("redis-server is not on PATH (scripts/bootstrap installs it)", pytrace=False)
    port = free_port()
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--requirepass", REDIS_PASSWORD],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"redis://:{REDIS_PASSWORD}@127.0.0.1:{port}/0"
    client = redis.Redis.from_url(url)
    try:
        wait_until(client.ping, 20, "the password-protected redis-server")
        yield url
    finally:
        client.close()
        proc.terminate()
        proc.wait(10)


def parsed(text: str) -> list[dict[str, Any]]:
    """Every line as JSON (a line that does not parse fails the test, naming it)."""
    out = []
    for line in text.splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            raise AssertionError(f"not a JSON line: {line!r}") from None
    return out


def send_garbage(port: int) -> None:
    """A request uvicorn cannot parse: it logs a warning of its own."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
        conn.sendall(b"NOT HTTP AT ALL\r\n\r\n")
        conn.recv(1024)


def test_json_logs_of_a_real_job_carry_its_fields_and_no_secrets(
    tmp_path: Path, password_redis: str, files: FileServer, callbacks: CallbackServer
) -> None:
    stack = Stack(
        tmp_path,
        password_redis,
        log_format="json",
        log_level="DEBUG",
        callback_signing_keys=",".join(SIGNING_KEYS),
        api_keys=f"{API_TOKEN}=logs-",
        kafka_password=KAFKA_PASSWORD,
        AWS_SECRET_ACCESS_KEY=AWS_SECRET,
    )
    try:
        api, _worker, notifier = stack.all_three()
        aggr = aggr_id("logs")
        auth = {"Authorization": f"Bearer {API_TOKEN}"}
        files.add_file("ok.txt", b"hello logs")
        ok = httpx.post(f"{api.url}/download", json=job_body(files.url("ok.txt"), aggr, callbacks.url),
                        headers=auth, trust_env=False).json()["id"]  # fmt: skip
        # A URL holding a secret: urllib3's DEBUG line names the path, so redaction must act.
        leaky = httpx.post(f"{api.url}/download", headers=auth, trust_env=False,
                           json=job_body(files.url(f"missing-{KAFKA_PASSWORD}"), aggr, callbacks.url,
                                         max_retries=0)).json()["id"]  # fmt: skip
        callbacks.wait_for(ok)
        callbacks.wait_for(leaky)
        send_garbage(api.port)
        wait_until(lambda: "Invalid HTTP request" in api.output(), 10, "uvicorn's warning")
        wait_until(lambda: notifier.output().count('"callback_delivered"') >= 2, 10, "the notifier's lines")
    finally:
        stack.stop_all()
    outputs = {p.name: p.output() for p in stack.procs}
    for name, text in outputs.items():
        assert text.strip(), f"{name} wrote nothing"
        for secret in SECRETS:
            assert secret not in text, f"{name} logged the secret {secret!r}"
    worker_lines, notifier_lines = parsed(outputs["worker"]), parsed(outputs["notifier"])
    api_lines = parsed(outputs["api"])
    assert any(line["level"] == "DEBUG" for line in worker_lines), "DEBUG level is on"
    assert any("[redacted]" in line["message"] for line in worker_lines), "the secret URL was redacted"

    def one(lines: list[dict[str, Any]], event: str, job_id: str) -> dict[str, Any]:
        found = [line for line in lines if line.get("event") == event and line.get("job_id") == job_id]
        assert len(found) == 1, f"{event} of {job_id}: {found}"
        return found[0]

    for event, job_id, code in (("download_succeeded", ok, 200), ("download_failed", leaky, 404)):
        line = one(worker_lines, event, job_id)
        assert line["aggr_id"] == aggr and line["response_code"] == code and line["level"] == "INFO"
        assert isinstance(line["duration"], float) and 0 < line["duration"] < 30
        assert line["logger"] == "downloader.worker" and line["time"].endswith("Z")
    for job_id in (ok, leaky):
        line = one(notifier_lines, "callback_delivered", job_id)
        assert line["aggr_id"] == aggr and isinstance(line["duration"], float) and line["attempt"] == 1
    assert any(line["logger"] == "uvicorn.error" and "Invalid HTTP request" in line["message"]
               for line in api_lines)  # fmt: skip
    assert any("serving" in line["message"] for line in worker_lines)
    assert any("delivering" in line["message"] for line in notifier_lines)
    assert any("redis://:***@127.0.0.1" in line["message"] for line in worker_lines)
