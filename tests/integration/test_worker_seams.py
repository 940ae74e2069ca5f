"""The helpers the worker, the notifier, the API and the operator share, on a real Redis: one
heartbeat (from a housekeeping loop or as a task, on either store) and one lease recovery."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator

import pytest
import redis.asyncio
from support.procs import free_port

from downloader.config.settings import Settings
from downloader.jobs.models import Aggregation, Job
from downloader.observability.heartbeat import Heartbeat
from downloader.store import AsyncStore, Instance, Store, keys, new_token
from downloader.worker.housekeeping import LeaseRecovery

pytestmark = pytest.mark.integration


@pytest.fixture
def db(redis_url: str) -> Iterator[Store]:
    store = Store.from_url(redis_url)
    yield store
    store.close()


def listed(db: Store, role: str) -> list[str]:
    return [Instance.decode(role, member).id for member in db.redis.zrange(keys.instances(role), 0, -1)]


def test_a_loop_beats_once_per_interval_from_the_first_round(db: Store) -> None:
    heartbeat = Heartbeat(db, Instance.here("worker", "w-1"), interval=3600)
    assert heartbeat.due() and not heartbeat.due()  # at once, then only after the interval
    heartbeat.beat()
    assert listed(db, "worker") == ["w-1"]


@pytest.mark.parametrize("asynchronous", [False, True], ids=["operator-store", "api-store"])
def test_a_task_beats_on_either_store_until_stopped(redis_url: str, db: Store, asynchronous: bool) -> None:
    async def run() -> None:
        client = redis.asyncio.Redis.from_url(redis_url, decode_responses=True)
        store: Store | AsyncStore = AsyncStore(client) if asynchronous else db
        stopping = asyncio.Event()
        task = asyncio.create_task(
            Heartbeat(store, Instance.here("api", "a-1"), interval=0.05).forever(stopping)
        )
        await asyncio.sleep(0.2)
        assert listed(db, "api") == ["a-1"]
        stopping.set()
        await asyncio.wait_for(task, 2)  # ends between beats, never cancelled inside one
        await client.aclose()

    asyncio.run(run())


def test_a_beat_on_a_dead_redis_is_logged_and_the_task_goes_on(caplog: pytest.LogCaptureFixture) -> None:
    dead = Store.from_url(f"redis://127.0.0.1:{free_port()}/0")

    async def run() -> None:
        stopping = asyncio.Event()
        task = asyncio.create_task(
            Heartbeat(dead, Instance.here("operator"), interval=0.05).forever(stopping)
        )
        await asyncio.sleep(0.2)
        assert not task.done()
        stopping.set()
        await asyncio.wait_for(task, 5)

    with caplog.at_level(logging.WARNING, "downloader.heartbeat"):
        asyncio.run(run())
    assert any(r.getMessage().startswith("heartbeat failed") for r in caplog.records)
    dead.close()


def test_lease_recovery_requeues_a_dead_workers_job_and_wakes_the_loop(db: Store) -> None:
    settings = Settings(scan_interval_seconds=30, lease_seconds=60, recovery_interval_seconds=2)
    woken: list[bool] = []
    recovery = LeaseRecovery(db, settings, on_recovered=lambda: woken.append(True))
    job = Job(id="", url="http://127.0.0.1:9/x", aggr_id="aggr", callback_url="http://127.0.0.1:9/cb")
    (job_id,) = db.enqueue_many([(job, Aggregation(id="aggr", limit=2))], now=time.time() - 1000)
    db.claim("aggr", 1, new_token(), lease_seconds=0.05)  # its worker dies holding it
    time.sleep(0.2)
    assert recovery.due()  # the first pass at once
    recovery.recover_expired_leases()
    assert woken == [True]
    assert db.redis.zscore(keys.queue("aggr"), job_id) is not None
    assert recovery.schedule.due_in() == pytest.approx(30, abs=1)  # nothing held: the scan interval
    recovery.recover_expired_leases()
    assert woken == [True]  # nothing recovered: nothing to wake for
