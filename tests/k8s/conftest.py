"""Fixtures of the Kubernetes tests: a real control plane for the session, a namespace per test.

`cluster` (session): etcd + kube-apiserver v1.37.2, kube-controller-manager, kube-scheduler
and kwok with one fake Node, on free 127.0.0.1 ports (see `cluster.py`). The CRDs of
`crds/*.yaml` are applied and Established before the first test. Use `cluster.kubeconfig`,
`cluster.server`, `cluster.token`, `cluster.kubectl(...)` and `cluster.restart_apiserver()`.

`namespace` (function): a fresh namespace, deleted after the test.

The binary is built (or found in its cache) by `tests/controlplane/build.sh` once, when the
selected tests need `cluster`, before any test runs, so that a cold build (many minutes)
is not cut by the per-test timeout. A build or start failure fails those tests with the
error output; nothing is skipped and nothing is faked.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from cluster import ControlPlane, ControlPlaneError, build, create_namespace, delete_namespace, tail

_build: dict[str, object] = {}


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "k8s: needs the real control plane (tests/k8s, tests/controlplane)")


def pytest_collection_finish(session: pytest.Session) -> None:
    """Build the control plane before the first test, if a selected test needs it."""
    if session.config.option.collectonly or not any("cluster" in item.fixturenames for item in session.items):
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line(
            "k8s: building the test control plane (tests/controlplane/build.sh; cached after the first time)"
        )
    t0 = time.monotonic()
    try:
        _build["binary"] = build()
    except ControlPlaneError as exc:
        _build["error"] = str(exc)
    _build["seconds"] = time.monotonic() - t0
    if reporter is not None:
        reporter.write_line(f"k8s: build step took {_build['seconds']:.1f}s")


@pytest.fixture(scope="session")
def cluster(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ControlPlane]:
    if "error" in _build:
        pytest.fail(str(_build["error"]), pytrace=False)
    binary = _build.get("binary")
    if not isinstance(binary, Path):  # e.g. a fixture requested dynamically: build now
        try:
            binary = build()
        except ControlPlaneError as exc:
            pytest.fail(str(exc), pytrace=False)
    plane = ControlPlane(tmp_path_factory.mktemp("k8s"), binary)
    try:
        plane.start()
    except ControlPlaneError as exc:
        pytest.fail(f"the test control plane did not start: {exc}", pytrace=False)
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if reporter is not None and capture is not None:
        t = plane.timings
        with capture.global_and_fixture_disabled():
            reporter.ensure_newline()
            reporter.write_line(
                f"k8s: control plane at {plane.server}: /readyz after {t['readyz']:.1f}s, CRDs ({len(plane.crds)}) "
                f"Established after {t['crds']:.1f}s, node and namespace ready after {t['up']:.1f}s"
            )
    yield plane
    plane.stop()


@pytest.fixture
def namespace(cluster: ControlPlane) -> Iterator[str]:
    name = create_namespace(cluster)
    yield name
    delete_namespace(cluster, name)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """On a failure, attach the tails of the control plane's logs to the report."""
    outcome = yield
    report = outcome.get_result()
    if report.failed and "cluster" in getattr(item, "fixturenames", ()):
        plane = item.funcargs.get("cluster") if hasattr(item, "funcargs") else None
        if isinstance(plane, ControlPlane):
            for proc in plane.procs.values():
                report.sections.append((f"k8s {proc.name} log", tail(proc.log, 30)))
