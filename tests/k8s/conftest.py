"""Fixtures of the Kubernetes tests: a real control plane for the session, a namespace per test.

`cluster` (session): etcd + kube-apiserver v1.37.2, kube-controller-manager, kube-scheduler
and kwok with one fake Node, on free 127.0.0.1 ports (see tools/testbed/controlplane.py). The CRDs of
`crds/*.yaml` are applied and Established before the first test. Use `cluster.kubeconfig`,
`cluster.server`, `cluster.token`, `cluster.kubectl(...)` and `cluster.restart_apiserver()`.

`namespace` (function): a fresh namespace, deleted after the test.

`images` (session): the api and worker images of tests/images/build.sh (tests/support/podman_images.py).
`real_node` (session): a real node next to kwok (tests/support/node.py): containerd + runc and a
kubelet v1.37.2 joined to `cluster` as Node `127.0.0.1`, with the api and worker images
loaded. It is tainted: a pod for it needs `real_node.tolerations`, `real_node.node_selector`,
`hostNetwork: true`, `imagePullPolicy: Never` and an image of `real_node.images`.

The binaries are built (or found in their caches) by `tests/controlplane/build.sh`,
`tests/node/build.sh` and `tests/images/build.sh` once, when the selected tests need them,
before any test runs, so that a cold build (many minutes) is not cut by the per-test timeout.
A build or start failure fails those tests with the error output; nothing is skipped and
nothing is faked.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import podman_images
from support.kubetools import Kube
from support.node import NodeError, RealNode
from support.node import build as build_node
from support.operator_proc import OperatorProcess
from support.podman_images import Images
from support.procs import Stack
from testbed.controlplane import (
    ControlPlane,
    ControlPlaneError,
    build,
    create_namespace,
    delete_namespace,
    tail,
)

_build: dict[str, object] = {}
#: the real node while it runs (stopped after its last user, or at the session's end)
_running: dict[str, RealNode] = {}


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "k8s: needs the real control plane (tests/k8s, tests/controlplane)")
    config.addinivalue_line(
        "markers", "node: needs the real node (kubelet + containerd + runc, tests/node) beside kwok; root"
    )


def pytest_collection_finish(session: pytest.Session) -> None:
    """Build the control plane (and the real node, with its images) before the first test, if a
    selected test needs it."""
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
    users = [item.nodeid for item in session.items if "real_node" in item.fixturenames]
    if users:
        _build["last_node_user"] = users[-1]
        _build_node(session)


def _build_node(session: pytest.Session) -> None:
    """The real node's binaries and the images it runs, built before the first test too."""
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    capture = session.config.pluginmanager.get_plugin("capturemanager")
    if reporter is not None:
        reporter.write_line(
            "k8s: building the real node (tests/node/build.sh) and the images (tests/images/build.sh)"
        )
    t0 = time.monotonic()
    try:
        _build["node"] = build_node()
    except NodeError as exc:
        _build["node_error"] = str(exc)
    _build["node_seconds"] = time.monotonic() - t0
    t0 = time.monotonic()
    try:
        # podman_images.build() prints what each step cost: shown, not captured
        with capture.global_and_fixture_disabled() if capture is not None else contextlib.nullcontext():
            _build["images"] = podman_images.build()
    except pytest.fail.Exception as exc:
        _build["images_error"] = str(exc)
    _build["images_seconds"] = time.monotonic() - t0
    if reporter is not None:
        reporter.write_line(
            f"k8s: node build step took {_build['node_seconds']:.1f}s, images {_build['images_seconds']:.1f}s"
        )


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
def kube(cluster: ControlPlane, namespace: str) -> Kube:
    return Kube(cluster, namespace)


@pytest.fixture
def ops(tmp_path: Path, redis_url: str, cluster: ControlPlane, namespace: str) -> Iterator[Stack]:
    """A process stack whose processes see the cluster (kubeconfig, namespace, the operator's
    1 s refresh interval)."""
    stack = Stack(
        tmp_path,
        redis_url,
        kubeconfig=str(cluster.kubeconfig),
        kube_namespace=namespace,
        operator_interval_seconds=1,
        worker_image="downloader-worker:test",
    )
    yield stack
    stack.stop_all()


@pytest.fixture
def operator(ops: Stack) -> OperatorProcess:
    """`downloader operator` in `ops`, started and live, its /metrics served."""
    return OperatorProcess(ops)


@pytest.fixture(scope="session")
def images() -> Images:
    if "images_error" in _build:
        pytest.fail(str(_build["images_error"]), pytrace=False)
    built = _build.get("images")
    return built if isinstance(built, Images) else podman_images.build()


@pytest.fixture(scope="session")
def real_node(
    request: pytest.FixtureRequest,
    cluster: ControlPlane,
    images: Images,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[RealNode]:
    if "node_error" in _build:
        pytest.fail(str(_build["node_error"]), pytrace=False)
    bin_dir = _build.get("node")
    if not isinstance(bin_dir, Path):  # e.g. a fixture requested dynamically: build now
        try:
            bin_dir = build_node()
        except NodeError as exc:
            pytest.fail(str(exc), pytrace=False)
    node = RealNode(
        tmp_path_factory.mktemp("node"),
        bin_dir,
        cluster,
        podman=images.podman.argv,
        images={"api": images.api, "worker": images.worker},
    )
    try:
        node.start()
    except NodeError as exc:
        pytest.fail(f"the real node did not start: {exc}", pytrace=False)
    _report(request.config, "k8s: real node " + _seconds(node.timings))
    _running["node"] = node
    yield node
    _stop_node(request.config)


@pytest.hookimpl(trylast=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> None:
    """Stop the real node after the last selected test that uses it, not at the session's end:
    it holds the machine-wide lock (another run's node waits), GBs of disk and a kubelet."""
    if item.nodeid == _build.get("last_node_user"):
        _stop_node(item.config)


def _stop_node(config: pytest.Config) -> None:
    node = _running.pop("node", None)
    if node is not None:
        try:
            node.stop()
        finally:
            _report(config, f"k8s: real node stopped in {node.timings.get('stop', 0.0):.1f}s")


def _seconds(timings: dict[str, float]) -> str:
    return ", ".join(f"{name} {seconds:.1f}s" for name, seconds in timings.items())


def _report(config: pytest.Config, line: str) -> None:
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    capture = config.pluginmanager.get_plugin("capturemanager")
    if reporter is not None and capture is not None:
        with capture.global_and_fixture_disabled():
            reporter.ensure_newline()
            reporter.write_line(line)


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
    # a failed call gets them from the root conftest (RealNode.log_tails()); a failed teardown here
    if report.failed and report.when != "call" and "real_node" in getattr(item, "fixturenames", ()):
        node = item.funcargs.get("real_node") if hasattr(item, "funcargs") else None
        if isinstance(node, RealNode):
            report.sections.append(("real node logs", node.log_tails()))
