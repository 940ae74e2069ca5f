"""`downloader enqueue` and `downloader retry` (the original's jobcat and
reschedule-failed-callbacks) against a real Redis, real worker/notifier/api processes and
local file and callback servers; progress output on a pipe and on a terminal (pty)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import redis
from support import terminal
from support.procs import DOWNLOADER, Stack, aggr_id
from support.servers import CallbackServer, FileServer, wait_until

pytestmark = pytest.mark.integration

BAD_LINES = {"not a url", "http://[::1/x", "ht tp://space/x"}


def run(stack: Stack, *args: str, stdin: str | None = None, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*DOWNLOADER, *args],
        env=stack.env(**env),
        cwd=stack.tmp_path,
        input=stdin,
        text=True,
        capture_output=True,
        timeout=120,
    )


def url_file(path: Path, files: FileServer, count: int, bad: bool = False) -> list[str]:
    """`count` URLs of one small file (distinct queries), with comments, blank and bad lines."""
    files.add_file("small.txt", b"downloaded by the CLI test\n")
    urls = [files.url("small.txt", n=i) for i in range(count)]
    lines = ["# URLs for the CLI test", ""]
    for i, url in enumerate(urls):
        lines.append(url)
        if bad and i % 300 == 150:
            lines.append(sorted(BAD_LINES)[(i // 300) % len(BAD_LINES)])
    path.write_text("\n".join(lines) + "\n")
    return urls


def ids_of(path: Path) -> dict[str, str]:
    """url -> job id, from an `--ids` file (line<TAB>url<TAB>id)."""
    rows = [line.split("\t") for line in path.read_text().splitlines()]
    assert all(len(row) == 3 and row[0].isdigit() for row in rows)
    return {url: job_id for _, url, job_id in rows}


def test_enqueue_a_file_to_redis_then_worker_and_notifier_finish_every_job(
    stack: Stack, rdb: redis.Redis, files: FileServer, callbacks: CallbackServer
) -> None:
    aggr = aggr_id("enq")
    urls = url_file(stack.tmp_path / "urls.txt", files, 1000, bad=True)
    out = run(stack, "enqueue", "urls.txt", "--aggr", aggr, "--limit", "16", "--callback-type", "http",
              "--callback-dst", callbacks.url, "--extra", "batch-7", "--ids", "ids.txt")  # fmt: skip
    assert out.returncode == 1, out.stderr  # some lines were rejected
    summary = out.stdout.splitlines()
    assert re.match(r"total 1003, queued 1000, rejected 3, elapsed [\d.]+s, \d+ jobs/s$", summary[0])
    reasons = summary[1:]
    assert len(reasons) == 3 and all(re.match(r"  line \d+: Job: Could not parse URL", r) for r in reasons)
    text = (stack.tmp_path / "urls.txt").read_text().splitlines()
    for reason in reasons:
        number = int(reason.split()[1].rstrip(":"))
        assert text[number - 1] in BAD_LINES, "reasons name the file's own line numbers"
    # Not a terminal: no \r, a line per 10% and nothing else but the connection line.
    assert "\r" not in out.stderr
    percents = [int(m) for m in re.findall(r"^(\d+)% \d+/1003 jobs, \d+ rejected, \d+/s$", out.stderr, re.M)]
    assert percents == list(range(10, 101, 10)), out.stderr
    ids = ids_of(stack.tmp_path / "ids.txt")
    assert sorted(ids) == sorted(urls) and len(set(ids.values())) == 1000
    assert rdb.zcard(f"jobs:{aggr}") == 1000
    assert rdb.hget(f"aggr:{aggr}", "Limit") == "16"
    assert rdb.hget(f"job:{ids[urls[0]]}", "Extra") == "batch-7"

    stack.worker()
    stack.notifier()
    delivered = callbacks.wait_for_count(1000, timeout=180)
    payloads = {c.payload["job_id"]: c.payload for c in delivered}
    assert set(payloads) == set(ids.values())
    assert all(p["success"] and p["extra"] == "batch-7" for p in payloads.values())
    assert len(files.seen("small.txt")) == 1000


def test_enqueue_from_stdin_through_a_real_api_with_a_key(stack: Stack, rdb: redis.Redis,
                                                          files: FileServer) -> None:  # fmt: skip
    api = stack.api(api_keys="cli-token-1234=cli-")
    aggr = aggr_id("cli")
    urls = [files.url("small.txt", n=i) for i in range(200)]
    stdin = "\n".join([*urls, "not a url"]) + "\n"
    args = ["enqueue", "-", "--aggr", aggr, "--limit", "3", "--callback-url", "http://127.0.0.1:9/cb",
            "--mime-type", "text/*", "--api", api.url, "--ids", "ids.txt"]  # fmt: skip
    out = run(stack, *args, stdin=stdin, DOWNLOADER_API_KEY="cli-token-1234")
    assert out.returncode == 1, out.stderr
    assert out.stdout.startswith("total 201, queued 200, rejected 1,")
    assert "line 201: HTTP 400: Error unmarshalling body" in out.stdout
    ids = ids_of(stack.tmp_path / "ids.txt")
    assert sorted(ids) == sorted(urls)
    for url, job_id in ids.items():
        assert rdb.hget(f"job:{job_id}", "URL") == url
    assert rdb.hget(f"job:{ids[urls[0]]}", "MimeType") == "text/*"
    assert "cli-token-1234" not in out.stderr + out.stdout

    wrong = run(stack, *args[:-2], "--api-key", "wrong-token", stdin=stdin)
    assert wrong.returncode == 1 and "queued 0, rejected 201" in wrong.stdout
    assert "HTTP 401" in wrong.stdout
    assert rdb.zcard(f"jobs:{aggr}") == 200, "nothing more was queued"


def test_bad_options_stop_before_reading_anything(stack: Stack) -> None:
    out = run(stack, "enqueue", "nope.txt", "--aggr", "a", "--limit", "0", "--callback-url", "http://x/")
    assert out.returncode == 2 and "Aggregation limit must be greater than 0" in out.stderr
    out = run(stack, "enqueue", "nope.txt", "--aggr", "a", "--limit", "2", "--callback-url", "http://x/")
    assert out.returncode == 2 and "cannot read nope.txt" in out.stderr
    out = run(stack, "retry", "--dry-run")
    assert out.returncode == 2 and "give --failed or job ids" in out.stderr


def test_enqueue_refuses_what_post_download_refuses(
    stack: Stack, rdb: redis.Redis, files: FileServer
) -> None:
    """Straight to Redis, enqueue applies the API's checks too: options that can never work
    stop it before reading anything, and a line whose URL can never be fetched is rejected."""
    out = run(stack, "enqueue", "nope.txt", "--aggr", "a", "--limit", "2", "--callback-type", "pigeon",
              "--callback-dst", "coop")  # fmt: skip
    assert out.returncode == 2 and 'Unknown callback_type "pigeon"' in out.stderr, out.stderr
    aggr = aggr_id("feasible")
    (stack.tmp_path / "urls.txt").write_text(f"{files.url('small.txt')}\nftp://127.0.0.1/file.txt\n")
    out = run(
        stack,
        "enqueue",
        "urls.txt",
        "--aggr",
        aggr,
        "--limit",
        "2",
        "--callback-url",
        "http://127.0.0.1:9/cb",
    )
    assert out.returncode == 1, out.stderr
    assert out.stdout.startswith("total 2, queued 1, rejected 1,")
    assert 'line 2: Job: URL scheme must be http or https, was "ftp"' in out.stdout, out.stdout
    assert rdb.zcard(f"jobs:{aggr}") == 1


def callback_states(rdb: redis.Redis, ids: list[str]) -> dict[str, str]:
    return {i: str(rdb.hget(f"job:{i}", "CallbackState")) for i in ids}


def test_retry_reschedules_exactly_the_failed_callbacks(
    stack: Stack, rdb: redis.Redis, files: FileServer
) -> None:
    receiver = CallbackServer(status=500)
    receiver.start()
    try:
        stack.configure(callback_max_attempts=1)
        first, second, idle = aggr_id("ra"), aggr_id("rb"), aggr_id("rc")
        stack.worker(first, second)  # `idle` is served by no one: its jobs stay Pending
        stack.notifier()
        url_file(stack.tmp_path / "urls.txt", files, 30)
        queued: dict[str, list[str]] = {}
        for aggr in (first, second, idle):
            out = run(stack, "enqueue", "urls.txt", "--aggr", aggr, "--limit", "8", "--callback-url",
                      receiver.url, "--ids", f"{aggr}.txt")  # fmt: skip
            assert out.returncode == 0, out.stdout + out.stderr
            queued[aggr] = list(ids_of(stack.tmp_path / f"{aggr}.txt").values())
        failing = queued[first] + queued[second]
        wait_until(lambda: set(callback_states(rdb, failing).values()) == {"Failed"}, 60, "Failed callbacks")
        before = {i: rdb.hgetall(f"job:{i}") for i in failing + queued[idle]}

        dry = run(stack, "retry", "--failed", "--dry-run")
        assert dry.returncode == 0, dry.stderr
        listed = dry.stdout.splitlines()[:-1]
        assert sorted(listed) == sorted(failing)
        assert "scanned 90, would reschedule 60 (dry run" in dry.stdout
        assert "scanned 90 jobs: 60 Failed callbacks" in dry.stderr
        assert {i: rdb.hgetall(f"job:{i}") for i in before} == before, "a dry run changes nothing"

        receiver.status = 200  # the receiver is fixed
        out = run(stack, "retry", "--failed", "--aggr", first)
        assert out.returncode == 0, out.stderr
        assert "scanned 90, rescheduled 30, skipped 0" in out.stdout
        assert re.search(r"^100% 30/30 callbacks, 0 rejected", out.stderr, re.M)
        for job_id in queued[first]:
            receiver.wait_for(job_id, timeout=60)
        assert set(callback_states(rdb, queued[second]).values()) == {"Failed"}, "other aggregations stay"
        assert not any(receiver.delivered(i) for i in queued[second])

        # `--`: ids are base64url, and one in 64 begins with '-'
        out = run(stack, "retry", "--", queued[second][0], "no-such-job", queued[idle][0])
        assert out.returncode == 1, "a job that could not be retried is a failure"
        assert "rescheduled 1, skipped 2" in out.stdout
        assert "no-such-job: no such job" in out.stdout
        assert f"{queued[idle][0]}: callback is not set, not Failed" in out.stdout
        receiver.wait_for(queued[second][0], timeout=60)
    finally:
        receiver.stop()


def test_the_progress_bar_is_redrawn_on_a_terminal(stack: Stack, rdb: redis.Redis, files: FileServer) -> None:
    url_file(stack.tmp_path / "urls.txt", files, 1000)
    status, screen, stdout = terminal.on_a_terminal(
        [*DOWNLOADER, "enqueue", "urls.txt", "--aggr", aggr_id("tty"), "--limit", "2",
         "--callback-url", "http://127.0.0.1:9/cb"],
        stack.env(),
        stack.tmp_path,
    )  # fmt: skip
    assert status == 0
    bars = re.findall(r"\r\[([#.]{20})\] (\d+)/1000 jobs, 0 rejected, \d+/s", screen)
    assert len(bars) >= 2 and bars[0] == ("." * 20, "0") and bars[-1] == ("#" * 20, "1000"), screen
    assert not re.search(r"^\d+% ", screen, re.M), "no 10% lines on a terminal"
    assert stdout.startswith("total 1000, queued 1000, rejected 0,")
