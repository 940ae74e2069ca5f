"""`downloader up`: everything in one process on an embedded Redis, files served at /files/."""

from __future__ import annotations

import os
import signal
import socket
from pathlib import Path

import httpx
import psutil
import pytest
from support.procs import Proc, Stack, aggr_id, free_port, job_body
from support.servers import CallbackServer, FileServer, wait_until

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


# --- signals, a busy port, a second `up` (issue 12, item 10) ---------------------------------

#: What `up` decides itself: Redis, where files go, and the URL they are served at.
UP_OWN = {"redis_url": None, "storage_root": None, "tmp_dir": None, "download_url": None}


def redis_servers_in(cwd: Path) -> list[psutil.Process]:
    """Every live redis-server started in `cwd` (an embedded one; ours or a leftover)."""
    found = []
    for proc in psutil.process_iter(["name", "cmdline"]):
        try:
            if "redis-server" not in " ".join(proc.info["cmdline"] or [proc.info["name"] or ""]):
                continue
            # redis-server moves into its --dir
            if proc.status() != psutil.STATUS_ZOMBIE and Path(proc.cwd()).is_relative_to(cwd):
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


def up_url(proc: Proc) -> str:
    port = proc.argv[proc.argv.index("--port") + 1]
    return f"http://127.0.0.1:{port}"


def error_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("downloader:")]


def test_ctrl_c_to_the_process_group_drains_into_a_redis_that_outlives_the_drain(
    stack: Stack, files: FileServer, callbacks: CallbackServer, tmp_path: Path
) -> None:
    cwd = tmp_path / "here"
    cwd.mkdir()
    # A lease far longer than the test: a job whose result was lost would stay blocked.
    settings = {**UP_OWN, "lease_seconds": 300, "shutdown_grace_seconds": 30}
    up = stack.up(cwd, free_port(), **settings)
    api = httpx.Client(base_url=up_url(up), timeout=15, trust_env=False)
    files.add_file("slow.bin", bytes(range(256)) * 160)  # 40 KiB in 10 pieces, 0.4 s apart
    aggr = aggr_id("ctrl-c")
    resp = api.post("/download", json=job_body(files.url("slow.bin", delay=0.4, chunk=4096), aggr,
                                               callbacks.url))  # fmt: skip
    assert resp.status_code == 201, resp.text
    job_id = resp.json()["id"]
    api.close()
    wait_until(lambda: files.seen("slow.bin"), 30, "the download to start")

    os.killpg(up.pid, signal.SIGINT)  # what the terminal does on Ctrl-C: the whole group

    assert up.wait(60) == 0, up.tail()
    redis_log = (cwd / "data" / "redis" / "redis.log").read_text()
    assert "Received SIGINT" not in redis_log, "the terminal's Ctrl-C reached the embedded Redis"
    assert "Received SIGTERM" in redis_log
    lines = up.output().splitlines()
    drained = [n for n, line in enumerate(lines) if "downloader.worker" in line and line.endswith(" stopped")]
    stopping = [n for n, line in enumerate(lines) if "stopping the embedded redis-server" in line]
    assert drained and stopping and drained[0] < stopping[0], "Redis was stopped before the drain ended"
    assert not redis_servers_in(cwd)

    # Restarted on the same data: the finished download is there, no lease holds it back.
    up = stack.up(cwd, free_port(), **settings)
    payload = callbacks.wait_for(job_id, timeout=30)
    assert payload["success"] is True, payload
    assert (cwd / "data" / "files" / job_id[:3] / job_id).read_bytes() == files.content("slow.bin")
    assert len(files.seen("slow.bin")) == 1, "the download was lost and done again"


def test_up_on_a_busy_port_starts_nothing_and_exits_with_one_line(stack: Stack, tmp_path: Path) -> None:
    cwd = tmp_path / "here"
    cwd.mkdir()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        up = stack.spawn("up", ["up", "--host", "127.0.0.1", "--port", str(port)], cwd=cwd,
                         env=stack.env(**UP_OWN))  # fmt: skip

        status = up.wait(30)  # it used to hang here, API-less, deaf to SIGTERM and SIGINT

    assert status != 0
    out = up.output()
    assert "Traceback" not in out, out
    assert error_lines(out) == [f"downloader: cannot listen on 127.0.0.1:{port}: Address already in use"]
    assert not redis_servers_in(cwd)


def test_a_second_up_on_the_same_data_directory_says_so_and_leaves_the_first_running(
    stack: Stack, tmp_path: Path
) -> None:
    cwd = tmp_path / "here"
    cwd.mkdir()
    first = stack.up(cwd, free_port(), **UP_OWN)
    assert len(redis_servers_in(cwd)) == 1

    second = stack.spawn("up", ["up", "--host", "127.0.0.1", "--port", str(free_port())], cwd=cwd,
                         env=stack.env(**UP_OWN))  # fmt: skip

    assert second.wait(30) != 0
    out = second.output()
    assert "Traceback" not in out, out
    assert error_lines(out) == [
        f"downloader: {cwd / 'data'} is in use by another `downloader up` (pid {first.pid}); "
        "stop that one, or start this one in another directory"
    ]
    assert len(redis_servers_in(cwd)) == 1, "a second redis-server on the same append-only file"
    first.check_alive()
    assert httpx.get(f"{up_url(first)}/hb", timeout=10, trust_env=False).status_code == 200
