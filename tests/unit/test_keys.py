"""Key names are the original's (reference 2.4); ours never collide with its patterns."""

from __future__ import annotations

import fnmatch

from downloader.store import keys


def test_the_originals_keys() -> None:
    assert keys.job("NSb4FOAs9fVaQw") == "job:NSb4FOAs9fVaQw"
    assert keys.aggregation("host.com") == "aggr:host.com"
    assert keys.queue("host.com") == "jobs:host.com"
    assert keys.stats("processor") == "stats:processor"
    assert (keys.CALLBACK_QUEUE, keys.DELETION_QUEUE) == ("CallbackQueue", "JobDeletionQueue")


def test_aggregation_ids_come_back_from_queue_and_inflight_keys() -> None:
    for aggr in ("a", "loadtest:3", "jobs:x", "ünï"):
        assert keys.aggregation_from_queue(keys.queue(aggr)) == aggr
        assert keys.aggregation_from_inflight(keys.inflight(aggr)) == aggr


def test_our_keys_are_invisible_to_the_originals_scans() -> None:
    """The original and its tools SCAN `jobs:*` (aggregations) and `job:*` (job hashes)."""
    ours = [
        keys.inflight("a"),
        keys.leases("a"),
        keys.job_meta("id"),
        keys.job_errors("id"),
        keys.latency(1),
        keys.callback_hosts(1),
        keys.CALLBACK_INFLIGHT,
        keys.CALLBACK_LEASES,
    ]
    for key in ours:
        assert not fnmatch.fnmatchcase(key, keys.QUEUE_PATTERN), key
        assert not fnmatch.fnmatchcase(key, keys.JOB_PATTERN), key
