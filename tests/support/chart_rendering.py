"""`helm template` of the chart, parsed: the `render` fixture's object (see conftest.py).

A module of its own, not conftest.py: test modules import it by a name no other test
directory uses (tests/*/conftest.py would shadow each other under --import-mode=importlib).
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "downloader"
CI_VALUES = CHART / "ci" / "ci-values.yaml"


class Renderer:
    """`helm template` of the chart, parsed."""

    def __init__(self, helm: Path, tmp: Path) -> None:
        self.helm = helm
        self.tmp = tmp
        self.count = 0

    def run(self, *args: str, values: dict[str, Any] | None = None, name: str = "r",
            namespace: str = "ns") -> subprocess.CompletedProcess[str]:  # fmt: skip
        cmd = [str(self.helm), "template", name, str(CHART), "--namespace", namespace, *args]
        if values is not None:
            self.count += 1
            path = self.tmp / f"values-{self.count}.yaml"
            path.write_text(yaml.safe_dump(values), encoding="utf-8")
            cmd += ["-f", str(path)]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)

    def __call__(self, *args: str, **kwargs: Any) -> list[dict[str, Any]]:
        done = self.run(*args, **kwargs)
        if done.returncode != 0:
            pytest.fail(f"helm template {' '.join(args)} failed:\n{done.stderr}", pytrace=False)
        return [d for d in yaml.safe_load_all(done.stdout) if d]

    def fails(self, *args: str, **kwargs: Any) -> str:
        done = self.run(*args, **kwargs)
        assert done.returncode != 0, f"helm template {' '.join(args)} should have failed"
        return done.stderr
