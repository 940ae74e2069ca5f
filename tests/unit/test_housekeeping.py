"""The housekeeping loops' one way of running their steps (worker and notifier alike)."""

from __future__ import annotations

import logging

import pytest

from downloader.errors import StoreError
from downloader.worker.housekeeping import run_due


class Chores:
    def __init__(self) -> None:
        self.done: list[str] = []

    def publish(self) -> None:
        raise StoreError("redis is gone")

    def check(self) -> None:
        self.done.append("check")

    def skipped(self) -> None:
        self.done.append("skipped")


def test_a_failing_step_is_logged_by_name_and_the_others_still_run(caplog: pytest.LogCaptureFixture) -> None:
    chores = Chores()
    log = logging.getLogger("test.housekeeping")
    with caplog.at_level(logging.WARNING, log.name):
        run_due(
            [(lambda: True, chores.publish), (lambda: True, chores.check), (lambda: False, chores.skipped)],
            log,
        )
    assert chores.done == ["check"]
    assert [r.getMessage() for r in caplog.records] == ["Chores.publish failed: redis is gone"]


def test_a_bug_is_not_swallowed() -> None:
    def broken() -> None:
        raise ValueError("a bug")

    with pytest.raises(ValueError, match="a bug"):
        run_due([(lambda: True, broken)], logging.getLogger("test.housekeeping"))
