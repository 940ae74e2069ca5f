"""What the Kubernetes tests share: waiting for a condition, kubectl in one namespace (JSON
parsed), and helm with a private home against the test control plane."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from support.helm import helm_binary

CHART = Path(__file__).resolve().parents[2] / "charts" / "downloader"


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.25) -> Any:
    """The first truthy value of `predicate`, polled until `timeout` seconds have passed."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:g}s waiting for {what} (last: {last!r})")


class Kube:
    """kubectl in the test's namespace, parsing JSON."""

    def __init__(self, cluster: Any, namespace: str) -> None:
        self.cluster = cluster
        self.namespace = namespace

    def run(self, *args: str) -> str:
        return str(self.cluster.kubectl("-n", self.namespace, *args))

    def get(self, kind: str, name: str) -> dict[str, Any] | None:
        try:
            return json.loads(self.run("get", kind, name, "-o", "json"))  # type: ignore[no-any-return]
        except Exception:  # not found (kubectl exits non-zero)
            return None

    def items(self, kind: str, *selectors: str) -> list[dict[str, Any]]:
        """Every `kind` object of the namespace, optionally by label selectors (`-l a=b`)."""
        args = [arg for s in selectors for arg in ("-l", s)]
        return list(json.loads(self.run("get", kind, *args, "-o", "json"))["items"])

    def aggregation(self, name: str) -> dict[str, Any] | None:
        return self.get("aggregations.downloader.io", name)

    def deployment(self, name: str) -> dict[str, Any] | None:
        return self.get("deployment", f"downloader-worker-{name}")

    def apply(self, doc: dict[str, Any], tmp: Path) -> None:
        path = tmp / f"apply-{time.monotonic_ns()}.json"
        path.write_text(json.dumps(doc))
        self.run("apply", "-f", str(path))


def helm(cluster: Any, tmp: Path, *args: str, timeout: float = 300) -> str:
    """`helm ARGS` against the test control plane, its cache and config under `tmp`; stdout."""
    env = {**os.environ, "KUBECONFIG": str(cluster.kubeconfig), "HELM_CACHE_HOME": str(tmp / "cache"),
           "HELM_CONFIG_HOME": str(tmp / "config"), "HELM_DATA_HOME": str(tmp / "data")}  # fmt: skip
    out = subprocess.run(
        [str(helm_binary()), *args], env=env, capture_output=True, text=True, timeout=timeout
    )
    assert out.returncode == 0, f"helm {' '.join(args)} failed:\n{out.stdout}\n{out.stderr}"
    return out.stdout


def aggregation_doc(name: str, **spec: Any) -> dict[str, Any]:
    """An Aggregation manifest whose aggregation id is its name (limit 4 unless `spec` says)."""
    return {
        "apiVersion": "downloader.io/v1alpha1",
        "kind": "Aggregation",
        "metadata": {"name": name},
        "spec": {"id": name, "limit": 4, **spec},
    }
