"""The dashboard's "Hosts" card in a real headless Chromium over real api/worker processes:
a limited host with its downloads in flight and its limit, and a host paused by a 429 with
Retry-After, without console errors. A screenshot goes to artifacts/.
"""

from __future__ import annotations

import json

import pytest
from playwright.sync_api import expect
from support.procs import Stack, job_body
from support.servers import FileServer, wait_until

pytestmark = pytest.mark.ui

CALLBACK = "http://127.0.0.1:9/callback"


def test_the_hosts_card_shows_in_flight_limits_and_pauses(
    watched, stack: Stack, files: FileServer, other_host: FileServer
) -> None:
    page = watched.page
    busy, paused = files.base.removeprefix("http://"), other_host.base.removeprefix("http://")
    stack.configure(host_limits=json.dumps({busy: 2}))
    api = stack.api()
    stack.worker(worker_concurrency=8)
    for n in range(5):
        api.post_job(job_body(files.url("tiny.png", hold=20, n=n), "shop.example.com", CALLBACK, limit=8))
    other_host.answer("tiny.png", 429, {"Retry-After": "600"}, b"slow down\n")
    api.post_job(job_body(other_host.url("tiny.png"), "cdn.example.net", CALLBACK, limit=8))
    wait_until(lambda: len(files.seen("tiny.png")) == 2, 15, "two downloads at the busy host")
    wait_until(lambda: stack.db.exists(f"hostpause:{paused}"), 15, "the other host to be paused")

    page.goto(api.url + "/")
    expect(page.locator("#status")).to_contain_text("Updated")
    rows = page.locator("#hosts-table tbody")
    busy_row = rows.locator(f'tr[data-host="{busy}"]')
    expect(busy_row.locator("td").nth(1)).to_have_text("2")  # in flight, at its limit
    expect(busy_row.locator("td").nth(2)).to_have_text("2")
    paused_row = rows.locator(f'tr[data-host="{paused}"]')
    expect(paused_row.locator(".badge")).to_have_text("paused")
    expect(paused_row.locator("td").nth(2)).to_have_text("∞")
    expect(paused_row.locator("td").nth(3)).to_contain_text("left")
    page.locator("#hosts-card").scroll_into_view_if_needed()
    watched.screenshot("dashboard-hosts.png")
    assert watched.errors == []
