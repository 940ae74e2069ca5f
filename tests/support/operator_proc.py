"""`downloader operator` run by a test stack, with its liveness endpoint and /metrics served:
what the k8s tests read of it (reconciles, sweeps, errors by cause)."""

from __future__ import annotations

import re

import httpx

from support.kubetools import wait_for
from support.procs import Proc, Stack, free_port


class OperatorProcess:
    def __init__(self, stack: Stack) -> None:
        self.metrics_port = free_port()
        liveness_port = free_port()
        env = stack.env(operator_liveness_port=liveness_port, metrics_port=self.metrics_port)
        self.proc: Proc = stack.spawn("operator", ["operator"], env=env)

        def live() -> bool:
            self.proc.check_alive()
            try:
                url = f"http://127.0.0.1:{liveness_port}/healthz"
                return httpx.get(url, timeout=1, trust_env=False).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(live, 60, "the operator's liveness endpoint")

    def metric(self, name: str, labels: str = "", *, required: bool = False) -> float:
        """One sample of the operator's /metrics: 0 when it has none yet, unless `required`."""
        self.proc.check_alive()
        text = httpx.get(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5, trust_env=False).text
        series = re.escape(name + (f"{{{labels}}}" if labels else ""))
        found = re.search(rf"^{series} (\S+)$", text, re.MULTILINE)
        assert found or not required, f"no {series} in the operator's /metrics:\n{text[:2000]}"
        return float(found.group(1)) if found else 0.0

    def reconciles(self) -> int:
        """Reconciles begun so far (on.create, on.update and every refresh of the sweep)."""
        return int(self.metric("downloader_operator_reconciles_total", required=True))

    def wait_reconciles(self, count: int, what: str) -> None:
        """Until `count` more reconciles have begun."""
        target = self.reconciles() + count
        wait_for(lambda: self.reconciles() >= target, 60, what)

    def sweeps(self) -> float:
        return self.metric("downloader_operator_sweep_seconds_count")

    def errors(self, cause: str) -> float:
        return self.metric("downloader_operator_reconcile_errors_total", f'cause="{cause}"')
