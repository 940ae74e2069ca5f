"""Resumable downloads end to end: api, worker and notifier processes on a real Redis fetch a
64 MiB file from a local server that cuts the transfer; the retry asks only for the rest, the
stored file and the callback's sha256 are the whole file's, and nothing is left in tmp."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator

import pytest
from support.procs import Stack, aggr_id, job_body
from support.range_server import RangeServer
from support.servers import CallbackServer, wait_until

pytestmark = pytest.mark.integration

MIB = 1024 * 1024


def file_of(size: int, seed: bytes) -> bytes:
    block = hashlib.sha256(seed).digest() * (MIB // 32)
    return b"".join(bytes([i % 256]) + block[1:] for i in range(size // MIB))


@pytest.fixture(scope="module")
def content() -> bytes:
    return file_of(64 * MIB, b"v1")


@pytest.fixture
def server(content: bytes) -> Iterator[RangeServer]:
    srv = RangeServer(content)
    yield srv
    srv.release.set()
    srv.shutdown()
    srv.server_close()


def leftovers(stack: Stack) -> list[str]:
    return sorted(p.name for p in stack.tmp_dir.iterdir()) if stack.tmp_dir.exists() else []


def test_a_transfer_cut_at_40_percent_is_resumed_and_only_the_rest_is_sent(
    stack: Stack, server: RangeServer, callbacks: CallbackServer, content: bytes
) -> None:
    api, _, _ = stack.all_three()
    cut = int(len(content) * 0.4)
    server.cut_at = cut

    job_id = api.post_job(job_body(server.url(), aggr_id(), callbacks.url))
    payload = callbacks.wait_for(job_id, timeout=60)

    assert payload["success"] is True, payload
    assert server.sent == [cut, len(content) - cut]  # the retry carried only the rest
    assert server.requests[1]["Range"] == f"bytes={cut}-"
    assert payload["sha256"] == hashlib.sha256(content).hexdigest()
    assert payload["size"] == len(content)
    assert payload["attempts"] == 2
    assert stack.stored_path(job_id).read_bytes() == content
    assert leftovers(stack) == []


def test_a_file_changed_between_attempts_is_fetched_again_whole(
    stack: Stack, server: RangeServer, callbacks: CallbackServer, content: bytes
) -> None:
    changed = file_of(64 * MIB, b"v2")
    api, _, _ = stack.all_three()
    server.cut_at = 20 * MIB
    server.after_cut = (changed, '"v2"')

    job_id = api.post_job(job_body(server.url(), aggr_id(), callbacks.url))
    payload = callbacks.wait_for(job_id, timeout=60)

    assert payload["success"] is True, payload
    assert server.requests[1]["If-Range"] == '"v1"'
    assert server.sent == [20 * MIB, len(changed)]  # a full restart, with a 200
    assert payload["sha256"] == hashlib.sha256(changed).hexdigest()
    assert stack.stored_path(job_id).read_bytes() == changed
    assert leftovers(stack) == []


def test_a_killed_worker_leaves_what_it_stored_and_the_next_one_continues_it(
    stack: Stack, server: RangeServer, callbacks: CallbackServer, content: bytes
) -> None:
    stack.configure(lease_seconds=2)
    api, worker, _ = stack.all_three()
    cut = int(len(content) * 0.4)
    server.cut_at, server.stall = cut, True
    job_id = api.post_job(job_body(server.url(), aggr_id(), callbacks.url))
    partial = stack.tmp_dir / f"{job_id}.tmp"
    wait_until(lambda: partial.exists() and partial.stat().st_size == cut, 30, "40 % stored")

    worker.kill9()
    server.release.set()
    time.sleep(0.5)
    # another worker on the same disk, once the dead one's short lease expires; its own lease is
    # the usual one, so a loaded host's late renewal cannot cut its download a second time
    stack.worker(lease_seconds=10)
    payload = callbacks.wait_for(job_id, timeout=60)

    assert payload["success"] is True, payload
    assert server.sent == [cut, len(content) - cut]
    assert payload["sha256"] == hashlib.sha256(content).hexdigest()
    assert stack.stored_path(job_id).read_bytes() == content
    assert leftovers(stack) == []
