"""2,000 jobs over 20 aggregations while workers are SIGKILLed every 2-4 s and replaced.

What is proved: every acknowledged job ends with a delivered callback (identical duplicates
are allowed, at-least-once, and counted; different payloads for one job are not), every
stored file equals its source, no lease is left behind, and the fleet-wide limit holds: the
file server counts the requests of each aggregation that are in flight at once, which must
never exceed that aggregation's limit, kills or not.
"""

from __future__ import annotations

import dataclasses
import os
import re
import time
from typing import cast

import pytest
from support.chaos import (
    CallbackFigures,
    StoreWatcher,
    WorkerKiller,
    print_figures,
    quiet_disconnects,
    wait_delivered,
    wait_no_leases,
)
from support.posting import JobPoster
from support.procs import Stack, aggr_id, job_body
from support.servers import CallbackServer, FileServer

pytestmark = pytest.mark.chaos

JOBS = 2000
AGGREGATIONS = 20
WORKERS = 3
FILE_BYTES = 8192
CHUNKS = 4
LEASE_SECONDS = 3
BACKLOG = 40 * AGGREGATIONS  # jobs posted before the workers start


def test_two_thousand_jobs_survive_random_worker_kills_within_the_fleet_wide_limit(
    stack: Stack, files: FileServer, callbacks: CallbackServer
) -> None:
    # A killed worker's jobs come back after one short lease; kills must never fail a job.
    stack.configure(lease_seconds=LEASE_SECONDS, crash_tolerance=1000, worker_concurrency=32)
    quiet_disconnects(files)
    api = stack.api()
    stack.notifier()
    aggrs = [aggr_id("chaos") for _ in range(AGGREGATIONS)]
    limits = {a: 2 + i % 5 for i, a in enumerate(aggrs)}  # 2..6, 80 slots in all
    # One random file per aggregation: a stored file is compared with its own source.
    sources = {a: os.urandom(FILE_BYTES) for a in aggrs}
    for a, data in sources.items():
        files.add_file(f"{a}.bin", data)
    bodies = []
    for i in range(JOBS):
        a = aggrs[i % AGGREGATIONS]
        # 4 chunks with a pause before each: 50-200 ms per download, long enough to overlap.
        delay = 0.0125 + (i * 7919 % 100) / 100 * 0.0375
        url = files.url(f"{a}.bin", aggr=a, i=i, delay=f"{delay:.4f}", chunk=FILE_BYTES // CHUNKS)
        bodies.append(job_body(url, a, callbacks.url, limit=limits[a]))

    started = time.monotonic()
    # A backlog in every aggregation before any worker runs, so that each one starts at its
    # limit however slowly a loaded machine posts the rest: the limit check then means something.
    backlog = JobPoster(api.url, bodies[:BACKLOG], threads=6).start().join(60).acknowledged
    # Job ids are learnt only from the 201s; a stored file must be one of the sources, whole.
    complete = set(sources.values())
    watcher = StoreWatcher(stack.storage_root, lambda job_id, data: data in complete).start()
    killer = WorkerKiller(stack, WORKERS, every=(2.0, 4.0), seed=20).start()
    try:
        rest = JobPoster(api.url, bodies[BACKLOG:], threads=6).start().join(120).acknowledged
        acked = {**backlog, **{BACKLOG + i: job_id for i, job_id in rest.items()}}
        posted = time.monotonic()
        wait_delivered(callbacks, acked.values(), timeout=170 - (posted - started))
        done = time.monotonic()
    finally:
        killer.stop()
        watcher.stop()
    # Leases of the last killed worker expire after LEASE_SECONDS; late duplicates show up too.
    left = wait_no_leases(stack.db, LEASE_SECONDS * 3)
    figures = CallbackFigures.count(callbacks, acked.values())
    peaks = {a: files.peak_downloads_for(a) for a in aggrs}
    aborted = sum(1 for r in files.seen() if r.aborted)
    violations = {a: f"{peaks[a]} > {limits[a]}" for a in aggrs if peaks[a] > limits[a]}
    at_limit = sum(1 for a in aggrs if peaks[a] == limits[a])
    requests = len(files.seen())
    leases = LeaseReports.read(stack)

    print_figures(
        "worker kills",
        {
            "jobs posted / acknowledged": f"{JOBS} / {len(acked)}",
            "aggregations (limits 2-6)": AGGREGATIONS,
            "workers (32 threads each)": WORKERS,
            "worker SIGKILLs": killer.kills,
            "workers that exited by themselves": len(killer.exited_by_themselves),
            "downloads started (requests)": f"{requests} ({requests - JOBS} repeated after kills)",
            "callbacks delivered": figures.delivered + figures.duplicates,
            "duplicate callbacks (identical)": figures.duplicates,
            "divergent duplicates": len(figures.divergent),
            "lost": len(figures.lost),
            "failed jobs": len(figures.failed_payloads),
            "limit violations": len(violations),
            "requests whose client was gone (not counted)": aborted,
            "leases reported lost / of jobs given back": f"{len(leases.lost)} / {len(leases.lost & leases.recovered)}",
            "downloads stopped by the lease fence": len(leases.fenced),
            "aggregations that reached their limit": f"{at_limit} of {AGGREGATIONS}",
            "peak in flight / limit": " ".join(f"{peaks[a]}/{limits[a]}" for a in aggrs),
            "stored files checked / bad": f"{len(watcher.checked)} / {len(watcher.bad)}",
            "leases left": left or 0,
            "posting took": f"{posted - started:.1f} s",
            "wall time (first POST to last callback)": f"{done - started:.1f} s",
        },
    )
    assert len(acked) == JOBS
    assert killer.kills >= 3, "the run was too short to kill anything"
    assert not killer.exited_by_themselves, killer.exited_by_themselves
    assert figures.lost == []
    assert figures.divergent == [], "one job, two different payloads"
    assert figures.failed_payloads == [], "a kill failed a job"
    assert leases.lost <= leases.recovered, (
        f"leases reported lost that nobody took: {leases.lost - leases.recovered}"
    )
    if violations:
        print(explain_overlaps(stack, files, violations, acked))
    assert violations == {}, f"the fleet-wide limit was exceeded: {violations}"
    # The limit check means something only if the limit was actually reached.
    assert at_limit >= AGGREGATIONS * 3 // 4, f"only {at_limit} aggregations ever reached their limit"
    assert watcher.bad == [], watcher.bad[:5]
    assert watcher.checked == set(acked.values()), "every job's file stored, complete"
    for i, job_id in acked.items():
        assert stack.stored_path(job_id).read_bytes() == sources[bodies[i]["aggr_id"]], job_id
    assert left == {}, f"leases left behind: {left}"
    assert not list(stack.db.scan_iter(match="jobs:*")), "queues left non-empty"


@dataclasses.dataclass
class LeaseReports:
    """What the processes' logs say of download leases: the jobs whose lease a worker found
    taken, those a process gave back after their lease expired, those a worker stopped."""

    lost: set[str]
    recovered: set[str]
    fenced: set[str]

    @classmethod
    def read(cls, stack: Stack) -> LeaseReports:
        text = "\n".join(p.log.read_text(errors="replace") for p in stack.procs)
        return cls(
            lost=set(re.findall(r"lost the lease of job (\S+);", text)),
            recovered=set(re.findall(r"job (\S+) of \S+: its worker was lost", text)),
            fenced=set(re.findall(r"job (\S+): its lease was not renewed", text)),
        )


def explain_overlaps(
    stack: Stack, files: FileServer, violations: dict[str, str], acked: dict[int, str]
) -> str:
    """The requests served together at each violating peak, with every log line naming their
    jobs: which processes held them, and whether a lease was lost or recovered meanwhile."""
    wall = time.time() - time.monotonic()

    def clock(t: float) -> str:  # as the logs print it
        return time.strftime("%H:%M:%S", time.localtime(wall + t)) + f",{int((wall + t) % 1 * 1000):03d}"

    logs = {p.log.name: p.log.read_text(errors="replace").splitlines() for p in stack.procs}
    out = ["", "== overlapping requests at each violating peak =="]
    for aggr in violations:
        for r in files.peak_requests_for(aggr):
            job_id = acked.get(int(r.query["i"]), "?")
            out.append(f"{aggr} job {job_id} (i={r.query['i']}, port {r.client_port}): "
                       f"served {clock(r.started)} .. {clock(cast(float, r.served))}")  # fmt: skip
            out += [f"    {name}: {line}" for name, lines in logs.items() for line in lines if job_id in line]
    return "\n".join(out)
