"""Fixtures of the chart tests: the helm binary (built once, see tests/support/helm.py) and a renderer.

`helm` (session): the path of helm v3.22.0, built with `go install` into a cache outside the
repository the first time. The build runs before the first test (when a selected test needs
`helm`), so that a cold build is not cut by the per-test timeout; a failed build fails those
tests with go's output, never skips them.

`render` (session): `render(*helm_args, values={...}, name="r", namespace="ns")` runs
`helm template` on the chart and returns the parsed documents; `render.fails(...)` returns
helm's error text of a render that must fail.

No `cluster` fixture here: tests/chart/test_install.py takes it from tests/k8s/conftest.py.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from support.chart_rendering import Renderer
from support.helm import HelmBuildError, helm_binary

_build: dict[str, object] = {}


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "chart: renders the Helm chart with helm (tests/chart; builds helm once)"
    )


def pytest_collection_finish(session: pytest.Session) -> None:
    """Build helm before the first test, if a selected test needs it."""
    if session.config.option.collectonly or not any(
        "helm" in getattr(item, "fixturenames", ()) for item in session.items
    ):
        return
    t0 = time.monotonic()
    try:
        _build["binary"] = helm_binary()
    except HelmBuildError as exc:
        _build["error"] = str(exc)
    _build["seconds"] = time.monotonic() - t0
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line(
            f"chart: helm ready after {_build['seconds']:.1f}s ({_build.get('binary', 'failed')})"
        )


@pytest.fixture(scope="session")
def helm() -> Path:
    if "error" in _build:
        pytest.fail(str(_build["error"]), pytrace=False)
    binary = _build.get("binary")
    if isinstance(binary, Path):
        return binary
    try:  # requested without collection_finish having built it (e.g. getfixturevalue)
        return helm_binary()
    except HelmBuildError as exc:
        pytest.fail(str(exc), pytrace=False)


@pytest.fixture(scope="session")
def render(helm: Path, tmp_path_factory: pytest.TempPathFactory) -> Renderer:
    return Renderer(helm, tmp_path_factory.mktemp("chart-values"))
