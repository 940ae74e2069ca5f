"""`processor.next_try_after`: when a worker claims from an aggregation again, from what its
last claim said (no Redis, no threads)."""

from __future__ import annotations

from downloader.store.records import Claim, ClaimedJob
from downloader.worker.processor import FULL_DELAY, NEVER, PAUSED_DELAY, next_try_after

NOW = 1_000.0
JOB = {"j": ClaimedJob({"ID": "j"})}


def after(claim: Claim, announced: bool = False) -> float:
    return next_try_after(claim, NOW, announced=announced, poll_interval=1.0)


def test_due_jobs_left_behind_are_claimed_at_once() -> None:
    assert after(Claim(JOB, more=True)) == 0.0


def test_a_full_or_host_held_aggregation_is_looked_at_again_soon() -> None:
    assert after(Claim(full=True)) == after(Claim(held_by_hosts=True)) == NOW + FULL_DELAY


def test_a_paused_aggregation_waits_longer() -> None:
    assert after(Claim(paused=True)) == NOW + PAUSED_DELAY


def test_a_job_due_later_is_waited_for_but_never_polled_faster_than_the_interval() -> None:
    assert after(Claim(next_ready=NOW + 30)) == NOW + 30
    assert after(Claim(next_ready=NOW + 0.1)) == NOW + 1.0


def test_nothing_left_waits_for_an_announcement_unless_one_came_meanwhile() -> None:
    assert after(Claim(JOB)) == after(Claim(empty=True, idle=True)) == NEVER
    assert after(Claim(JOB), announced=True) == 0.0
