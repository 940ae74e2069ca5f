"""podman for the image tests: the store of tests/images/build.sh and this host's run options.

`build()` runs build.sh (which builds or takes from its cache outside the repository the
images of Dockerfile.api and Dockerfile.worker) and returns where they are; `Podman` runs
commands in the same store, the way this cgroup v1 host allows (runc, cgroupfs, rlimits
within the host's hard limits).
"""

from __future__ import annotations

import json
import shlex
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
BUILD = ROOT / "tests" / "images" / "build.sh"
#: A cold build (the base, then every dependency from the package index) takes minutes.
BUILD_TIMEOUT = 1500.0
#: podman's default rlimits exceed this host's hard limits, and runc refuses to raise them; the
#: api's HEALTHCHECK would be timed by systemd, which does not run here (`podman healthcheck
#: run` still runs it on demand).
RUN_OPTIONS = ["--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024", "--health-interval", "disable"]


def print_figures(title: str, figures: dict[str, object]) -> None:
    """The figures of a test, printed so that `pytest -s` shows them."""
    width = max(len(k) for k in figures)
    lines = [f"== {title} =="] + [f"  {k:<{width}}  {v}" for k, v in figures.items()]
    print("\n" + "\n".join(lines), flush=True)


@dataclass(frozen=True)
class Podman:
    """podman with the build's store and this host's runtime options."""

    argv: tuple[str, ...]

    def __call__(
        self, *args: str, check: bool = True, timeout: float = 120.0
    ) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [*self.argv, *args], capture_output=True, text=True, timeout=timeout, check=False
        )
        if check and done.returncode != 0:
            raise AssertionError(
                f"{shlex.join(['podman', *args])} exited {done.returncode}:\n{done.stdout[-3000:]}"
                f"\n{done.stderr[-3000:]}"
            )
        return done

    def run(self, image: str, *args: str, entrypoint: str | None = None, opts: Sequence[str] = ()) -> str:
        """`podman run --rm` of `image`, its stdout."""
        first = ["--entrypoint", entrypoint] if entrypoint else []
        return self("run", "--rm", *RUN_OPTIONS, "--network", "none", *first, *opts, image, *args).stdout

    def inspect(self, image: str) -> dict[str, Any]:
        found: list[dict[str, Any]] = json.loads(self("image", "inspect", image).stdout)
        return found[0]


@dataclass(frozen=True)
class Images:
    podman: Podman
    base: str
    api: str
    worker: str
    seconds: dict[str, int]  # per step; 0 when it came from the cache

    def ref(self, name: str) -> str:
        return {"api": self.api, "worker": self.worker}[name]


def build() -> Images:
    """The images, built or cached by build.sh; what each step cost is printed."""
    start = time.monotonic()
    done = subprocess.run(
        [str(BUILD)], capture_output=True, text=True, timeout=BUILD_TIMEOUT, check=False, cwd=ROOT
    )
    if done.returncode != 0:
        pytest.fail(f"{BUILD.name} exited {done.returncode}:\n{done.stderr[-6000:]}", pytrace=False)
    out = dict(line.split("=", 1) for line in done.stdout.splitlines() if "=" in line)
    built = Images(
        podman=Podman(tuple(out["podman"].split())),
        base=out["base"],
        api=out["api"],
        worker=out["worker"],
        seconds={name: int(out[f"{name}_seconds"]) for name in ("tools", "base", "api", "worker")},
    )
    print_figures(
        "images (tests/images/build.sh; 0 s: from the cache)",
        {
            "apt: podman, runc, mmdebstrap": f"{built.seconds['tools']} s",
            "base (mmdebstrap + podman import)": f"{built.seconds['base']} s  {built.base}",
            "Dockerfile.api build": f"{built.seconds['api']} s  {built.api}",
            "Dockerfile.worker build": f"{built.seconds['worker']} s  {built.worker}",
            "build.sh in all": f"{time.monotonic() - start:.0f} s",
        },
    )
    return built
