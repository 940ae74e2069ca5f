"""scripts/bootstrap as `scripts/up` and `scripts/test` run it, on a machine without Java,
Maven, Chromium or redis-server: `up` installs only what the service needs, and the project's
install is skipped until something it depends on changes (pyproject.toml, the list of modules).
apt-get and the venv's python are stand-ins that record what they were asked."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
#: What the script and the stand-in python run besides apt-get (from the real PATH).
TOOLS = [
    "bash",
    "cat",
    "chmod",
    "cut",
    "dirname",
    "echo",
    "find",
    "grep",
    "id",
    "mkdir",
    "rm",
    "sha256sum",
    "sort",
]

FAKE_PYTHON = """#!/bin/bash
# The venv's python: `-c` prints a version; `-m pip install` is recorded and "installs".
if [ "$1" = "-c" ]; then echo "3.11.0 (fake)"; exit 0; fi
echo "$*" >>"$FAKE_LOG.pip"
root="$(cd "$(dirname "$0")/../.." && pwd)"
mkdir -p "$root/build/__editable__.downloader-0.2.0-py3-none-any"
printf '#!/bin/bash\\n' >"$root/.venv/bin/downloader"; chmod +x "$root/.venv/bin/downloader"
"""
FAKE_APT = """#!/bin/bash
echo "$*" >>"$FAKE_LOG.apt"
"""


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    root = tmp_path / "checkout"
    (root / "scripts").mkdir(parents=True)
    shutil.copy(REPO / "scripts" / "bootstrap", root / "scripts" / "bootstrap")
    shutil.copy(REPO / "pyproject.toml", root / "pyproject.toml")
    for module in ("downloader/__init__.py", "api/main.py", "worker/__init__.py", "k8s_operator/__init__.py"):
        (root / module).parent.mkdir(parents=True, exist_ok=True)
        (root / module).write_text("")
    (root / "api" / "static").mkdir()
    (root / "api" / "static" / "index.html").write_text("<html></html>")
    venv_bin = root / ".venv" / "bin"
    venv_bin.mkdir(parents=True)
    (venv_bin / "python").write_text(FAKE_PYTHON)
    (venv_bin / "python").chmod(0o755)
    return root


@pytest.fixture
def bare_path(tmp_path: Path) -> Path:
    """A PATH with the basic tools and stand-ins for apt-get, sudo and ldconfig: no java, mvn,
    chromium or redis-server (whatever this machine has)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in TOOLS:
        found = shutil.which(tool)
        assert found, tool
        (bin_dir / tool).symlink_to(found)
    for name, text in (
        ("apt-get", FAKE_APT),
        ("sudo", '#!/bin/bash\nexec "$@"\n'),
        ("ldconfig", "#!/bin/bash\n"),
    ):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    return bin_dir


def bootstrap(checkout: Path, bare_path: Path, mode: str) -> tuple[list[str], list[str]]:
    """Run it; returns (apt-get calls, pip calls) so far."""
    log = checkout.parent / "calls"
    env = {"PATH": str(bare_path), "FAKE_LOG": str(log), "HOME": str(checkout.parent)}
    done = subprocess.run(["bash", str(checkout / "scripts" / "bootstrap"), mode], env=env, cwd=checkout,
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr

    def calls(kind: str) -> list[str]:
        path = Path(f"{log}.{kind}")
        return path.read_text().splitlines() if path.exists() else []

    return calls("apt"), calls("pip")


def installs(apt_calls: list[str]) -> list[str]:
    return [
        word for call in apt_calls if " install " in f" {call} " for word in call.split() if word[0] != "-"
    ]


def test_up_installs_only_what_the_service_needs_and_skips_an_unchanged_project(
    checkout: Path, bare_path: Path
) -> None:
    apt, pip = bootstrap(checkout, bare_path, "up")

    packages = installs(apt)
    assert "redis-server" in packages and "libmagic1" in packages
    assert not {"openjdk-17-jre-headless", "maven", "chromium"} & set(packages), packages
    assert len(pip) == 1 and " -e . " in f" {pip[0]} " and "[dev]" not in pip[0], pip

    # A restart: nothing the install depends on changed, so no pip at all.
    assert bootstrap(checkout, bare_path, "up")[1] == pip
    (checkout / "api" / "main.py").write_text("# edited: the editable install links the file\n")
    assert bootstrap(checkout, bare_path, "up")[1] == pip

    # A new module (or a new static file) is not linked yet: reinstall.
    (checkout / "downloader" / "new_room.py").write_text("")
    assert len(bootstrap(checkout, bare_path, "up")[1]) == 2
    (checkout / "api" / "static" / "new.js").write_text("")
    assert len(bootstrap(checkout, bare_path, "up")[1]) == 3
    with (checkout / "pyproject.toml").open("a") as f:
        f.write("\n# a changed pyproject\n")
    assert len(bootstrap(checkout, bare_path, "up")[1]) == 4
    assert len(bootstrap(checkout, bare_path, "up")[1]) == 4


def test_dev_installs_the_tests_tools_and_extras_and_serves_up_afterwards(
    checkout: Path, bare_path: Path
) -> None:
    apt, pip = bootstrap(checkout, bare_path, "dev")

    packages = installs(apt)
    assert {"redis-server", "openjdk-17-jre-headless", "maven", "chromium"} <= set(packages), packages
    assert len(pip) == 1 and ".[dev]" in pip[0]
    assert bootstrap(checkout, bare_path, "dev")[1] == pip
    assert bootstrap(checkout, bare_path, "up")[1] == pip, "a dev install serves `up` as it is"
    os.remove(checkout / ".venv" / ".downloader-install")
    assert len(bootstrap(checkout, bare_path, "up")[1]) == 2, "no stamp: install"
