"""downloader/cli/runner.py: services run together until a signal or a failure, then all of
them stop; the first failure is one line and exit status 1. No real services: stand-ins
that serve until stop() or fail."""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Callable, Iterator
from types import SimpleNamespace
from typing import Any

import pytest

from downloader.cli import runner, services
from downloader.errors import DownloaderError

#: Long enough for any of these stand-ins; a hang fails the test instead of stalling the suite.
PATIENCE_SECONDS = 10


class Serving:
    """Serves until stop(); a drain takes no time."""

    def __init__(self) -> None:
        self.started = threading.Event()
        self.stopped = threading.Event()

    def run(self) -> None:
        self.started.set()
        if not self.stopped.wait(PATIENCE_SECONDS):
            raise AssertionError("never stopped")

    def stop(self) -> None:
        self.stopped.set()


class Failing(Serving):
    """Fails as soon as it runs (or, with `when_stopped`, in its drain)."""

    def __init__(self, error: Exception, *, when_stopped: bool = False) -> None:
        super().__init__()
        self.error, self.when_stopped = error, when_stopped

    def run(self) -> None:
        if self.when_stopped:
            super().run()
        else:
            self.started.set()
        raise self.error


class Stubborn(Serving):
    """Overruns its drain: ignores stop() until the test ends."""

    def stop(self) -> None:
        pass


@pytest.fixture(autouse=True)
def signal_handlers() -> Iterator[None]:
    """run_services installs its handlers in this process: the test's own come back after."""
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    yield
    for sig, handler in saved.items():
        signal.signal(sig, handler)


def once_all_started(services: list[Serving], then: Callable[[], object]) -> None:
    def wait_then() -> None:
        for service in services:
            service.started.wait(PATIENCE_SECONDS)
        then()

    threading.Thread(target=wait_then, daemon=True).start()


def sigterm_to_this_process() -> None:
    os.kill(os.getpid(), signal.SIGTERM)


def test_one_failing_service_stops_the_others_and_is_the_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    serving = [Serving(), Serving()]
    status = runner.run_services([serving[0], Failing(DownloaderError("redis is gone")), serving[1]])
    assert status == 1
    assert all(service.stopped.is_set() for service in serving)
    assert capsys.readouterr().err == "downloader: redis is gone\n"


@pytest.mark.parametrize(
    ("error", "line"),
    [
        (PermissionError(13, "Permission denied"), "downloader: Failing: [Errno 13] Permission denied\n"),
        (ValueError("a bug"), "downloader: Failing failed: a bug\n"),
    ],
)
def test_a_failure_names_the_service_unless_it_is_a_downloader_error(
    capsys: pytest.CaptureFixture[str], error: Exception, line: str
) -> None:
    assert runner.run_services([Serving(), Failing(error)]) == 1
    assert capsys.readouterr().err == line


def test_a_signal_stops_every_service_and_a_clean_drain_exits_0(
    capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    serving = [Serving(), Serving()]
    once_all_started(serving, then=sigterm_to_this_process)
    with caplog.at_level(logging.INFO, logger="downloader"):
        assert runner.run_services(serving) == 0
    assert all(service.stopped.is_set() for service in serving)
    assert "received SIGTERM: draining" in caplog.messages
    assert capsys.readouterr().err == ""


def test_a_service_failing_in_the_drain_after_a_signal_still_exits_1(
    capsys: pytest.CaptureFixture[str],
) -> None:
    serving, failing = Serving(), Failing(DownloaderError("could not hand back a lease"), when_stopped=True)
    once_all_started([serving, failing], then=sigterm_to_this_process)
    assert runner.run_services([serving, failing]) == 1
    assert capsys.readouterr().err == "downloader: could not hand back a lease\n"


def test_a_second_signal_exits_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    class Exited(BaseException):
        pass

    def exit_now(status: int) -> None:
        raise Exited(status)

    stops: list[str] = []
    monkeypatch.setattr(runner.os, "_exit", exit_now)
    runner.on_signals(lambda: stops.append("stop"))
    signal.raise_signal(signal.SIGINT)
    assert stops == ["stop"]
    with pytest.raises(Exited) as exited:
        signal.raise_signal(signal.SIGTERM)
    assert exited.value.args == (1,)
    assert stops == ["stop"]


def test_when_the_main_thread_service_returns_the_others_stop_too() -> None:
    background = [Serving(), Serving()]

    class ReturnsOnceTheOthersRun(Serving):
        def run(self) -> None:
            for service in background:
                service.started.wait(PATIENCE_SECONDS)

    assert runner.run_services(background, main_thread=ReturnsOnceTheOthersRun()) == 0
    assert all(service.stopped.is_set() for service in background)


def test_a_failing_background_service_stops_the_main_thread_service(
    capsys: pytest.CaptureFixture[str],
) -> None:
    main = Serving()
    assert runner.run_services([Failing(DownloaderError("no disk"))], main_thread=main) == 1
    assert main.stopped.is_set()
    assert capsys.readouterr().err == "downloader: no disk\n"


def test_the_drain_is_waited_for_drain_seconds_at_most(caplog: pytest.LogCaptureFixture) -> None:
    stubborn = Stubborn()

    class ReturnsAtOnce(Serving):
        def run(self) -> None:
            stubborn.started.wait(PATIENCE_SECONDS)

    with caplog.at_level(logging.WARNING, logger="downloader"):
        assert runner.run_services([stubborn], main_thread=ReturnsAtOnce(), drain_seconds=0.2) == 0
    assert "Stubborn did not stop within 0 s" in caplog.messages


class UvicornServer:
    """The parts of uvicorn.Server that `up` uses."""

    def __init__(self, *, start_fails: bool, started: bool = False) -> None:
        self.start_fails, self.started, self.should_exit = start_fails, started, False

    def run(self, sockets: list[Any]) -> None:
        if self.start_fails:
            raise SystemExit(1)  # what uvicorn does when, say, the app's start-up fails


@pytest.mark.parametrize("start_fails", [True, False])
def test_up_when_the_api_does_not_start_stops_the_rest_with_one_line(
    capsys: pytest.CaptureFixture[str], start_fails: bool
) -> None:
    settings: Any = SimpleNamespace(download_url="http://127.0.0.1:8000/files/", storage_root="files")
    api = services._UpApi(
        UvicornServer(start_fails=start_fails),  # type: ignore[arg-type]
        [],
        "127.0.0.1",
        8000,
        settings,
    )
    worker = Serving()
    assert runner.run_services([worker], main_thread=api) == 1
    assert worker.stopped.is_set()
    assert capsys.readouterr().err == "downloader: the API did not start\n"
