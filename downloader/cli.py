"""The `downloader` command: up, api, worker (alias processor), notifier, operator, version,
and the tools enqueue (a file of URLs) and retry (Failed callbacks).

It sits above every other layer: it reads settings, builds the pieces and runs them under
signal handling (first SIGTERM/SIGINT drains, a second one exits at once). A bad setting
ends the process with one line on stderr and exit status 2.

`up` takes, in this order, what can fail at once (settings, the data directory's lock, the
listening socket), so a failure there starts nothing; then Redis, then the worker, notifier
and API; on a signal or a failure of any part it stops them all, waits for their drain,
and stops its Redis last.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType
from typing import Any, Protocol

from downloader.config import settings as settings_module
from downloader.config.settings import Settings
from downloader.errors import ConfigurationError, DownloaderError, RequestRejected
from downloader.jobs import validation
from downloader.jobs.models import Aggregation, Job
from downloader.observability import logs, metrics
from downloader.version import __version__

log = logging.getLogger("downloader")


class Service(Protocol):
    def run(self) -> None: ...

    def stop(self) -> None: ...


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command is None:
        _parser().print_help()
        return 2
    if args.command == "version":
        print(f"Downloader Version {__version__}")
        return 0
    try:
        _configure_logging()
        handler: Callable[[argparse.Namespace], int] = COMMANDS[args.command]
        return handler(args)
    except ConfigurationError as exc:
        print(f"downloader: {exc}", file=sys.stderr)
        return 2
    except DownloaderError as exc:
        print(f"downloader: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # Ctrl-C before the signal handlers were in place
        print("downloader: interrupted", file=sys.stderr)
        return 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="downloader", description="Async rate-limited downloading service")
    config = argparse.ArgumentParser(add_help=False)
    config.add_argument(
        "-c",
        "--config",
        metavar="FILE",
        help="config.json in the original's format (DOWNLOADER_* variables win)",
    )
    sub = parser.add_subparsers(dest="command", metavar="command")
    up = sub.add_parser(
        "up", parents=[config], help="API, worker, notifier and an embedded Redis in one process"
    )
    up.add_argument("--host", default="127.0.0.1")
    up.add_argument("--port", "-p", type=int, default=8000)
    api = sub.add_parser("api", parents=[config], help="the HTTP API")
    api.add_argument("--host", default="0.0.0.0")
    api.add_argument("--port", "-p", type=int, default=8000)
    for name in ("worker", "processor"):
        worker = sub.add_parser(
            name,
            parents=[config],
            help="download jobs" + (" (alias of worker)" if name == "processor" else ""),
        )
        worker.add_argument(
            "--aggregation",
            "-a",
            action="append",
            default=[],
            metavar="ID",
            help="serve only this aggregation (repeatable); default: all",
        )
    sub.add_parser("notifier", parents=[config], help="callbacks, retries, file deletion, lease recovery")
    sub.add_parser("operator", parents=[config], help="the Kubernetes operator (Aggregation resources)")
    sub.add_parser("version", help="print the version")
    _tool_parsers(sub, config)
    return parser


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def _configure_logging() -> None:
    # Before the settings load (their errors are logged too): the two variables directly.
    level = os.environ.get("DOWNLOADER_LOG_LEVEL", "INFO")
    if not isinstance(logging.getLevelName(level.strip().upper()), int):
        # It used to mean INFO without a word.
        raise ConfigurationError(
            f"invalid setting DOWNLOADER_LOG_LEVEL: {level!r} is none of {', '.join(LOG_LEVELS)}"
        )
    logs.configure(level, os.environ.get("DOWNLOADER_LOG_FORMAT", "text"))


def _settings(args: argparse.Namespace, **overrides: Any) -> Settings:
    settings = settings_module.load(args.config, **overrides)
    logs.protect(settings)  # a config file may hold secrets the environment did not
    return settings


# --- commands -------------------------------------------------------------------------


def cmd_api(args: argparse.Namespace) -> int:
    import uvicorn

    from downloader.api import server as api_server
    from downloader.api.main import create_app

    settings = _settings(args)
    _check_api(settings)
    _on_signals(lambda: None)  # uvicorn stops itself and re-raises into this handler: exit 0
    app = create_app(settings)
    api_server.freeze_startup_objects()
    uvicorn.run(app, host=args.host, port=args.port, **api_server.options(graceful_seconds=10))
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    settings = _settings(args)
    _check_tmp_dir(settings)
    metrics.serve(settings, "worker")
    processor = _processor(settings, frozenset(args.aggregation))
    return _run_until_signalled([processor])


def cmd_notifier(args: argparse.Namespace) -> int:
    settings = _settings(args)
    metrics.serve(settings, "notifier")
    return _run_until_signalled([_notifier(settings)])


def cmd_up(args: argparse.Namespace) -> int:
    from downloader.store.embedded_redis import EmbeddedRedis

    overrides: dict[str, Any] = {"download_url": f"http://{_url_host(args.host)}:{args.port}/files/"}
    local = "DOWNLOADER_ALLOW_PRIVATE_NETWORKS" not in os.environ
    if local:
        # Local use: files on localhost and the LAN are what people try first.
        overrides["allow_private_networks"] = True
    embedded = None
    if "DOWNLOADER_REDIS_URL" not in os.environ and not _config_sets_redis(args.config):
        embedded = EmbeddedRedis(Path("data") / "redis")
        overrides["redis_url"] = embedded.url
    settings = _settings(args, **overrides)
    _check_tmp_dir(settings)
    _check_api(settings, serve_files=True)
    if local:
        log.info(
            "allowing downloads and callbacks to private networks (local use; "
            "set DOWNLOADER_ALLOW_PRIVATE_NETWORKS=false to refuse them)"
        )
    listeners: list[socket.socket] = []
    try:
        if embedded is not None:
            embedded.lock(Path("data"))
        listeners = _listen(args.host, args.port)
        if embedded is not None:
            embedded.start()
            log.info("embedded redis-server at %s (data in %s)", embedded.url, embedded.data_dir)
        return _serve_up(args, settings, listeners)
    finally:
        for listener in listeners:
            listener.close()
        if embedded is not None:
            if embedded.proc is not None:
                # Last: the drain of the worker and the notifier wrote their results to it.
                log.info("stopping the embedded redis-server")
                embedded.stop()
            embedded.unlock()


def _serve_up(args: argparse.Namespace, settings: Settings, listeners: list[socket.socket]) -> int:
    """Worker and notifier in threads, the API in the main thread, until a signal or until
    one of them fails; then all of them drain."""
    import uvicorn

    from downloader.api import server as api_server
    from downloader.api.main import create_app

    server = uvicorn.Server(
        uvicorn.Config(create_app(settings, serve_files=True), **api_server.options(graceful_seconds=5))
    )
    services: list[Service] = [_processor(settings, frozenset()), _notifier(settings)]
    failures: list[str] = []

    def stop_all() -> None:
        server.should_exit = True
        for service in services:
            service.stop()

    threads = _start_services(services, failures, on_failure=stop_all)
    _on_signals(stop_all)
    log.info(
        "serving on http://%s:%d (files at %s, stored under %s)",
        args.host,
        args.port,
        settings.download_url,
        settings.storage_root,
    )
    try:
        server.run(sockets=listeners)
    except SystemExit:  # uvicorn's way of saying its start-up failed (logged above)
        failures.append("the API did not start")
    finally:
        stop_all()
        _join(threads, settings.shutdown_grace_seconds + 10)
    if not server.started and not failures:
        failures.append("the API did not start")
    if failures:
        print(f"downloader: {failures[0]}", file=sys.stderr)
        return 1
    return 0


def _listen(host: str, port: int) -> list[socket.socket]:
    """The API's listening sockets, bound before anything starts: a busy port is one line and
    a non-zero exit, not an API that is missing while the rest runs on."""
    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise ConfigurationError(f"cannot listen on {host}:{port}: {exc.strerror}") from exc
    sockets: list[socket.socket] = []
    try:
        for family, kind, proto, _, address in dict.fromkeys(infos):
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
            sock.listen(2048)
    except OSError as exc:
        for sock in sockets:
            sock.close()
        raise ConfigurationError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
    return sockets


def _check_tmp_dir(settings: Settings) -> None:
    # The worker would create it in its thread, where a failure is a traceback, not a line.
    _make_dir(settings.tmp_dir, "DOWNLOADER_TMP_DIR")


def _check_api(settings: Settings, *, serve_files: bool = False) -> None:
    """What the API would otherwise find wrong in its start-up, where a failure is a
    traceback from uvicorn's: the kubeconfig, the storage root it serves."""
    if serve_files and settings.storage_backend == "filesystem":
        _make_dir(settings.storage_root, "DOWNLOADER_STORAGE_ROOT")
    if settings.kube_create_aggregations and settings.kubeconfig:
        from downloader.cluster import kube

        try:
            kube.client_configuration(settings)
        except kube.ClusterError as exc:
            raise ConfigurationError(str(exc)) from exc


def _make_dir(path: Path, variable: str) -> None:
    try:
        Path(path).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigurationError(
            f"invalid setting {variable}: cannot create {path}: {exc.strerror or exc}"
        ) from exc


def cmd_operator(args: argparse.Namespace) -> int:
    from downloader.operator.main import run

    settings = _settings(args)
    metrics.serve(settings, "operator")
    run(settings)
    return 0


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "operator": cmd_operator,
    "up": cmd_up,
    "api": cmd_api,
    "worker": cmd_worker,
    "processor": cmd_worker,
    "notifier": cmd_notifier,
    # the tools, defined at the end of the module
    "enqueue": lambda args: cmd_enqueue(args),
    "retry": lambda args: cmd_retry(args),
}


# --- building and running -----------------------------------------------------------------


def _processor(settings: Settings, only: frozenset[str]) -> Service:
    from downloader.store import Store
    from downloader.worker.processor import Processor

    return Processor(settings, Store.from_settings(settings), _storage(settings), only=only)


def _notifier(settings: Settings) -> Service:
    from downloader.store import Store
    from downloader.worker.notifier import Notifier

    return Notifier(settings, Store.from_settings(settings), _storage(settings))


def _storage(settings: Settings) -> Any:
    from downloader.delivery import storage

    return storage.from_settings(settings)


def _run_until_signalled(services: list[Service]) -> int:
    """Run each service in a thread until a signal, or until one fails (then stop the rest)."""
    failures: list[str] = []

    def stop() -> None:
        for service in services:
            service.stop()

    _on_signals(stop)
    threads = _start_services(services, failures, on_failure=stop)
    while any(t.is_alive() for t in threads):
        for thread in threads:
            thread.join(timeout=0.5)
    if failures:
        print(f"downloader: {failures[0]}", file=sys.stderr)
        return 1
    return 0


def _start_services(
    services: list[Service], failures: list[str], on_failure: Callable[[], object]
) -> list[threading.Thread]:
    """A thread per service; one that fails records why and stops the whole (`on_failure`)."""

    def run(service: Service) -> None:
        name = type(service).__name__
        try:
            service.run()
        except DownloaderError as exc:
            failures.append(str(exc))
        except OSError as exc:  # the machine's fault (permissions, disk): no traceback
            failures.append(f"{name}: {exc}")
        except Exception as exc:
            log.exception("%s failed", name)
            failures.append(f"{name} failed: {exc}")
        else:
            return
        on_failure()

    # Daemons: a part that overruns its drain must not keep the process alive after the rest.
    threads = [threading.Thread(target=run, args=(s,), name=type(s).__name__, daemon=True) for s in services]
    for thread in threads:
        thread.start()
    return threads


def _join(threads: list[threading.Thread], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    for thread in threads:
        thread.join(timeout=max(0.0, deadline - time.monotonic()))
        if thread.is_alive():
            log.warning("%s did not stop within %.0f s", thread.name, timeout)


def _on_signals(stop: Callable[[], object]) -> None:
    received: list[int] = []

    def handler(signum: int, _frame: FrameType | None) -> None:
        if received:
            log.warning("second signal: exiting now")
            os._exit(1)
        received.append(signum)
        log.info("received %s: draining", signal.Signals(signum).name)
        stop()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def _url_host(host: str) -> str:
    return "127.0.0.1" if host in ("0.0.0.0", "") else host


def _config_sets_redis(config: str | None) -> bool:
    if config is None:
        return False
    try:
        return bool(
            settings_module.config_values(settings_module.read_config_file(Path(config))).get("redis_url")
        )
    except ConfigurationError:
        return False


# --- tools: enqueue (the original's jobcat) and retry (reschedule-failed-callbacks) ----------

#: Reasons listed in a summary; the rest are counted.
SHOWN_REASONS = 5
#: Jobs per pipelined Redis round trip (and per progress update at most).
ENQUEUE_BATCH = 500
#: Concurrent POSTs of `enqueue --api`.
API_THREADS = 8


def _tool_parsers(sub: Any, config: argparse.ArgumentParser) -> None:
    enqueue = sub.add_parser("enqueue", parents=[config], help="queue one job per URL of a file")
    enqueue.add_argument("file", metavar="FILE", help="one URL per line ('-': stdin; # comments skipped)")
    enqueue.add_argument("--aggr", required=True, metavar="ID", help="aggregation id of every job")
    enqueue.add_argument("--limit", required=True, type=int, metavar="N", help="the aggregation's limit")
    enqueue.add_argument("--callback-url", metavar="URL")
    enqueue.add_argument("--callback-type", metavar="T", help="http, kafka or sqs (with --callback-dst)")
    enqueue.add_argument("--callback-dst", metavar="D")
    enqueue.add_argument("--mime-type", metavar="P", help="accepted mime types, e.g. 'image/*'")
    enqueue.add_argument("--extract-image-size", action="store_true")
    enqueue.add_argument("--extra", metavar="S", help="passed back in the callback")
    enqueue.add_argument("--api", metavar="URL", help="POST to this API instead of writing to Redis")
    enqueue.add_argument("--api-key", metavar="TOKEN", help="bearer token for --api ($DOWNLOADER_API_KEY)")
    enqueue.add_argument("--ids", metavar="FILE", help="write 'line<TAB>url<TAB>job id' per queued job")
    retry = sub.add_parser("retry", parents=[config], help="put Failed callbacks back in the queue")
    retry.add_argument(
        "job_ids", nargs="*", metavar="JOB_ID", help="these jobs (after `--`: an id may begin with '-')"
    )
    retry.add_argument("--failed", action="store_true", help="every job whose callback is Failed")
    retry.add_argument("--aggr", metavar="ID", help="with --failed: only this aggregation")
    retry.add_argument("--dry-run", action="store_true", help="list them, change nothing")


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


def cmd_enqueue(args: argparse.Namespace) -> int:
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

    settings = _settings(args)
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


def cmd_retry(args: argparse.Namespace) -> int:
    from downloader.store import Store

    if bool(args.failed) == bool(args.job_ids):
        raise ConfigurationError("give --failed or job ids (not both)")
    if args.aggr and not args.failed:
        raise ConfigurationError("--aggr goes with --failed")
    settings = _settings(args)
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
