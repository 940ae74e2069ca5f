"""The `downloader` command as users run it: version, and one clear line for bad settings."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from downloader.version import __version__

pytestmark = pytest.mark.integration


def run(*args: str, env: dict[str, str] | None = None, cwd: Path) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("DOWNLOADER_")}
    clean.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "downloader", *args],
        env=clean,
        cwd=cwd,
        text=True,
        capture_output=True,
        timeout=60,
    )


def test_version_prints_the_package_version(tmp_path: Path) -> None:
    out = run("version", cwd=tmp_path)
    assert out.returncode == 0 and out.stdout.strip() == f"Downloader Version {__version__}"


def test_the_pyproject_version_matches(tmp_path: Path) -> None:
    pyproject = (Path(__file__).parents[2] / "pyproject.toml").read_text()
    assert f'version = "{__version__}"' in pyproject


@pytest.mark.parametrize("command", ["worker", "notifier", "api", "processor"])
def test_a_bad_setting_stops_the_process_with_one_line(tmp_path: Path, command: str) -> None:
    out = run(command, env={"DOWNLOADER_LEASE_SECONDS": "soon"}, cwd=tmp_path)
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "DOWNLOADER_LEASE_SECONDS" in lines[0], out.stderr


def test_a_missing_config_file_is_one_line(tmp_path: Path) -> None:
    out = run("worker", "-c", str(tmp_path / "nope.json"), cwd=tmp_path)
    assert out.returncode == 2 and out.stderr.count("\n") == 1 and "cannot read config file" in out.stderr


def test_an_unwritable_storage_root_stops_the_worker(tmp_path: Path, redis_url: str) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    out = run(
        "worker",
        env={
            "DOWNLOADER_REDIS_URL": redis_url,
            "DOWNLOADER_STORAGE_ROOT": str(blocker / "x"),
            "DOWNLOADER_TMP_DIR": str(tmp_path / "tmp"),
        },
        cwd=tmp_path,
    )
    assert out.returncode == 1 and "writable" in out.stderr


def test_no_command_prints_help(tmp_path: Path) -> None:
    out = run(cwd=tmp_path)
    assert out.returncode == 2 and "usage: downloader" in out.stdout
