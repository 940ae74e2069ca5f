"""`downloader up`: everything in one process on an embedded Redis, files served at /files/."""

from __future__ import annotations

import signal
from pathlib import Path

import httpx
import psutil
import pytest
from procs import Stack, aggr_id, free_port, job_body
from servers import CallbackServer, FileServer, wait_until

pytestmark = pytest.mark.integration


def redis_children(pid: int) -> list[psutil.Process]:
    try:
        children = psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []
    return [c for c in children if "redis-server" in " ".join(c.cmdline() or [c.name()])]


def test_up_serves_a_download_on_its_embedded_redis_and_stops_cleanly_on_ctrl_c(
    stack: Stack, files: FileServer, callbacks: CallbackServer, tmp_path: Path
) -> None:
    cwd = tmp_path / "here"
    cwd.mkdir()
    port = free_port()
    # Everything `up` decides itself: Redis, where files go, and the URL they are served at.
    up = stack.up(
        cwd,
        port,
        redis_url=None,
        storage_root=None,
        tmp_dir=None,
        download_url=None,
    )
    embedded = redis_children(up.pid)
    assert len(embedded) == 1, f"expected one embedded redis-server child, found {embedded}"
    assert (cwd / "data" / "redis").is_dir()
    api = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=15, trust_env=False)

    resp = api.post("/download", json=job_body(files.url("sample-1.jpg"), aggr_id("up"), callbacks.url))
    assert resp.status_code == 201, resp.text
    job_id = resp.json()["id"]
    payload = callbacks.wait_for(job_id, timeout=30)

    assert payload["success"] is True
    assert payload["download_url"] == f"http://127.0.0.1:{port}/files/{job_id[:3]}/{job_id}"
    served = httpx.get(payload["download_url"], timeout=15, trust_env=False)
    assert served.status_code == 200
    assert served.content == files.content("sample-1.jpg")
    assert (cwd / "data" / "files" / job_id[:3] / job_id).read_bytes() == files.content("sample-1.jpg")
    api.close()

    up.signal(signal.SIGINT)

    assert up.wait(30) == 0
    wait_until(
        lambda: not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in embedded),
        10,
        "the embedded redis-server to stop",
    )
