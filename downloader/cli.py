"""The `downloader` command: up, api, worker (alias processor), notifier, version.

It sits above every other layer: it reads settings, builds the pieces and runs them under
signal handling (first SIGTERM/SIGINT drains, a second one exits at once). A bad setting
ends the process with one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType
from typing import Any, Protocol

from downloader import settings as settings_module
from downloader.errors import ConfigurationError, DownloaderError
from downloader.settings import Settings
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
    _configure_logging()
    try:
        handler: Callable[[argparse.Namespace], int] = COMMANDS[args.command]
        return handler(args)
    except ConfigurationError as exc:
        print(f"downloader: {exc}", file=sys.stderr)
        return 2
    except DownloaderError as exc:
        print(f"downloader: {exc}", file=sys.stderr)
        return 1


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
    return parser


def _configure_logging() -> None:
    level = os.environ.get("DOWNLOADER_LOG_LEVEL", "INFO").upper()
    logging.basicConfig(
        level=getattr(logging, level, logging.INFO),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def _settings(args: argparse.Namespace, **overrides: Any) -> Settings:
    return settings_module.load(args.config, **overrides)


# --- commands -------------------------------------------------------------------------


def cmd_api(args: argparse.Namespace) -> int:
    import uvicorn

    from downloader.api.main import create_app

    settings = _settings(args)
    _on_signals(lambda: None)  # uvicorn stops itself and re-raises into this handler: exit 0
    uvicorn.run(
        create_app(settings),
        host=args.host,
        port=args.port,
        access_log=False,
        log_level="warning",
        timeout_graceful_shutdown=10,
    )
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    settings = _settings(args)
    processor = _processor(settings, frozenset(args.aggregation))
    return _run_until_signalled([processor])


def cmd_notifier(args: argparse.Namespace) -> int:
    settings = _settings(args)
    return _run_until_signalled([_notifier(settings)])


def cmd_up(args: argparse.Namespace) -> int:
    import uvicorn

    from downloader.api.main import create_app
    from downloader.embedded_redis import EmbeddedRedis

    overrides: dict[str, Any] = {"download_url": f"http://{_url_host(args.host)}:{args.port}/files/"}
    if "DOWNLOADER_ALLOW_PRIVATE_NETWORKS" not in os.environ:
        # Local use: files on localhost and the LAN are what people try first.
        overrides["allow_private_networks"] = True
        log.info("allowing downloads and callbacks to private networks (local use; "
                 "set DOWNLOADER_ALLOW_PRIVATE_NETWORKS=false to refuse them)")  # fmt: skip
    embedded = None
    if "DOWNLOADER_REDIS_URL" not in os.environ and not _config_sets_redis(args.config):
        embedded = EmbeddedRedis(Path("data") / "redis")
        overrides["redis_url"] = embedded.start()
        log.info("embedded redis-server at %s (data in %s)", embedded.url, embedded.data_dir)
    try:
        settings = _settings(args, **overrides)
        services: list[Service] = [_processor(settings, frozenset()), _notifier(settings)]
        server = uvicorn.Server(
            uvicorn.Config(create_app(settings, serve_files=True), host=args.host, port=args.port,
                           access_log=False, log_level="warning", timeout_graceful_shutdown=5)
        )  # fmt: skip
        failures: list[DownloaderError] = []

        def run(service: Service) -> None:
            try:
                service.run()
            except DownloaderError as exc:
                failures.append(exc)
                server.should_exit = True  # one part failing stops the whole

        def stop_all() -> None:
            for service in services:
                service.stop()

        threads = [threading.Thread(target=run, args=(s,), name=type(s).__name__) for s in services]
        for thread in threads:
            thread.start()
        _on_signals(stop_all)
        log.info("serving on http://%s:%d (files at %s, stored under %s)", args.host, args.port,
                 settings.download_url, settings.storage_root)  # fmt: skip
        server.run()
        stop_all()
        for thread in threads:
            thread.join(timeout=settings.shutdown_grace_seconds + 10)
    finally:
        if embedded is not None:
            embedded.stop()
    if failures:
        print(f"downloader: {failures[0]}", file=sys.stderr)
        return 1
    return 0


def cmd_operator(args: argparse.Namespace) -> int:
    from downloader.operator.main import run

    run(_settings(args))
    return 0


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "operator": cmd_operator,
    "up": cmd_up,
    "api": cmd_api,
    "worker": cmd_worker,
    "processor": cmd_worker,
    "notifier": cmd_notifier,
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
    from downloader import storage

    return storage.from_settings(settings)


def _run_until_signalled(services: list[Service]) -> int:
    """Run each service in a thread until a signal, or until one fails (then stop the rest)."""
    failures: list[DownloaderError] = []

    def stop() -> None:
        for service in services:
            service.stop()

    def run(service: Service) -> None:
        try:
            service.run()
        except DownloaderError as exc:
            failures.append(exc)
            stop()

    threads = [threading.Thread(target=run, args=(s,), name=type(s).__name__) for s in services]
    _on_signals(stop)
    for thread in threads:
        thread.start()
    while any(t.is_alive() for t in threads):
        for thread in threads:
            thread.join(timeout=0.5)
    if failures:
        print(f"downloader: {failures[0]}", file=sys.stderr)
        return 1
    return 0


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
