"""The service commands: api, worker, notifier, operator, and `up` (all of them on an
embedded Redis, in one process).

Each builds its pieces from the settings, checks first what would otherwise fail later as
a traceback, and runs them: worker, notifier and `up` through `runner.run_services`.
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
from pathlib import Path
from typing import TYPE_CHECKING, Any

from downloader.cli import discovery
from downloader.cli.configuration import load_settings
from downloader.cli.runner import Service, on_signals, run_services
from downloader.config import parsing
from downloader.config.settings import Settings
from downloader.errors import ConfigurationError, DownloaderError
from downloader.observability import metrics

if TYPE_CHECKING:
    import uvicorn

    from downloader.store.embedded_redis import EmbeddedRedis

log = logging.getLogger("downloader")

#: Where `up` keeps its embedded Redis (and the lock that keeps a second `up` out).
UP_DATA_DIR = Path("data")


def run_api(args: argparse.Namespace) -> int:
    import uvicorn

    from downloader.api import server as api_server
    from downloader.api.main import create_app

    settings = load_settings(args)
    _check_api(settings)
    # The only service: uvicorn.run stops it on a signal, its exit statuses are the
    # command's, and it re-raises the signal into this handler afterwards (exit 0).
    on_signals(lambda: None)
    app = create_app(settings)
    api_server.freeze_startup_objects()
    uvicorn.run(app, host=args.host, port=args.port, **api_server.options(graceful_seconds=10))
    return 0


def run_worker(args: argparse.Namespace) -> int:
    settings = load_settings(args)
    _check_tmp_dir(settings)
    _pin_to_cpus("worker", settings.worker_cpus)
    metrics.serve(settings, "worker")
    return run_services([_processor(settings, frozenset(args.aggregation))])


def run_notifier(args: argparse.Namespace) -> int:
    settings = load_settings(args)
    _pin_to_cpus("notifier", settings.notifier_cpus)
    metrics.serve(settings, "notifier")
    return run_services([_notifier(settings)])


def run_operator(args: argparse.Namespace) -> int:
    from downloader.operator.main import run

    settings = load_settings(args)
    metrics.serve(settings, "operator")
    run(settings)  # kopf handles the signals itself
    return 0


def run_up(args: argparse.Namespace) -> int:
    """First what can fail at once (settings, the data directory's lock, the listening
    socket), so that a failure there starts nothing; then Redis, then the worker, notifier
    and API until a signal or a failure of any; their drain; and Redis last."""
    overrides: dict[str, Any] = {"download_url": f"http://{_url_host(args.host)}:{args.port}/files/"}
    local = "DOWNLOADER_ALLOW_PRIVATE_NETWORKS" not in os.environ
    if local:
        # Local use: files on localhost and the LAN are what people try first.
        overrides["allow_private_networks"] = True
    embedded = _embedded_redis(args)
    if embedded is not None:
        overrides["redis_url"] = embedded.url
    settings = load_settings(args, **overrides)
    _check_tmp_dir(settings)
    _check_api(settings, serve_files=True)
    if local:
        log.info(
            "allowing downloads and callbacks to private networks (local use; "
            "set DOWNLOADER_ALLOW_PRIVATE_NETWORKS=false to refuse them)"
        )
    listeners: list[socket.socket] = []
    locked = False
    try:
        if embedded is not None:
            embedded.lock(UP_DATA_DIR)
            locked = True
            discovery.withdraw(UP_DATA_DIR)  # left by an `up` that was killed
        listeners = _listen(args.host, args.port)
        if embedded is not None:
            embedded.start()
            log.info("embedded redis-server at %s (data in %s)", embedded.url, embedded.data_dir)
            # For `enqueue` and `retry`, which find this Redis by it (cli/discovery.py).
            api_url = f"http://{_url_host(args.host)}:{args.port}"
            discovery.publish(UP_DATA_DIR, redis_url=embedded.url, api_url=api_url)
        return _serve_up(args, settings, listeners)
    finally:
        for listener in listeners:
            listener.close()
        if locked:
            discovery.withdraw(UP_DATA_DIR)
        if embedded is not None:
            _stop_embedded_redis(embedded)


def _embedded_redis(args: argparse.Namespace) -> EmbeddedRedis | None:
    """The Redis of `up`, unless the environment or the config file names one."""
    from downloader.store.embedded_redis import EmbeddedRedis

    if discovery.redis_configured(args.config):
        return None
    return EmbeddedRedis(UP_DATA_DIR / "redis")


def _stop_embedded_redis(embedded: EmbeddedRedis) -> None:
    if embedded.proc is not None:
        # Last: the drain of the worker and the notifier wrote their results to it.
        log.info("stopping the embedded redis-server")
        embedded.stop()
    embedded.unlock()


def _serve_up(args: argparse.Namespace, settings: Settings, listeners: list[socket.socket]) -> int:
    """Worker and notifier in threads, the API in the main thread (uvicorn's signal handling
    is there), until a signal or until one of them fails; then all of them drain."""
    import uvicorn

    from downloader.api import server as api_server
    from downloader.api.main import create_app

    server = uvicorn.Server(
        uvicorn.Config(create_app(settings, serve_files=True), **api_server.options(graceful_seconds=5))
    )
    api = _UpApi(server, listeners, args.host, args.port, settings)
    return run_services(
        [_processor(settings, frozenset()), _notifier(settings)],
        main_thread=api,
        drain_seconds=settings.shutdown_grace_seconds + 10,
    )


class _UpApi:
    """The API of `up` as a service: uvicorn on the sockets bound before anything started."""

    def __init__(
        self,
        server: uvicorn.Server,
        listeners: list[socket.socket],
        host: str,
        port: int,
        settings: Settings,
    ) -> None:
        self.server, self.listeners = server, listeners
        self.host, self.port, self.settings = host, port, settings

    def run(self) -> None:
        log.info(
            "serving on http://%s:%d (files at %s, stored under %s)",
            self.host,
            self.port,
            self.settings.download_url,
            self.settings.storage_root,
        )
        try:
            self.server.run(sockets=self.listeners)
        except SystemExit as exc:  # uvicorn's way of saying its start-up failed (logged above)
            raise DownloaderError("the API did not start") from exc
        if not self.server.started:
            raise DownloaderError("the API did not start")

    def stop(self) -> None:
        self.server.should_exit = True


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


def _pin_to_cpus(role: str, text: str) -> None:
    """DOWNLOADER_WORKER_CPUS / _NOTIFIER_CPUS, before any thread starts: threads inherit it."""
    setting = f"DOWNLOADER_{role.upper()}_CPUS"
    cpus = parsing.cpus(text, setting)
    if not cpus:
        return
    try:
        os.sched_setaffinity(0, cpus)
    except OSError as exc:  # a CPU this host or container does not have
        raise ConfigurationError(f"{setting}={text!r}: {exc}") from exc
    log.info("%s pinned to CPUs %s", role, ",".join(map(str, sorted(cpus))))


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


def _url_host(host: str) -> str:
    return "127.0.0.1" if host in ("0.0.0.0", "") else host
