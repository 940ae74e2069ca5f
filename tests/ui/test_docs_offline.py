"""/docs and /redoc in a real headless Chromium with every request off the API's own origin
refused: Swagger UI and ReDoc come from the API itself (the fastapi-offline wheel's assets),
so the pages render offline. Screenshots go to artifacts/."""

from __future__ import annotations

import pytest
from playwright.sync_api import Route, expect
from support.procs import Stack

pytestmark = pytest.mark.ui


def offline(watched, origin: str) -> list[str]:
    """Refuse every request that leaves `origin` (a CDN, fonts); returns the refused URLs."""
    refused: list[str] = []

    def only_local(route: Route) -> None:
        if route.request.url.startswith(origin + "/"):
            route.continue_()
        else:
            refused.append(route.request.url)
            route.abort("internetdisconnected")

    watched.page.context.route("**/*", only_local)
    return refused


def test_swagger_ui_renders_with_the_network_blocked(watched, stack: Stack) -> None:
    api = stack.api()
    refused = offline(watched, api.url)
    page = watched.page

    page.goto(api.url + "/docs")

    expect(page.locator(".swagger-ui .info .title")).to_contain_text("Downloader")
    download = page.locator(".opblock-summary-path", has_text="/download").first
    expect(download).to_be_visible()
    download.click()  # an operation opens: the whole bundle runs, not just its first paint
    expect(page.locator(".opblock-body").first).to_be_visible()
    watched.screenshot("docs-offline.png")
    assert refused == [], f"requests left the API: {refused}"
    assert watched.errors == []


def test_redoc_renders_with_the_network_blocked(watched, stack: Stack) -> None:
    api = stack.api()
    refused = offline(watched, api.url)
    page = watched.page

    page.goto(api.url + "/redoc")

    expect(page.locator("h1", has_text="Downloader")).to_be_visible()
    expect(page.get_by_text("/download").first).to_be_attached()
    watched.screenshot("redoc-offline.png")
    # ReDoc's own script links its "API docs by Redocly" logo to its CDN: a decorative image,
    # refused here like everything else, and nothing the page needs.
    assert [url for url in refused if not url.endswith("/redoc/logo-mini.svg")] == [], refused
    assert all(not e.startswith("pageerror") for e in watched.errors), watched.errors
