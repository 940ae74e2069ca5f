"""The web dashboard at `/`, in a real headless Chromium, over real api/worker/notifier processes.

Proves: the page renders the live overview without console errors (instances by role,
aggregations with their limits, filtering, sorting, recent failures with their error text,
totals and the sparkline), the job lookup, the retry button of a Failed callback (checked in
Redis), and the API-key form. Screenshots go to artifacts/.
"""

from __future__ import annotations

import json
import re
import time

import pytest
import redis
from playwright.sync_api import Page, expect
from support.procs import Api, Stack, free_port, job_body
from support.redis_state import record_attempt
from support.servers import CallbackServer, FileServer, wait_until

from downloader.store import Store

pytestmark = pytest.mark.ui

#: The resource error Chromium logs for an answer of 401: expected once keys are required.
UNAUTHORIZED_LOAD = "Failed to load resource: the server responded with a status of 401"


def open_dashboard(page: Page, api: Api) -> None:
    page.goto(api.url + "/")
    expect(page.locator("#status")).to_contain_text("Updated")


def aggregation_ids(page: Page) -> list[str]:
    return page.locator("#aggr-table tbody tr").evaluate_all("rows => rows.map(r => r.dataset.aggr)")


def seed_history(redis_url: str, aggregations: dict[str, tuple[int, int]]) -> None:
    """The minutes before this test, counted as workers count them (`record_attempt`), so the
    sparkline has a half hour to draw: (succeeded, failed) per minute and aggregation."""
    db = Store.from_url(redis_url)
    now = time.time()
    for ago in range(29, 0, -1):
        for aggr, (ok, failed) in aggregations.items():
            wave = 1 + (ago % 7) / 3  # some variation, as real traffic has
            for _ in range(int(ok * wave)):
                record_attempt(db, aggr, "ok", now=now - ago * 60)
            for _ in range(failed * (ago % 3)):
                record_attempt(db, aggr, "failed", now=now - ago * 60)
    db.close()


def test_live_overview(
    watched, stack: Stack, files: FileServer, callbacks: CallbackServer, rdb: redis.Redis
) -> None:
    page = watched.page
    seed_history(stack.redis_url, {"shop.example.com": (9, 1), "images.example.org": (4, 0)})
    api, _, _ = stack.all_three(shutdown_grace_seconds=1)
    cb = callbacks.url
    image = api.post_job(
        job_body(files.url("tiny.png"), "images.example.org", cb, limit=8, mime_type="image/*")
    )
    # Slow aggregations keep a backlog and jobs in flight while the page looks (and their
    # `aggr:` hash, which workers delete once an aggregation is idle).
    shop_ids = [
        api.post_job(job_body(files.url("sample-1.jpg", hold=3, n=n), "shop.example.com", cb, limit=2))
        for n in range(12)
    ]
    for n in range(14):
        api.post_job(job_body(files.url("tiny.png", hold=8, n=n), "video.example.net", cb, limit=6))
    # Their callbacks go nowhere, so the jobs stay undelivered (pending, then Failed) for the lookup.
    nowhere = f"http://127.0.0.1:{free_port()}/callback"
    missing = api.post_job(job_body(files.url("gone.png"), "cdn.example.net", nowhere, limit=16))
    api.post_job(job_body(files.url("tiny.pdf"), "cdn.example.net", nowhere, limit=16, mime_type="image/*"))
    for n in range(3):
        api.post_job(job_body(files.url("tiny.png", n=n), "blog-assets.example.com", cb, limit=3))
    wait_until(lambda: rdb.llen("RecentFailures") >= 2, message="two failed jobs recorded")

    open_dashboard(page, api)
    table = page.locator("#aggr-table tbody")
    shop = table.locator('tr[data-aggr="shop.example.com"]')
    expect(shop).to_be_visible()
    expect(shop.locator("td").nth(1)).to_have_text("2")  # its limit, from aggr:shop.example.com
    expect(table.locator('tr[data-aggr="video.example.net"] td').nth(1)).to_have_text("6")
    # Drained: its `aggr:` hash is gone (as the original deleted it), its limit is remembered.
    expect(table.locator('tr[data-aggr="cdn.example.net"] td').nth(1)).to_have_text("16")
    expect(shop.locator("td").nth(2)).not_to_have_text("0")  # still a backlog: pending jobs

    for role in ("api", "worker", "notifier"):
        expect(page.locator(f'#instances [data-role="{role}"] h3')).to_have_text(f"{role} (1)")
    # No operator is expected outside Kubernetes: its empty card is neutral, not a warning.
    operator = page.locator('#instances [data-role="operator"]')
    expect(operator).to_contain_text("none running (none expected here)")
    expect(operator).to_have_class(re.compile(r"\bunexpected\b"))
    heading_color = operator.locator("h3").evaluate("h => getComputedStyle(h).color")
    assert heading_color == page.locator("#aggr-note").evaluate("e => getComputedStyle(e).color")  # muted

    # End-to-end latency and throughput per aggregation; callbacks per destination host.
    images = table.locator('tr[data-aggr="images.example.org"]')
    expect(images.locator("td").nth(6)).to_have_text(re.compile(r"^≤ \d"))  # p50
    expect(images.locator("td").nth(7)).to_have_text(re.compile(r"^≤ \d"))  # p95
    chart = page.locator('#latency-charts figure[data-aggr="images.example.org"]')
    expect(chart).to_contain_text("finished")
    expect(chart.locator("svg rect.done").first).to_be_attached()
    expect(chart.locator("svg polyline.p95")).to_be_attached()
    callback_hosts = page.locator("#callbacks-table tbody")
    expect(callback_hosts.locator('tr[data-host="127.0.0.1"]')).to_be_visible()
    expect(page.locator("#callbacks-note")).to_contain_text("Pending")

    failures = page.locator("#failures-table tbody")
    expect(failures).to_contain_text(missing)
    expect(failures).to_contain_text("Received status code 404")
    expect(failures).to_contain_text("validating mime type")
    expect(page.locator("#t-pending")).not_to_have_text("–")
    expect(page.locator("#sparkline polyline.all")).to_have_attribute("points", re.compile(r"(\S+ ){29}\S+"))

    # Filtering narrows the rows to matching ids; clearing it brings them back.
    page.fill("#aggr-filter", "example.org")
    expect(table.locator("tr")).to_have_count(1)
    expect(table.locator("tr").first).to_have_attribute("data-aggr", "images.example.org")
    page.fill("#aggr-filter", "")
    expect(table.locator("tr")).to_have_count(5)

    # Sorting: by limit, largest first, then smallest first on a second click.
    limit_header = page.locator('#aggr-table th[data-key="limit"]')
    limit_header.locator("button").click()
    expect(limit_header).to_have_attribute("aria-sort", "descending")
    assert aggregation_ids(page)[0] == "cdn.example.net"  # 16, remembered after it drained
    limit_header.locator("button").click()
    expect(limit_header).to_have_attribute("aria-sort", "ascending")
    assert aggregation_ids(page)[0] == "shop.example.com"
    page.locator('#aggr-table th[data-key="id"] button').click()
    assert aggregation_ids(page) == sorted(aggregation_ids(page))
    page.locator('#aggr-table th[data-key="pending"] button').click()
    pending = page.locator("#aggr-table tbody tr td:nth-child(3)").all_inner_texts()
    assert [int(n) for n in pending] == sorted((int(n) for n in pending), reverse=True)

    # The job lookup: the last job of the slow aggregation, still waiting for its turn...
    page.fill("#job-id", shop_ids[-1])
    page.click("#job-form button[type=submit]")
    result = page.locator("#job-result")
    expect(result.locator('[data-field="state"]')).to_have_text(re.compile("^(queued|in_progress)$"))
    expect(result).to_contain_text("shop.example.com")
    # ...and a failed one, opened from the failures table, with its error and timeline.
    failures.get_by_role("button", name=missing).click()
    expect(page.locator("#job-id")).to_have_value(missing)
    expect(result.locator('[data-field="state"]')).to_have_text(
        re.compile("^(callback_pending|callback_failed)$")
    )
    expect(result.locator(".errors")).to_contain_text("Received status code 404")
    expect(result.locator(".timeline li").first).to_contain_text("Created")
    expect(result.locator(".timeline")).to_contain_text("Finished")

    # A delivered job stays visible until its file is deleted, with its file's checksum.
    page.fill("#job-id", image)
    page.click("#job-form button[type=submit]")
    expect(result.locator('[data-field="state"]')).to_have_text("delivered")
    expect(result.locator('[data-field="callback"]')).to_contain_text("Delivered")
    expect(result.locator('[data-field="file"]')).to_contain_text("sha256")
    expect(result.locator(".timeline")).to_contain_text("Callback delivered")

    page.locator("#job-result").scroll_into_view_if_needed()
    page.wait_for_timeout(2500)  # one more poll: the rates include the jobs above
    watched.screenshot("dashboard.png")
    assert watched.errors == []


def test_retry_failed_callback(watched, stack: Stack, files: FileServer, rdb: redis.Redis) -> None:
    page = watched.page
    refusing = CallbackServer(status=500)
    refusing.start()
    try:
        api, _, notifier = stack.all_three(callback_max_attempts=1)
        job_id = api.post_job(job_body(files.url("tiny.png"), "retry.example.com", refusing.url))
        wait_until(lambda: rdb.hget(f"job:{job_id}", "CallbackState") == "Failed", message="callback Failed")
        notifier.stop()  # nothing delivers (and fails) it again before we look at Redis
    finally:
        refusing.stop()

    open_dashboard(page, api)
    page.fill("#job-id", job_id)
    page.click("#job-form button[type=submit]")
    expect(page.locator('#job-result [data-field="callback"]')).to_contain_text("Failed")
    page.click("#retry-callback")
    expect(page.locator("#retry-result")).to_have_text("Callback rescheduled.")
    expect(page.locator('#job-result [data-field="callback"]')).to_contain_text("Pending")
    assert rdb.hget(f"job:{job_id}", "CallbackState") == "Pending"
    assert rdb.zscore("CallbackQueue", job_id) is not None
    expect(page.locator("#retry-callback")).to_have_count(0)  # only shown for a Failed callback
    watched.screenshot("dashboard-retry.png")
    assert watched.errors == []


def test_api_key_form(watched, stack: Stack, files: FileServer) -> None:
    page = watched.page
    api = stack.api(api_keys="dash-secret-1")
    headers = {"Authorization": "Bearer dash-secret-1"}
    resp = api.http.post(
        "/download",
        headers=headers,
        json=job_body(files.url("tiny.png"), "keyed.example.com", "http://127.0.0.1:9/cb", limit=5),
    )
    assert resp.status_code == 201, resp.text

    page.goto(api.url + "/")
    expect(page.locator("#key-form")).to_be_visible()
    expect(page.locator("#dashboard")).to_be_hidden()
    page.fill("#key-input", "wrong-key")
    page.click("#key-form button[type=submit]")
    expect(page.locator("#key-message")).to_contain_text("refused")
    page.fill("#key-input", "dash-secret-1")
    page.click("#key-form button[type=submit]")
    expect(page.locator("#dashboard")).to_be_visible()
    expect(page.locator('#aggr-table tr[data-aggr="keyed.example.com"] td').nth(1)).to_have_text("5")
    expect(page.locator('#instances [data-role="api"] h3')).to_have_text("api (1)")
    assert page.evaluate("sessionStorage.getItem('downloader.apiKey')") == "dash-secret-1"
    # The data calls carry the key; the page itself stays open, and no other call was refused.
    stored = json.loads(api.http.get("/ui/overview", headers=headers).text)
    assert [a["id"] for a in stored["aggregations"]] == ["keyed.example.com"]
    assert api.http.get("/ui/overview").status_code == 401
    assert [e for e in watched.errors if UNAUTHORIZED_LOAD not in e] == []
    assert len(watched.errors) == 2  # the first poll without a key, then the wrong key
