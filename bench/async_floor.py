#!/usr/bin/env python3
"""The floor of an asyncio worker: a stand-in for `downloader worker`, used ONLY by the
benchmark (`compare.py --floor`), never by the product. One process, one event loop (uvloop
when importable, `--loop asyncio` to choose), draining the jobs our API queued as our worker
would: CLAIM_DOWNLOADS in batches of its free slots, round-robin over the registry and woken by
the same pub/sub announcements; GET on one shared aiohttp session whose resolver refuses what
`outbound.check_address` refuses (literal hosts checked per hop, redirects followed by hand);
the body streamed to `<tmp>/<id>.tmp` with SHA-256 and libmagic's sniff, fsynced on a small
thread pool, renamed to FilesystemStorage's path; the outcome written by FINISH with the
fields `attempts.success` / `decide` build (`--batch`: pipelined); leases renewed every lease/4.

It is a floor, not a worker: no resume, no proxies, no per-host politeness on our side (the
claim script still gets the product's host policy), no watchdog or lease fence, no lease
recovery, stats, heartbeat, disk checks, adoption or graceful release: it just stops on SIGTERM.

    DOWNLOADER_REDIS_URL=... python bench/async_floor.py [--concurrency 16] [--batch] [--no-fsync]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import ipaddress
import os
import socket
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit

import aiohttp
import aiohttp.abc
import redis.asyncio
from redis.exceptions import NoScriptError

from downloader.config import settings as settings_module
from downloader.delivery.storage import FilesystemStorage, location_of
from downloader.errors import AttemptPhase, CorruptJobError, DownloadError, FailureReason, status_reason
from downloader.fetching import download, imaging, mime, outbound, resume
from downloader.jobs.hosts import HostPolicy
from downloader.jobs.models import DownloadResult, Job
from downloader.store import calls, keys
from downloader.store.queue import parse_claim
from downloader.store.records import NextStep, Outcome, new_call_id, new_token
from downloader.worker.attempts import _counted, decide, honour_retry_after, success
from downloader.worker.processor import NEVER, next_try_after, readable_job


class Refused(OSError):
    """The resolver's refusal of a destination (aiohttp wraps it in a ClientConnectorError)."""


class CheckedResolver(aiohttp.abc.AbstractResolver):
    """Resolve once per connection; refuse the host if any address fails the outbound policy."""

    def __init__(self, policy: outbound.Policy) -> None:
        self.policy = policy
        self.inner = aiohttp.ThreadedResolver()

    async def resolve(self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET) -> Any:
        infos = await self.inner.resolve(host, port, family)
        for info in infos:
            refuse(info["host"], self.policy, host)
        return infos

    async def close(self) -> None:
        await self.inner.close()


def refuse(address: str, policy: outbound.Policy, host: str) -> None:
    reason = outbound.check_address(address, policy)
    if reason is not None:
        raise Refused(f"{outbound.NOT_ALLOWED}: {address} ({reason}) for host {host}{outbound.HOW_TO_ALLOW}")


def is_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


class Scripts:
    """EVALSHA of a `ScriptCall`, loading the script on NOSCRIPT; or many in one pipeline."""

    def __init__(self, client: redis.asyncio.Redis) -> None:
        self.redis = client
        self.shas: dict[str, str] = {}

    def sha(self, script: str) -> str:
        sha = self.shas.get(script)
        if sha is None:
            sha = self.shas[script] = hashlib.sha1(script.encode()).hexdigest()  # Redis's own id of it
        return sha

    async def run(self, call: calls.ScriptCall) -> Any:
        args = (self.sha(call.script), len(call.keys), *call.keys, *call.args)
        try:
            return await self.redis.evalsha(*args)  # type: ignore[no-untyped-call]
        except NoScriptError:
            await self.redis.script_load(call.script)
            return await self.redis.evalsha(*args)  # type: ignore[no-untyped-call]

    async def run_many(self, batch: list[calls.ScriptCall]) -> list[Any]:
        pipe = self.redis.pipeline(transaction=False)
        for call in batch:
            pipe.evalsha(self.sha(call.script), len(call.keys), *call.keys, *call.args)
        replies = await pipe.execute(raise_on_error=False)
        for i, reply in enumerate(replies):
            if isinstance(reply, NoScriptError):
                replies[i] = await self.run(batch[i])
            elif isinstance(reply, Exception):
                raise reply
        return list(replies)


class AggregationState:
    def __init__(self) -> None:
        self.next_try = 0.0
        self.noticed = 0
        self.backlog = True
        self.running: dict[str, asyncio.Task[None]] = {}


class Floor:
    def __init__(self, args: argparse.Namespace) -> None:
        s = self.settings = settings_module.load()
        # DOWNLOADER_SYNC_FILES=false, where the product has it, turns fsync off as --no-fsync does.
        args.no_fsync = args.no_fsync or not getattr(s, "sync_files", True)
        self.args = args
        self.concurrency = args.concurrency
        self.token = new_token()
        self.policy = outbound.Policy.from_settings(s)
        self.host_policy = HostPolicy.from_settings(s)
        self.redis = redis.asyncio.Redis.from_url(s.redis_url, decode_responses=True)
        self.scripts = Scripts(self.redis)
        self.storage = FilesystemStorage(Path(s.storage_root))
        self.tmp_dir = Path(s.tmp_dir)
        # Only for its header merge (defaults, the job's, Accept-Encoding, User-Agent): pure.
        self.headers = download.Fetcher(
            download.FetchLimits(s.connect_timeout_seconds, s.download_timeout_seconds, s.max_redirects, 0),
            s.default_request_headers,
            pool_size=args.concurrency,
        )
        self.disk = ThreadPoolExecutor(args.fsync_threads, thread_name_prefix="fsync")
        self.aggregations: dict[str, AggregationState] = {}
        self.ending: set[str] = set()
        self.busy = 0
        self.rotation = 0
        self.notices = 0
        self.wake = asyncio.Event()
        self.pending: list[tuple[calls.ScriptCall, asyncio.Future[Any]]] = []
        self.flushing = False
        self.flusher: asyncio.Task[None] | None = None

    async def run(self) -> None:
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        self.storage.check_writable()
        connector = aiohttp.TCPConnector(
            limit=self.concurrency,
            resolver=CheckedResolver(self.policy),
            ssl=self.headers.outbound.ssl_context,
        )
        self.session = aiohttp.ClientSession(connector=connector, cookie_jar=aiohttp.DummyCookieJar())
        pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
        await pubsub.subscribe(keys.WAKEUP_CHANNEL)
        await self.read_registry()
        tasks = [asyncio.create_task(c) for c in (self.listen(pubsub), self.keep_leases(), self.reread())]
        if self.args.ready_file:
            Path(f"{self.args.ready_file}.{os.getpid()}").touch()
        try:
            while True:
                await self.schedule_once()
        finally:
            for task in tasks:
                task.cancel()
            await self.session.close()

    # --- scheduling (worker/processor.py's, on one loop) ---

    async def schedule_once(self) -> None:
        free = self.concurrency - self.busy
        if free <= 0:
            await self.sleep(None)
            return
        now = time.time()
        names = [a for a, s in self.aggregations.items() if s.next_try <= now]
        if names:
            self.rotation = (self.rotation + 1) % len(names)
            names = names[self.rotation :] + names[: self.rotation]
        claimed = 0
        for aggr_id in names:
            claimed += await self.claim(aggr_id, free - claimed, now)
            if claimed >= free:
                break
        if claimed == 0:
            soonest = min((s.next_try for s in self.aggregations.values()), default=NEVER)
            await self.sleep(min(self.settings.scan_interval_seconds, max(0.005, soonest - now)))

    async def sleep(self, timeout: float | None) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.wake.wait(), timeout)
        self.wake.clear()

    async def claim(self, aggr_id: str, wanted: int, now: float) -> int:
        notices_before = self.notices
        call = calls.claim_call(
            aggr_id=aggr_id,
            wanted=wanted,
            token=self.token,
            call_id=new_call_id(),
            lease_seconds=self.settings.lease_seconds,
            now=time.time(),
            meta_ttl=keys.JOB_META_TTL_SECONDS,
            host_policy=self.host_policy,
        )
        result = parse_claim(aggr_id, await self.scripts.run(call))
        state = self.aggregations.setdefault(aggr_id, AggregationState())
        state.backlog = result.more or result.full or result.held_by_hosts
        state.next_try = next_try_after(
            result,
            now,
            announced=state.noticed > notices_before,
            poll_interval=self.settings.poll_interval_seconds,
        )
        if state.next_try == NEVER and not state.running and not result.jobs:
            del self.aggregations[aggr_id]
        started = 0
        for job_id, claimed in result.jobs.items():
            try:
                job = readable_job(job_id, aggr_id, claimed)
            except CorruptJobError:
                continue  # its lease expires; a floor does not set jobs aside
            state.running[job_id] = asyncio.create_task(self.attempt(state, job))
            self.busy += 1
            started += 1
        return started

    def done(self, state: AggregationState, job: Job) -> None:
        state.running.pop(job.id, None)
        self.ending.discard(job.id)
        if state.backlog or (not state.running and state.next_try == NEVER):
            state.next_try = 0.0
        self.aggregations.setdefault(job.aggr_id, state)
        self.busy -= 1
        self.wake.set()

    def notice(self, aggr_id: str) -> None:
        self.notices += 1
        state = self.aggregations.setdefault(aggr_id, AggregationState())
        state.next_try, state.noticed = 0.0, self.notices
        self.wake.set()

    async def listen(self, pubsub: Any) -> None:
        async for message in pubsub.listen():
            if message.get("type") == "message":
                self.notice(str(message["data"]))

    async def read_registry(self) -> None:
        for aggr_id in await self.redis.smembers(keys.AGGREGATIONS):
            state = self.aggregations.setdefault(aggr_id, AggregationState())
            if state.next_try == NEVER:
                state.next_try = 0.0
        self.wake.set()

    async def reread(self) -> None:
        while True:
            await asyncio.sleep(self.settings.scan_interval_seconds)
            await self.read_registry()

    async def keep_leases(self) -> None:
        lease = self.settings.lease_seconds
        while True:
            await asyncio.sleep(lease / 4)
            for aggr_id, state in list(self.aggregations.items()):
                running = dict(state.running)
                if not running:
                    continue
                call = calls.renew_call(
                    aggr_id=aggr_id, ids=list(running), token=self.token, lease_seconds=lease
                )
                for job_id in await self.scripts.run(call):
                    if job_id in running and job_id not in self.ending:
                        running[job_id].cancel()  # lease lost: another worker may own it now

    # --- one attempt ---

    async def attempt(self, state: AggregationState, job: Job) -> None:
        try:
            try:
                code, image_size, measured = await self.download_and_store(job)
            except DownloadError as err:
                now = time.time()
                s = self.settings
                outcome = decide(
                    job,
                    err,
                    now=now,
                    backoff=s.retry_backoff_seconds,
                    default_max_retries=s.max_retries,
                    retention=s.job_retention_seconds,
                )
                outcome = _counted(
                    job, honour_retry_after(outcome, err, now=now, cap=s.retry_after_max_seconds), err
                )
            else:
                outcome = success(
                    job,
                    code,
                    image_size,
                    self.settings.download_url,
                    now=time.time(),
                    retention=self.settings.job_retention_seconds,
                    measured=measured,
                )
                outcome = _counted(job, outcome)
            self.ending.add(job.id)
            await self.finish(job, outcome)
        except Exception as exc:  # a floor logs and lets the lease expire
            print(f"job {job.id}: {type(exc).__name__}: {exc}", file=sys.stderr)
        finally:
            self.done(state, job)

    async def finish(self, job: Job, outcome: Outcome) -> None:
        now = time.time()
        call = calls.finish_call(
            job=job,
            token=self.token,
            call_id=new_call_id(),
            outcome=outcome,
            now=now,
            meta_ttl=keys.JOB_META_TTL_SECONDS,
        )
        done = await (self.batched(call) if self.args.batch else self.scripts.run(call))
        if int(done) == 1 and outcome.next_step == NextStep.DELETE:
            await self.scripts.run(calls.count_job_latency_call(job_id=job.id, aggr_id=job.aggr_id, now=now))

    async def batched(self, call: calls.ScriptCall) -> Any:
        """Queue `call` for the next pipeline: one is sent at a time, with every call that
        arrived while the last one was out (so a lone job waits for nothing)."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.pending.append((call, future))
        if not self.flushing:
            self.flushing = True
            self.flusher = asyncio.create_task(self.flush())
        return await future

    async def flush(self) -> None:
        try:
            while self.pending:
                batch, self.pending = self.pending[: self.args.batch_max], self.pending[self.args.batch_max :]
                try:
                    replies = await self.scripts.run_many([c for c, _ in batch])
                except Exception as exc:
                    for _, future in batch:
                        future.set_exception(exc)
                    continue
                for (_, future), reply in zip(batch, replies, strict=True):
                    future.set_result(reply)
        finally:
            self.flushing = False

    async def download_and_store(self, job: Job) -> tuple[int, str, DownloadResult]:
        s = self.settings
        budget = (
            min(job.download_timeout, s.download_timeout_seconds)
            if job.download_timeout > 0
            else s.download_timeout_seconds
        )
        cap = (
            min(job.options.max_size, s.max_download_bytes)
            if job.options.max_size > 0
            else s.max_download_bytes
        )
        path = resume.tmp_path(self.tmp_dir, job.id)
        try:
            async with asyncio.timeout(budget):
                code, final_url, size, sha256, mime_type = await self.fetch(job, path, cap)
            if self.args.no_fsync:  # nothing that waits on the disk: no thread hop either
                image_size = self.keep(job, path, mime_type)
            else:
                image_size = await asyncio.get_running_loop().run_in_executor(
                    self.disk, self.keep, job, path, mime_type
                )
        except BaseException:
            with contextlib.suppress(OSError):
                path.unlink(missing_ok=True)
            raise
        return (
            code,
            image_size,
            DownloadResult(sha256=sha256, size=size, content_type=mime_type, final_url=final_url),
        )

    async def fetch(self, job: Job, path: Path, cap: int) -> tuple[int, str, int, str, str]:
        headers, _ = self.headers.headers_for(job.request_headers)
        url = job.url
        try:
            for _ in range(self.settings.max_redirects + 1):
                reason = outbound.check_url(url)
                if reason is not None:
                    raise DownloadError(
                        AttemptPhase.CREATING_REQUEST,
                        f"{url}: {reason}",
                        reason=FailureReason.OTHER,
                        retriable=False,
                    )
                host = urlsplit(url).hostname or ""
                if is_literal(host):  # aiohttp never asks the resolver about a literal address
                    refuse(host, self.policy, host)
                async with self.session.get(url, headers=headers, allow_redirects=False) as response:
                    location = response.headers.get("Location")
                    if response.status in outbound.REDIRECT_STATUSES and location is not None:
                        url = urljoin(url, location)
                        continue
                    check_status(response)
                    return (response.status, url, *await self.receive(job, response, path, cap))
            raise DownloadError(
                AttemptPhase.PERFORMING_REQUEST,
                f"stopped after {self.settings.max_redirects} redirects",
                reason=FailureReason.NETWORK,
                retriable=True,
            )
        except (Refused, aiohttp.ClientConnectorError) as exc:
            refused = exc if isinstance(exc, Refused) else exc.os_error
            if not isinstance(refused, Refused):
                raise transport(AttemptPhase.PERFORMING_REQUEST, exc) from exc
            phase = download.DESTINATION_PHASE
            raise DownloadError(
                phase, str(refused), reason=FailureReason.DESTINATION_NOT_ALLOWED, retriable=False
            ) from exc
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise transport(AttemptPhase.PERFORMING_REQUEST, exc) from exc

    async def receive(
        self, job: Job, response: aiohttp.ClientResponse, path: Path, cap: int
    ) -> tuple[int, str, str]:
        """Stream the body to `path`: size capped, SHA-256, sniffed (checked against the job's
        pattern, if any) as the product's Fetcher does for every download."""
        code = response.status
        pattern = mime.parse_pattern(job.mime_type) if job.mime_type else None
        sniff = pattern is not None or self.args.sniff == "always"
        digest = hashlib.sha256()
        size, head = 0, b""
        with path.open("wb") as out:
            async for chunk in response.content.iter_any():
                size += len(chunk)
                if size > cap:
                    raise download._too_large(cap, code)  # the product's error
                if sniff and len(head) < mime.SNIFF_BYTES:
                    head += chunk[: mime.SNIFF_BYTES - len(head)]
                out.write(chunk)
                digest.update(chunk)
        # the product's own check: libmagic on the head, the job's pattern, its error
        detected = download._check_mime(head, pattern, code) if sniff else ""
        return size, digest.hexdigest(), detected

    def keep(self, job: Job, path: Path, mime_type: str) -> str:
        """On the disk pool (on the loop with --no-fsync): fsync, the image size if asked, the move."""
        if not self.args.no_fsync:
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        image_size = imaging.image_size(path, mime_type) if job.extract_image_size else ""
        if self.args.no_fsync:
            final = self.storage.path(location_of(job).key)
            try:
                path.replace(final)
            except FileNotFoundError:
                final.parent.mkdir(parents=True, exist_ok=True)
                path.replace(final)
        else:
            self.storage.store(path, location_of(job).key)  # rename, and fsync of the directory
        return image_size


def check_status(response: aiohttp.ClientResponse) -> None:
    code = response.status
    if 200 <= code < 300 and code not in (204, 205, 206):
        return
    wait = (
        download.retry_after(response.headers.get("Retry-After", ""))
        if code in download.RETRY_AFTER_STATUSES
        else None
    )
    raise DownloadError(
        AttemptPhase.PROCESSING_RESPONSE,
        f"Received status code {code} {response.reason or ''}".rstrip(),
        reason=status_reason(code),
        retriable=code >= 500 or code in download.RETRIABLE_CLIENT_STATUSES,
        response_code=code,
        retry_after=wait,
    )


def transport(phase: AttemptPhase, exc: BaseException) -> DownloadError:
    timed_out = isinstance(exc, (TimeoutError, aiohttp.ServerTimeoutError))
    return DownloadError(
        phase,
        f"{type(exc).__name__}: {exc}",
        reason=FailureReason.TIMEOUT if timed_out else FailureReason.NETWORK,
        retriable=True,
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--concurrency", type=int, default=16, help="downloads at once (16, as the product's default)"
    )
    ap.add_argument(
        "--loop", choices=("uvloop", "asyncio"), default="uvloop", help="uvloop when importable (default)"
    )
    ap.add_argument(
        "--batch", action="store_true", help="pipeline the FINISH calls of jobs that end together"
    )
    ap.add_argument("--batch-max", type=int, default=64, help="FINISH calls per pipeline at most (64)")
    ap.add_argument(
        "--no-fsync",
        action="store_true",
        help="neither the file nor the storage directory is fsynced; the move runs on the loop",
    )
    ap.add_argument("--fsync-threads", type=int, default=4, help="threads of the disk pool (4)")
    ap.add_argument(
        "--sniff",
        choices=("always", "asked"),
        default="always",
        help="libmagic on every download, as the product (its content_type is in the callback), or only for a job's mime_type",
    )
    ap.add_argument("--ready-file", help="touch <this>.<pid> once subscribed and the registry read")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    async def floor_main() -> None:  # built inside the loop: aiohttp and redis bind to it
        await Floor(args).run()

    if args.loop == "uvloop":
        try:
            import uvloop
        except ImportError:
            args.loop = "asyncio"
        else:
            uvloop.run(floor_main())
            return 0
    asyncio.run(floor_main())
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
