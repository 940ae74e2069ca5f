"""The tools: `enqueue` (the original's jobcat: one job per URL of a file) and `retry`
(reschedule-failed-callbacks: Failed callbacks back in the queue).

Both show their progress on stderr and end with a summary on stdout; a job rejected or
not retried makes the exit status 1. Both work on the configured Redis, else on that of a
`downloader up` running in the current directory (cli/discovery.py), or through `--api URL`.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import logging
import os
import sys
import threading
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from redis.exceptions import ConnectionError as RedisConnectionError

from downloader.cli import discovery
from downloader.cli.configuration import load_settings
from downloader.config.settings import Settings
from downloader.errors import ConfigurationError, RequestRejected, StoreError
from downloader.jobs import validation
from downloader.jobs.models import Aggregation, Job
from downloader.observability import logs
from downloader.store import idempotency
from downloader.store.idempotency import IdempotencyConflict
from downloader.store.redis_client import redacted_url

#: Reasons listed in a summary; the rest are counted.
SHOWN_REASONS = 5
#: Jobs per pipelined Redis round trip (and per progress update at most).
ENQUEUE_BATCH = 500
#: Concurrent POSTs of `enqueue --api`.
API_THREADS = 8
#: Tries of one POST of `enqueue --api` whose answer was lost (a timeout, a dropped connection):
#: safe with its idempotency key, which makes a retry answer the job the first try queued.
API_ATTEMPTS = 3


class Progress:
    """`[#####.....] 512/1000 jobs, 3 rejected, 850/s`: redrawn with \\r on a terminal,
    otherwise one line per 10% (logs of CI jobs do not want carriage returns)."""

    WIDTH = 20
    REDRAW_SECONDS = 0.1

    def __init__(self, total: int, noun: str, stream: Any = None) -> None:
        self.total, self.noun = total, noun
        self.stream = stream if stream is not None else sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.started = time.monotonic()
        self._drawn = 0.0
        self._tenths = 0
        self.update(0, 0)

    def rate(self, done: int) -> float:
        return done / max(time.monotonic() - self.started, 1e-6)

    def text(self, done: int, rejected: int) -> str:
        return f"{done}/{self.total} {self.noun}, {rejected} rejected, {self.rate(done):.0f}/s"

    def update(self, done: int, rejected: int, final: bool = False) -> None:
        if self.tty:
            now = time.monotonic()
            if final or done == 0 or now - self._drawn >= self.REDRAW_SECONDS:
                filled = self.WIDTH * done // max(self.total, 1)
                bar = "#" * filled + "." * (self.WIDTH - filled)
                self.stream.write(f"\r[{bar}] {self.text(done, rejected)}" + ("\n" if final else ""))
                self.stream.flush()
                self._drawn = now
            return
        tenths = 10 * done // max(self.total, 1)
        if tenths > self._tenths:
            self._tenths = tenths
            self.stream.write(f"{tenths * 10}% {self.text(done, rejected)}\n")
            self.stream.flush()


def _tool_settings(args: argparse.Namespace) -> Settings:
    """The settings, with the Redis of a `downloader up` running in this directory when none
    is configured (said in one line: the tool is then not on the default Redis)."""
    from downloader.cli.services import UP_DATA_DIR

    if sys.stderr.isatty():
        # Which Redis is said below, or is the user's own: the client's INFO line is noise here.
        logging.getLogger("downloader.redis").setLevel(logging.WARNING)
    if not discovery.redis_configured(args.config):
        found = discovery.find(UP_DATA_DIR)
        if found is not None:
            print(f"downloader {args.command}: {found.describe()}", file=sys.stderr)
            return load_settings(args, redis_url=found.redis_url)
    return load_settings(args)


@contextlib.contextmanager
def _reaching(settings: Settings) -> Iterator[None]:
    """A Redis that cannot be reached (after the client's retries) is one line saying where
    the tool looked and what else it could be told."""
    try:
        yield
    except (StoreError, RedisConnectionError) as exc:
        cause = exc if isinstance(exc, RedisConnectionError) else exc.__cause__
        if not isinstance(cause, RedisConnectionError):
            raise
        raise StoreError(
            f"cannot reach Redis at {redacted_url(settings.redis_url)} ({cause}); start `./scripts/up` "
            "in this directory, set DOWNLOADER_REDIS_URL, or give --api URL"
        ) from exc


def _api_headers(args: argparse.Namespace) -> dict[str, str]:
    token = args.api_key or os.environ.get("DOWNLOADER_API_KEY", "")
    logs.add_secrets([token])
    return {"Authorization": f"Bearer {token}"} if token else {}


def _read_urls(name: str) -> list[tuple[int, str]]:
    """(line number, url) of each line that is neither blank nor a # comment."""
    try:
        text = sys.stdin.read() if name == "-" else Path(name).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigurationError(f"cannot read {name}: {exc}") from exc
    lines = ((n, line.strip()) for n, line in enumerate(text.splitlines(), start=1))
    return [(n, line) for n, line in lines if line and not line.startswith("#")]


def _job_fields(args: argparse.Namespace, url: str) -> dict[str, object]:
    """A POST /download body for one URL (the API's field names and JSON types)."""
    fields: dict[str, object] = {"url": url, "aggr_id": args.aggr, "aggr_limit": args.limit}
    optional = {
        "callback_url": args.callback_url,
        "callback_type": args.callback_type,
        "callback_dst": args.callback_dst,
        "mime_type": args.mime_type,
        "extra": args.extra,
    }
    fields.update({k: v for k, v in optional.items() if v is not None})
    if args.extract_image_size:
        fields["extract_image_size"] = True
    return fields


def _validate(fields: dict[str, object], max_size_cap: int | None) -> tuple[Job, Aggregation]:
    job = validation.job_from_fields(fields, max_size_cap)
    aggregation = validation.aggregation_from_fields(fields)
    validation.check_feasible(job, aggregation)  # what POST /download refuses, refused here too
    return job, aggregation


def enqueue_urls(args: argparse.Namespace) -> int:
    if args.callback_url and (args.callback_type or args.callback_dst):
        raise ConfigurationError("give --callback-url, or --callback-type with --callback-dst, not both")
    try:  # options wrong for every line: one message, before reading anything
        _validate(_job_fields(args, "http://example.com/"), None)
    except RequestRejected as exc:
        raise ConfigurationError(f"invalid job options: {exc.reason}") from exc
    urls = _read_urls(args.file)
    options = {k: v for k, v in _job_fields(args, "").items() if k != "url"}
    keys = line_keys(args.file, urls, args.idempotency_prefix, options) if args.idempotency else {}
    tally = _Tally(Progress(len(urls), "jobs"))
    if args.api:
        _enqueue_via_api(args, urls, tally, keys)
    else:
        _enqueue_to_redis(args, urls, tally, keys)
    tally.progress.update(tally.done, len(tally.rejected), final=True)
    if args.ids:
        Path(args.ids).write_text("".join(f"{n}\t{url}\t{i}\n" for n, url, i in tally.queued))
    tally.summary()
    return 1 if tally.rejected else 0


class _Tally:
    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self.queued: list[tuple[int, str, str]] = []
        self.rejected: list[tuple[int, str]] = []
        self.replayed = 0
        """Queued jobs whose idempotency keys named jobs queued already (not queued again)."""

    @property
    def done(self) -> int:
        return len(self.queued) + len(self.rejected)

    def tick(self) -> None:
        self.progress.update(self.done, len(self.rejected))

    def summary(self) -> None:
        elapsed = time.monotonic() - self.progress.started
        print(
            f"total {self.done}, queued {len(self.queued)}, rejected {len(self.rejected)}, "
            f"elapsed {elapsed:.2f}s, {self.progress.rate(self.done):.0f} jobs/s"
        )
        if self.replayed:
            # By an earlier run (a re-run after a crash), or by a POST whose answer was lost.
            print(
                f"  {self.replayed} of them were queued already, under the same idempotency keys: not again"
            )
        for number, reason in self.rejected[:SHOWN_REASONS]:
            print(f"  line {number}: {reason}")
        if len(self.rejected) > SHOWN_REASONS:
            print(f"  ... and {len(self.rejected) - SHOWN_REASONS} more")


def line_keys(
    name: str, urls: list[tuple[int, str]], prefix: str, options: dict[str, object]
) -> dict[int, str]:
    """An idempotency key per line: `prefix` and a hash of the file's absolute path (`-` for
    stdin), the line's number, its text and the run's job `options`. A re-run of the same file
    with the same options makes the same keys, also when lines were appended meanwhile; an
    edited line, or the file queued with other options (another aggregation), makes new jobs."""
    source = "-" if name == "-" else os.path.realpath(name)
    same_for_every_line = json.dumps(options, sort_keys=True)
    keys = {}
    for number, url in urls:
        identity = f"{source}\0{number}\0{url}\0{same_for_every_line}"
        keys[number] = prefix + hashlib.sha256(identity.encode()).hexdigest()[:32]
    if keys:
        problem = idempotency.key_problem(next(iter(keys.values())))
        if problem:
            raise ConfigurationError(f"--idempotency-prefix: {problem}")
    return keys


def _enqueue_to_redis(
    args: argparse.Namespace, urls: list[tuple[int, str]], tally: _Tally, keys: dict[int, str]
) -> None:
    from downloader.store import Idempotency, Store

    settings = _tool_settings(args)
    store = Store.from_settings(settings)
    # Small enough batches that a run shows progress at least every 5%.
    size = max(1, min(ENQUEUE_BATCH, len(urls) // 20))
    try:
        for start in range(0, len(urls), size):
            valid: list[tuple[int, str, tuple[Job, Aggregation]]] = []
            for number, url in urls[start : start + size]:
                try:
                    pair = _validate(_job_fields(args, url), settings.max_download_bytes)
                except RequestRejected as exc:
                    tally.rejected.append((number, f"{exc.target}: {exc.reason}"))
                else:
                    valid.append((number, url, pair))
            window = settings.idempotency_window_seconds
            scoped = [
                Idempotency(idempotency.ALL_SCOPE, keys[n], window) if n in keys else None
                for n, _, _ in valid
            ]
            with _reaching(settings):
                results = store.enqueue_keyed([pair for _, _, pair in valid], scoped)
            for (number, url, _), result in zip(valid, results, strict=True):
                if result.conflict:
                    tally.rejected.append((number, str(IdempotencyConflict(keys[number], result.id, window))))
                else:
                    tally.queued.append((number, url, result.id))
                    tally.replayed += result.replayed
            tally.tick()
    finally:
        store.close()


def _enqueue_via_api(
    args: argparse.Namespace, urls: list[tuple[int, str]], tally: _Tally, keys: dict[int, str]
) -> None:
    import requests

    headers = _api_headers(args)
    endpoint = args.api.rstrip("/") + "/download"
    local = threading.local()

    def post(item: tuple[int, str]) -> tuple[int, str, str | None, str, bool]:
        number, url = item
        if not hasattr(local, "session"):
            local.session = requests.Session()
        keyed = {**headers, "Idempotency-Key": keys[number]} if number in keys else headers
        for attempt in range(1, API_ATTEMPTS + 1 if number in keys else 2):
            try:
                resp = local.session.post(endpoint, json=_job_fields(args, url), headers=keyed, timeout=30)
                break
            except requests.RequestException as exc:
                if attempt >= API_ATTEMPTS or number not in keys:
                    return number, url, None, f"{type(exc).__name__}: {exc}", False
                time.sleep(0.5 * attempt)  # the key makes sending it again safe
        if resp.status_code == 201:
            replayed = resp.headers.get("Idempotent-Replayed") == "true"
            return number, url, str(resp.json()["id"]), "", replayed
        return number, url, None, f"HTTP {resp.status_code}: {resp.text.strip()[:300]}", False

    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(API_THREADS) as pool:
        for number, url, job_id, reason, replayed in pool.map(post, urls):
            if job_id is None:
                tally.rejected.append((number, reason))
            else:
                tally.queued.append((number, url, job_id))
                tally.replayed += replayed
            tally.tick()


def retry_callbacks(args: argparse.Namespace) -> int:
    if bool(args.failed) == bool(args.job_ids):
        raise ConfigurationError("give --failed or job ids (not both)")
    if args.aggr and not args.failed:
        raise ConfigurationError("--aggr goes with --failed")
    if args.api and args.failed:
        raise ConfigurationError("--failed scans Redis: with --api, give the job ids")
    started = time.monotonic()
    if args.api:
        ids, scanned = list(dict.fromkeys(args.job_ids)), len(args.job_ids)
        if args.dry_run:
            return _dry_run(ids, scanned, started)
        skipped = _reschedule_via_api(args, ids)
    else:
        outcome = _retry_in_redis(args, started)
        if outcome is None:
            return 0
        ids, scanned, skipped = outcome
    print(
        f"scanned {scanned}, rescheduled {len(ids) - len(skipped)}, skipped {len(skipped)}, "
        f"elapsed {time.monotonic() - started:.2f}s"
    )
    for line in skipped[:SHOWN_REASONS]:
        print(f"  {line}")
    # The original's exit status counted failures; a job given by id that was not retried is one.
    return 1 if skipped and not args.failed else 0


def _retry_in_redis(args: argparse.Namespace, started: float) -> tuple[list[str], int, list[str]] | None:
    """(ids, how many scanned, why some were skipped); None after a dry run."""
    from downloader.store import Store

    settings = _tool_settings(args)
    store = Store.from_settings(settings)
    try:
        with _reaching(settings):
            if args.failed:
                ids, scanned = _failed_callbacks(store, args.aggr)
            else:
                ids, scanned = list(dict.fromkeys(args.job_ids)), len(args.job_ids)
            if args.dry_run:
                _dry_run(ids, scanned, started)
                return None
            return ids, scanned, _reschedule(store, ids)
    finally:
        store.close()


def _dry_run(ids: list[str], scanned: int, started: float) -> int:
    for job_id in ids:
        print(job_id)
    print(
        f"scanned {scanned}, would reschedule {len(ids)} (dry run: nothing changed), "
        f"elapsed {time.monotonic() - started:.2f}s"
    )
    return 0


def _reschedule_via_api(args: argparse.Namespace, ids: list[str]) -> list[str]:
    """POST /retry/<id> for each id; returns why the others were skipped (the API's words)."""
    import requests

    headers = _api_headers(args)
    base = args.api.rstrip("/") + "/retry/"
    progress = Progress(len(ids), "callbacks")
    skipped: list[str] = []
    with requests.Session() as session:
        for done, job_id in enumerate(ids, start=1):
            try:
                resp = session.post(base + urllib.parse.quote(job_id, safe=""), headers=headers, timeout=30)
            except requests.RequestException as exc:
                skipped.append(f"{job_id}: {type(exc).__name__}: {exc}")
            else:
                if resp.status_code != 204:
                    skipped.append(f"{job_id}: HTTP {resp.status_code}: {resp.text.strip()[:300]}")
            progress.update(done, len(skipped))
    progress.update(len(ids), len(skipped), final=True)
    return skipped


def _failed_callbacks(store: Any, aggr: str | None) -> tuple[list[str], int]:
    """Ids of the jobs whose callback is Failed (of `aggr`), and how many jobs were scanned."""
    tty = sys.stderr.isatty()
    ids: list[str] = []
    scanned = 0
    for batch in store.scan_callback_states():
        scanned += len(batch)
        ids += [i for i, a, state in batch if state == "Failed" and (aggr is None or a == aggr)]
        if tty:
            sys.stderr.write(f"\rscanning: {scanned} jobs, {len(ids)} Failed callbacks")
    sys.stderr.write(("\r" if tty else "") + f"scanned {scanned} jobs: {len(ids)} Failed callbacks\n")
    return ids, scanned


def _reschedule(store: Any, ids: list[str]) -> list[str]:
    """Run the retry script for each id in batches; returns why the others were skipped."""
    progress = Progress(len(ids), "callbacks")
    skipped: list[str] = []
    for start in range(0, len(ids), ENQUEUE_BATCH):
        batch = ids[start : start + ENQUEUE_BATCH]
        for job_id, reply in zip(batch, store.retry_callbacks(batch), strict=True):
            if reply is None:
                skipped.append(f"{job_id}: no such job")
            elif reply != "OK":
                skipped.append(f"{job_id}: callback is {reply or 'not set'}, not Failed")
        progress.update(start + len(batch), len(skipped))
    progress.update(len(ids), len(skipped), final=True)
    return skipped
