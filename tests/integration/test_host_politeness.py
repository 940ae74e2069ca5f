"""Politeness per origin host through real processes: a host limit holds across aggregations
and worker processes, a 429 with Retry-After pauses its host for the whole fleet while other
hosts are served, and a dead worker's host slots come back when its lease expires.
"""

from __future__ import annotations

import itertools
import json
import threading
import time
from collections.abc import Iterator
from typing import cast

import pytest
import redis
from support.procs import Stack, aggr_id, job_body
from support.servers import FileServer, Seen, wait_until

from downloader.jobs import hosts
from downloader.jobs.hosts import HostPolicy, HostRule
from downloader.jobs.models import Aggregation, Job, JobOptions
from downloader.store import NextStep, Outcome, Store, new_token, scripts

pytestmark = pytest.mark.integration

IMAGE = "sample-1.jpg"
#: Jobs need a callback; no notifier runs, so their hashes stay to be read.
CALLBACK = "http://127.0.0.1:9/callback"


def host(server: FileServer) -> str:
    return server.base.removeprefix("http://")


def peak_concurrency(requests: list[Seen]) -> int:
    """The most requests served at one instant, each from its start to its last write (a span
    inside the time its client was downloading: an overlap here is a true one)."""
    answered = [r for r in requests if r.served is not None]
    events = sorted([(r.started, 1) for r in answered] + [(cast(float, r.served), -1) for r in answered])
    current = peak = 0
    for _, step in events:  # an end sorts before a start at the same instant
        current += step
        peak = max(peak, current)
    return peak


def states(stack: Stack, ids: list[str]) -> list[str]:
    return [str(stack.db.hget(f"job:{job_id}", "DownloadState")) for job_id in ids]


def all_succeeded(stack: Stack, ids: list[str]) -> bool:
    return states(stack, ids) == ["Success"] * len(ids)


def test_a_host_limit_holds_across_aggregations_and_worker_processes(
    stack: Stack, files: FileServer, other_host: FileServer
) -> None:
    stack.configure(host_limits=json.dumps({host(files): 3}))
    api = stack.api()
    # Each worker could run 10 downloads, each aggregation allows 10: only the host limit holds.
    stack.worker(worker_concurrency=10)
    stack.worker(worker_concurrency=10)
    slow = {"delay": 0.05, "chunk": 4096}  # some 0.5 s per download
    ids = [
        api.post_job(job_body(files.url(IMAGE, n=n, **slow), aggr, CALLBACK, limit=10))
        for aggr in (aggr_id("shop-a"), aggr_id("shop-b"))
        for n in range(12)
    ]
    # The other host has no limit: its jobs run beside the limited ones, more than 3 at once.
    others = [
        api.post_job(job_body(other_host.url(IMAGE, n=n, **slow), aggr_id("other"), CALLBACK, limit=10))
        for n in range(6)
    ]
    leased = 0
    done = threading.Event()

    def watch_host_slots() -> None:
        nonlocal leased
        while not done.is_set():
            leased = max(leased, int(stack.db.zcard(f"hostinflight:{host(files)}")))
            time.sleep(0.01)

    watcher = threading.Thread(target=watch_host_slots, daemon=True)
    watcher.start()
    try:
        wait_until(lambda: all_succeeded(stack, ids + others), 60, "every job to succeed")
    finally:
        done.set()
        watcher.join()
    peak = peak_concurrency(files.seen(IMAGE))
    print(f"peak concurrency at the limited host: {peak}; host slots leased at most: {leased}")
    assert peak == 3, "never more than the host limit, and the limit is reached (the test can fail)"
    assert leased <= 3
    assert peak_concurrency(other_host.seen(IMAGE)) > 3
    card = {row["host"]: row for row in api.http.get("/ui/hosts").json()["hosts"]}
    assert (card[host(files)]["limit"], card[host(files)]["in_flight"]) == (3, 0)
    assert host(other_host) not in card, "an unlimited host's downloads cost no host bookkeeping"
    assert not stack.db.exists(f"hostinflight:{host(other_host)}")
    assert f'downloader_host_in_flight{{host="{host(files)}"}} 0.0' in api.http.get("/metrics").text
    assert not stack.db.exists(f"hostinflight:{host(files)}"), "every slot was given back"
    assert not stack.db.keys("leases:*"), "and every lease"


def test_a_429_with_retry_after_pauses_its_host_fleet_wide_while_other_hosts_are_served(
    stack: Stack, files: FileServer, other_host: FileServer
) -> None:
    api = stack.api()
    stack.worker(worker_concurrency=4)
    stack.worker(worker_concurrency=4)
    aggr = aggr_id("mixed")
    files.answer(IMAGE, 429, {"Retry-After": "2"}, b"slow down\n")
    first = api.post_job(job_body(files.url(IMAGE, n=0), aggr, CALLBACK, limit=10))
    wait_until(lambda: files.seen(IMAGE), 15, "the first request")
    wait_until(lambda: stack.db.exists(f"hostpause:{host(files)}"), 10, "the host to be paused")
    refused_at = files.seen(IMAGE)[0].started
    # Shown while it lasts: /metrics and the dashboard's Hosts card.
    scraped = api.http.get("/metrics").text
    assert f'downloader_host_paused_until_seconds{{host="{host(files)}"}}' in scraped
    card = {row["host"]: row for row in api.http.get("/ui/hosts").json()["hosts"]}
    assert card[host(files)]["paused_until"] is not None
    # Queued behind the paused host's jobs in the same aggregation: served all the same.
    paused_jobs = [
        api.post_job(job_body(files.url(IMAGE, n=n), aggr, CALLBACK, limit=10)) for n in range(1, 5)
    ]
    served_meanwhile = [
        api.post_job(job_body(other_host.url(IMAGE, n=n, delay=0.02), aggr, CALLBACK, limit=10))
        for n in range(8)
    ]
    wait_until(lambda: all_succeeded(stack, [first, *paused_jobs, *served_meanwhile]), 30, "every job")
    later = [r.started - refused_at for r in files.seen(IMAGE)[1:]]
    others = [r.started - refused_at for r in other_host.seen(IMAGE)]
    print(f"paused host's next request after {min(later):.2f}s; other host served from {min(others):.2f}s")
    assert min(later) >= 1.9, "no request to the paused host within its Retry-After"
    assert min(others) < 1.5, "the other host was served during the pause"
    # The 429 used the attempt any 429 uses, and no more: 1 refused + 1 served.
    assert stack.db.hget(f"job:{first}", "DownloadCount") == "2"
    assert all(stack.db.hget(f"job:{j}", "DownloadCount") == "1" for j in paused_jobs)


def test_a_dead_workers_host_slots_come_back_when_its_lease_expires(stack: Stack, files: FileServer) -> None:
    # The crash uses the job's only attempt, so the hanging download is not started again.
    stack.configure(lease_seconds=2, crash_tolerance=0, host_limits=json.dumps({host(files): 1}))
    api = stack.api()
    doomed = stack.worker()
    stuck = api.post_job(job_body(files.url(IMAGE, hold=30), aggr_id("stuck"), CALLBACK, max_retries=0))
    wait_until(lambda: files.seen(IMAGE), 15, "the download that will hang")
    doomed.kill9()
    killed_at = time.monotonic()
    waiting = api.post_job(job_body(files.url(IMAGE, n=1), aggr_id("next"), CALLBACK))
    stack.worker()
    wait_until(lambda: all_succeeded(stack, [waiting]), 20, "the next job of the host to run")
    waited = time.monotonic() - killed_at
    print(f"the dead worker's host slot came back after {waited:.2f}s (lease 2 s)")
    assert waited >= 1.0, "not before the dead worker's lease expired"
    # Lease recovery (the surviving worker runs it) fails the crashed job and forgets its slot.
    wait_until(lambda: states(stack, [stuck]) == ["Failed"], 20, "the crashed job to be recovered")
    wait_until(lambda: not stack.db.exists(f"hostinflight:{host(files)}"), 10, "no slot left held")
    assert not stack.db.keys("leases:*"), "nor a lease"


def test_a_host_rate_spaces_the_fleets_requests_to_that_host(stack: Stack, files: FileServer) -> None:
    stack.configure(host_rates=json.dumps({host(files): 2}))  # one request per 500 ms
    api = stack.api()
    stack.worker(worker_concurrency=4)
    stack.worker(worker_concurrency=4)
    ids = [
        api.post_job(job_body(files.url(IMAGE, n=n), aggr_id("rated"), CALLBACK, limit=10)) for n in range(6)
    ]
    wait_until(lambda: all_succeeded(stack, ids), 30, "every job")
    starts = sorted(r.started for r in files.seen(IMAGE))
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    print(f"gaps between requests at 2/s: {', '.join(f'{g:.3f}' for g in gaps)}")
    assert min(gaps) >= 0.4  # 0.5 s, less the jitter between a claim and its request


# --- the scripts on their own ---------------------------------------------------------------

#: Runs the claim script's own host functions on URLs, for comparison with Python's.
HOST_FUNCTIONS_PROBE = (
    scripts._HOST_FUNCTIONS
    + """
local policy = cjson.decode(ARGV[1])
local out = {}
for i = 2, #ARGV do
  local host = url_host(ARGV[i])
  local name = host_name(host)
  table.insert(out, host)
  table.insert(out, tostring(host_rule(policy.limits, host, name, policy.limit)))
  table.insert(out, tostring(host_rule(policy.rates, host, name, policy.rate)))
end
return out
"""
)

PROBE_POLICY = HostPolicy(
    default=HostRule(limit=50, rate=0.0),
    limits={"img.shop.example": 2, "img.shop.example:8443": 1, "*.cdn.example": 4, "*.eu.cdn.example": 3},
    rates={"*.cdn.example": 5.0, "[::1]": 1.5},
)
PROBE_URLS = [
    "http://img.shop.example/a.jpg",
    "https://IMG.shop.example:8443/a",
    "https://img.shop.example:443/a",
    "http://user:pw@a.eu.cdn.example:81/x?y#z",
    "http://b.cdn.example/x",
    "http://cdn.example/x",
    "http://[::1]:8080/x",
    "http://[::1]/x",
    "http://127.0.0.1:8080/files/x",
    "not a url",
    "a/b://c.example/x",
    "é://c.example/x",
    "HTTP://C.Example:80/x",
]


def test_the_scripts_read_hosts_and_rules_as_python_does(rdb: redis.Redis) -> None:
    reply = rdb.eval(HOST_FUNCTIONS_PROBE, 0, PROBE_POLICY.encoded, *PROBE_URLS)
    lua = [
        (h, float(limit), float(rate))
        for h, limit, rate in zip(reply[::3], reply[1::3], reply[2::3], strict=True)
    ]
    python = []
    for url in PROBE_URLS:
        rule = PROBE_POLICY.resolve(hosts.host_of(url))
        python.append((hosts.host_of(url), float(rule.limit), rule.rate))
    assert lua == python


@pytest.fixture
def db(redis_url: str) -> Iterator[Store]:
    store = Store.from_url(redis_url)
    yield store
    store.close()


def enqueue(db: Store, *urls: str, aggr: str = "aggr", host_limit: int = 0) -> list[str]:
    """Jobs queued in the order given (each a millisecond after the one before)."""
    options = JobOptions(host_limit=host_limit)
    start = time.time() - 10
    return [
        db.enqueue_many(
            [
                (
                    Job(id="", url=url, aggr_id=aggr, callback_url=CALLBACK, options=options),
                    Aggregation(aggr, 20),
                )
            ],
            now=start + n / 1000,
        )[0]
        for n, url in enumerate(urls)
    ]


A = "http://a.example/x"
B = "http://b.example/x"


def test_a_full_host_is_stepped_over_and_the_jobs_behind_it_run(db: Store, rdb: redis.Redis) -> None:
    ids = enqueue(db, A, A, A, B, B)
    policy = HostPolicy(limits={"a.example": 1})
    token = new_token()
    claim = db.claim("aggr", 10, token, 30, host_policy=policy)
    assert sorted(claim.ids) == sorted([ids[0], ids[3], ids[4]])
    assert rdb.zcard("hostinflight:a.example") == 1
    assert 0 < rdb.ttl("Hosts") <= 3600, "the hosts seen go by themselves once the fleet is idle"
    held = {ids[0]: f"{token} a.example", ids[3]: token, ids[4]: token}
    assert rdb.hgetall("leases:aggr") == held, "a lease names the host whose slot it holds, if any"
    assert rdb.zrange("Hosts", 0, -1) == ["a.example"]
    again = db.claim("aggr", 10, new_token(), 30, host_policy=policy)
    assert again.held_by_hosts and not again.jobs


def test_without_a_rule_or_a_pause_a_claim_keeps_no_host_books(db: Store, rdb: redis.Redis) -> None:
    ids = enqueue(db, A, A, B)
    claim = db.claim("aggr", 10, new_token(), 30)
    assert sorted(claim.ids) == sorted(ids)
    assert not rdb.keys("hostinflight:*") and not rdb.exists("Hosts", "HostPauses")


def test_a_paused_host_holds_its_jobs_until_the_pause_ends(db: Store, rdb: redis.Redis) -> None:
    ids = enqueue(db, A, B)
    pause(rdb, "a.example", 300)
    assert db.claim("aggr", 10, new_token(), 30).ids == [ids[1]]
    assert db.claim("aggr", 10, new_token(), 30).held_by_hosts
    wait_until(lambda: not rdb.exists("hostpause:a.example"), 5, "the pause to end")
    assert db.claim("aggr", 10, new_token(), 30).ids == [ids[0]]


def test_a_jobs_own_host_limit_lowers_the_hosts(db: Store, rdb: redis.Redis) -> None:
    ids = enqueue(db, A, A, A, host_limit=2)
    assert len(db.claim("aggr", 10, new_token(), 30).ids) == 2
    enqueue(db, A, aggr="other")  # no limit of its own: the host is unlimited for it
    assert len(db.claim("other", 10, new_token(), 30).ids) == 1
    assert set(rdb.zrange("hostinflight:a.example", 0, -1)) >= set(ids[:2])


def test_host_slots_are_renewed_released_and_forgotten_with_their_leases(db: Store, rdb: redis.Redis) -> None:
    ids = enqueue(db, A, A)
    token = new_token()
    limited = HostPolicy(limits={"a.example": 5})
    claim = db.claim("aggr", 10, token, 30, host_policy=limited)
    before = rdb.zscore("hostinflight:a.example", ids[0])
    time.sleep(0.05)
    assert db.renew("aggr", claim.ids, token, 60) == []
    assert rdb.zscore("hostinflight:a.example", ids[0]) > before + 29
    job = Job(id=ids[0], url=A, aggr_id="aggr", callback_url=CALLBACK)
    retry = Outcome(
        fields={"DownloadState": "Pending"}, next_step=NextStep.RETRY, due=time.time(), pause_host=1.5
    )
    assert db.finish(job, token, retry) == 1
    assert rdb.zrange("hostinflight:a.example", 0, -1) == [ids[1]]
    assert 1000 < rdb.pttl("hostpause:a.example") <= 1500
    assert 1000 < rdb.pttl("HostPauses") <= 1500, "claims look at hosts while one is paused"
    assert db.drop_claim("aggr", ids[1], token)
    assert not rdb.exists("hostinflight:a.example")
    assert not rdb.exists("leases:aggr")
    shorter = Outcome(fields={}, next_step=None, pause_host=0.5)
    assert db.claim("aggr", 10, token, 30, host_policy=limited).held_by_hosts
    rdb.delete("hostpause:a.example")
    claimed = db.claim("aggr", 10, token, 30, host_policy=limited)
    assert claimed.ids == [ids[0]]
    pause(rdb, "a.example", 5000)
    assert db.finish(job, token, shorter) == 1
    assert rdb.pttl("hostpause:a.example") > 4000, "a shorter Retry-After does not cut a longer pause"


def pause(rdb: redis.Redis, host: str, ms: int) -> None:
    """Pause `host` for `ms` as FINISH does on a Retry-After: its own key and the fleet's
    "some host is paused" key."""
    rdb.set(f"hostpause:{host}", "x", px=ms)
    rdb.set("HostPauses", "x", px=ms)


def test_a_host_rate_admits_one_request_per_interval(db: Store) -> None:
    enqueue(db, A, A, A)
    policy = HostPolicy(rates={"a.example": 5.0})  # one per 200 ms
    assert len(db.claim("aggr", 10, new_token(), 30, host_policy=policy).ids) == 1
    assert db.claim("aggr", 10, new_token(), 30, host_policy=policy).held_by_hosts
    time.sleep(0.25)
    assert len(db.claim("aggr", 10, new_token(), 30, host_policy=policy).ids) == 1
