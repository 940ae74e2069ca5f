"""`queue.parse_claim`: every shape of CLAIM_DOWNLOADS' reply, read without Redis."""

from __future__ import annotations

from downloader.store.queue import parse_claim
from downloader.store.records import Claim, ClaimedJob


def test_jobs_come_with_their_aggregation_and_what_was_left() -> None:
    reply = [
        "ok",
        ["ID", "a1", "Limit", "4"],
        "more",
        "j1",
        ["ID", "j1", "AggrID", "a1", "DownloadState", "Pending"],
        ['{"max_size":9}'],
        "j2",
        [],  # its hash went meanwhile
        [""],
    ]
    claim = parse_claim("a1", reply)
    assert claim.jobs == {
        "j1": ClaimedJob({"ID": "j1", "AggrID": "a1", "DownloadState": "InProgress"}, '{"max_size":9}'),
        "j2": ClaimedJob({}, ""),
    }
    assert claim.aggregation is not None and (claim.aggregation.id, claim.aggregation.limit) == ("a1", 4)
    assert (claim.more, claim.next_ready) == (True, None)


def test_what_a_claim_left_is_more_a_later_job_or_nothing() -> None:
    job = ["ID", "j", "AggrID", "a1"]
    later = parse_claim("a1", ["ok", [], "1700000000.25", "j", job, [""]])
    nothing = parse_claim("a1", ["ok", [], "", "j", job, [""]])
    assert (later.more, later.next_ready) == (False, 1700000000.25)
    assert (nothing.more, nothing.next_ready) == (False, None)


def test_a_claim_that_got_nothing_says_why() -> None:
    assert parse_claim("a1", ["hosts"]) == Claim(held_by_hosts=True)
    assert parse_claim("a1", ["full"]) == Claim(full=True)
    assert parse_claim("a1", ["paused"]) == Claim(paused=True)
    assert parse_claim("a1", ["empty"]) == Claim(empty=True)
    assert parse_claim("a1", ["idle"]) == Claim(empty=True, idle=True)
    assert parse_claim("a1", ["1700000001.5"]) == Claim(next_ready=1700000001.5)
