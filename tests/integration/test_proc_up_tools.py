"""`downloader enqueue` and `downloader retry` beside a running `downloader up`: they find its
embedded Redis (on a port of its choosing) through data/up.json in the current directory,
say so in one line, and `retry --api` reschedules through its API. Real `up` processes, the
real CLI, on a pipe and on a terminal (pty)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import httpx
import pytest
from support import terminal
from support.procs import DOWNLOADER, Stack, aggr_id, free_port
from support.servers import CallbackServer, FileServer, wait_until

pytestmark = pytest.mark.integration

#: What `up` decides itself: Redis, where files go, and the URL they are served at.
UP_OWN = {"redis_url": None, "storage_root": None, "tmp_dir": None, "download_url": None}


def tool(stack: Stack, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The CLI as a newcomer runs it beside `up`: no DOWNLOADER_REDIS_URL, in up's directory."""
    return subprocess.run(
        [*DOWNLOADER, *args],
        env=stack.env(redis_url=None),
        cwd=cwd,
        text=True,
        capture_output=True,
        timeout=120,
    )


def on_a_terminal(stack: Stack, cwd: Path, *args: str) -> tuple[int, str, str]:
    """(status, what the terminal showed on stderr, stdout) of the CLI with stderr on a pty."""
    return terminal.on_a_terminal([*DOWNLOADER, *args], stack.env(redis_url=None), cwd)


def callback_state(api: str, job_id: str) -> str:
    return str(httpx.get(f"{api}/jobs/{job_id}", timeout=10, trust_env=False).json()["callback"]["state"])


def test_enqueue_and_retry_find_the_redis_of_up_running_here_and_retry_works_through_its_api(
    stack: Stack, files: FileServer, tmp_path: Path
) -> None:
    cwd = tmp_path / "here"
    cwd.mkdir()
    port = free_port()
    up = stack.up(cwd, port, callback_max_attempts=1, **UP_OWN)
    api = f"http://127.0.0.1:{port}"
    published = json.loads((cwd / "data" / "up.json").read_text())
    assert published["pid"] == up.pid and published["api_url"] == api
    assert published["redis_url"].startswith("redis://127.0.0.1:") and ":6379/" not in published["redis_url"]
    receiver = CallbackServer(status=500)
    receiver.start()
    try:
        files.add_file("one.txt", b"found through up.json\n")
        (cwd / "urls.txt").write_text(f"{files.url('one.txt', n=1)}\n{files.url('one.txt', n=2)}\n")
        aggr = aggr_id("found")

        out = tool(stack, cwd, "enqueue", "urls.txt", "--aggr", aggr, "--limit", "2",
                   "--callback-url", receiver.url, "--ids", "ids.txt")  # fmt: skip

        assert out.returncode == 0, out.stdout + out.stderr
        found = [line for line in out.stderr.splitlines() if "using the Redis of" in line]
        assert found == [
            f"downloader enqueue: using the Redis of `downloader up` (pid {up.pid}, data/): "
            f"{published['redis_url']}, API {api}"
        ]
        assert "6379" not in out.stderr
        ids = [line.split("\t")[2] for line in (cwd / "ids.txt").read_text().splitlines()]
        assert len(ids) == 2
        wait_until(lambda: all(callback_state(api, i) == "Failed" for i in ids), 60,
                   "both callbacks to fail")  # fmt: skip

        # --failed scans Redis: the one `up` runs, found the same way.
        dry = tool(stack, cwd, "retry", "--failed", "--dry-run")
        assert dry.returncode == 0, dry.stdout + dry.stderr
        assert sorted(dry.stdout.splitlines()[:-1]) == sorted(ids)
        assert "downloader retry: using the Redis of `downloader up`" in dry.stderr

        receiver.status = 200
        # --api: POST /retry/<id>, the API's own words for a job it would not retry.
        via_api = tool(stack, tmp_path, "retry", "--api", api, "--", ids[0], "no-such-job")
        assert via_api.returncode == 1, via_api.stdout + via_api.stderr
        assert "scanned 2, rescheduled 1, skipped 1" in via_api.stdout
        assert "no-such-job: HTTP 400: Error fetching no-such-job from Redis: Not Found" in via_api.stdout
        assert "using the Redis of" not in via_api.stderr, "--api needs no Redis"
        receiver.wait_for(ids[0], timeout=60)
        assert not receiver.delivered(ids[1])

        refused = tool(stack, cwd, "retry", "--failed", "--api", api)
        assert refused.returncode == 2
        assert refused.stderr.strip() == "downloader: --failed scans Redis: with --api, give the job ids"

        # On a terminal: the one line of what was found, and no INFO line of the Redis client.
        status, screen, stdout = on_a_terminal(stack, cwd, "retry", "--", ids[1])
        assert status == 0, screen + stdout
        assert "using the Redis of `downloader up`" in screen
        assert "INFO" not in screen and "direct connection" not in screen, screen
        assert "rescheduled 1, skipped 0" in stdout
        receiver.wait_for(ids[1], timeout=60)
    finally:
        receiver.stop()

    up.signal(signal.SIGINT)
    assert up.wait(30) == 0
    assert not (cwd / "data" / "up.json").exists(), "removed at exit"


def test_the_address_file_of_a_killed_up_is_ignored_and_replaced_by_the_next_up(
    stack: Stack, tmp_path: Path
) -> None:
    from downloader.cli import discovery

    cwd = tmp_path / "here"
    cwd.mkdir()
    first = stack.up(cwd, free_port(), **UP_OWN)
    data = cwd / "data"
    assert discovery.find(data) is not None
    os.kill(first.pid, signal.SIGKILL)  # no chance to remove its file
    first.wait(30)
    # The lock is free once the embedded redis-server (and any child it forked for its
    # append-only file, which inherits the lock) has died with `up`: not at the same instant.
    wait_until(lambda: discovery.find(data) is None, 15, "the stale file to be ignored (its lock free)")

    assert (data / "up.json").exists(), "a killed up could not remove it"

    port = free_port()
    second = stack.up(cwd, port, **UP_OWN)
    found = discovery.find(data)
    assert found is not None and found.pid == second.pid and found.api_url == f"http://127.0.0.1:{port}"
    second.signal(signal.SIGINT)
    assert second.wait(30) == 0
