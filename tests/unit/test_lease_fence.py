"""The worker's lease fence: which running downloads must stop because their lease has gone
unconfirmed for too long (before Redis could let another worker take the job)."""

from __future__ import annotations

import threading

from downloader.worker.processor import FENCE_FRACTION, Download, unconfirmed_too_long


def download(confirmed: float, cancelled: bool = False) -> Download:
    event = threading.Event()
    if cancelled:
        event.set()
    return Download(event, confirmed=confirmed)


def test_the_fence_stands_before_the_lease_expires() -> None:
    assert 0.5 <= FENCE_FRACTION < 1.0


def test_a_download_stops_once_its_lease_is_unconfirmed_for_the_fenced_fraction() -> None:
    lease = 60.0
    running = {
        "fresh": download(100.0),
        "old": download(100.0 - lease * FENCE_FRACTION),
        "ancient": download(0.0),
    }
    assert unconfirmed_too_long(running, now=100.0, lease_seconds=lease) == ["old", "ancient"]


def test_just_inside_the_fence_a_download_goes_on() -> None:
    running = {"a": download(10.0)}
    assert unconfirmed_too_long(running, now=10.0 + 4 * FENCE_FRACTION - 0.001, lease_seconds=4) == []
    assert unconfirmed_too_long(running, now=10.0 + 4 * FENCE_FRACTION, lease_seconds=4) == ["a"]


def test_a_download_already_being_stopped_is_not_reported_again() -> None:
    running = {"stopping": download(0.0, cancelled=True), "late": download(0.0)}
    assert unconfirmed_too_long(running, now=1000.0, lease_seconds=10) == ["late"]
