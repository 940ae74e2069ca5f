"""The tools: `enqueue` (the original's jobcat: one job per URL of a file) and `retry`
(reschedule-failed-callbacks: Failed callbacks back in the queue).

Both show their progress on stderr and end with a summary on stdout; a job rejected or
not retried makes the exit status 1.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

from downloader.cli.configuration import load_settings
from downloader.errors import ConfigurationError, RequestRejected
from downloader.jobs import validation
from downloader.jobs.models import Aggregation, Job
from downloader.observability import logs

#: Reasons listed in a summary; the rest are counted.
SHOWN_REASONS = 5
#: Jobs per pipelined Redis round trip (and per progress update at most).
ENQUEUE_BATCH = 500
#: Concurrent POSTs of `enqueue --api`.
API_THREADS = 8


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
    tally = _Tally(Progress(len(urls), "jobs"))
    if args.api:
        _enqueue_via_api(args, urls, tally)
    else:
        _enqueue_to_redis(args, urls, tally)
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
        for number, reason in self.rejected[:SHOWN_REASONS]:
            print(f"  line {number}: {reason}")
        if len(self.rejected) > SHOWN_REASONS:
            print(f"  ... and {len(self.rejected) - SHOWN_REASONS} more")


def _enqueue_to_redis(args: argparse.Namespace, urls: list[tuple[int, str]], tally: _Tally) -> None:
    from downloader.store import Store

    settings = load_settings(args)
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
            ids = store.enqueue_many([pair for _, _, pair in valid])
            tally.queued += [(number, url, i) for (number, url, _), i in zip(valid, ids, strict=True)]
            tally.tick()
    finally:
        store.close()


def _enqueue_via_api(args: argparse.Namespace, urls: list[tuple[int, str]], tally: _Tally) -> None:
    import requests

    token = args.api_key or os.environ.get("DOWNLOADER_API_KEY", "")
    logs.add_secrets([token])
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    endpoint = args.api.rstrip("/") + "/download"
    local = threading.local()

    def post(item: tuple[int, str]) -> tuple[int, str, str | None, str]:
        number, url = item
        if not hasattr(local, "session"):
            local.session = requests.Session()
        try:
            resp = local.session.post(endpoint, json=_job_fields(args, url), headers=headers, timeout=30)
        except requests.RequestException as exc:
            return number, url, None, f"{type(exc).__name__}: {exc}"
        if resp.status_code == 201:
            return number, url, str(resp.json()["id"]), ""
        return number, url, None, f"HTTP {resp.status_code}: {resp.text.strip()[:300]}"

    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(API_THREADS) as pool:
        for number, url, job_id, reason in pool.map(post, urls):
            if job_id is None:
                tally.rejected.append((number, reason))
            else:
                tally.queued.append((number, url, job_id))
            tally.tick()


def retry_callbacks(args: argparse.Namespace) -> int:
    from downloader.store import Store

    if bool(args.failed) == bool(args.job_ids):
        raise ConfigurationError("give --failed or job ids (not both)")
    if args.aggr and not args.failed:
        raise ConfigurationError("--aggr goes with --failed")
    settings = load_settings(args)
    store = Store.from_settings(settings)
    started = time.monotonic()
    try:
        if args.failed:
            ids, scanned = _failed_callbacks(store, args.aggr)
        else:
            ids, scanned = list(dict.fromkeys(args.job_ids)), len(args.job_ids)
        if args.dry_run:
            for job_id in ids:
                print(job_id)
            print(
                f"scanned {scanned}, would reschedule {len(ids)} (dry run: nothing changed), "
                f"elapsed {time.monotonic() - started:.2f}s"
            )
            return 0
        skipped = _reschedule(store, ids)
    finally:
        store.close()
    print(
        f"scanned {scanned}, rescheduled {len(ids) - len(skipped)}, skipped {len(skipped)}, "
        f"elapsed {time.monotonic() - started:.2f}s"
    )
    for line in skipped[:SHOWN_REASONS]:
        print(f"  {line}")
    # The original's exit status counted failures; a job given by id that was not retried is one.
    return 1 if skipped and not args.failed else 0


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
