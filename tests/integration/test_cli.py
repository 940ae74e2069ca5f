"""The `downloader` command as users run it: version, and one clear line for bad settings."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from support.procs import free_port

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


def command_line(command: str, tmp_path: Path) -> list[str]:
    """`command` with the arguments it needs to get as far as reading the settings."""
    port = str(free_port())
    if command == "enqueue":
        urls = tmp_path / "urls.txt"
        urls.write_text("http://example.com/a\n")
        return ["enqueue", str(urls), "--aggr", "a", "--limit", "1", "--callback-url", "http://127.0.0.1:9/"]
    return {
        "up": ["up", "--host", "127.0.0.1", "--port", port],
        "api": ["api", "--host", "127.0.0.1", "--port", port],
        "retry": ["retry", "--failed", "--dry-run"],
    }.get(command, [command])


EVERY_COMMAND = ["up", "api", "worker", "processor", "notifier", "operator", "enqueue", "retry"]


@pytest.mark.parametrize("command", EVERY_COMMAND)
@pytest.mark.parametrize(
    "name,value,why",
    [
        # Each used to end in a traceback: pydantic-settings' own (48 lines), redis-py's.
        ("DOWNLOADER_DEFAULT_REQUEST_HEADERS", "{bad", "not valid JSON"),
        ("DOWNLOADER_REDIS_URL", "notaurl", "not a Redis URL"),
        # ...and this one silently meant INFO.
        ("DOWNLOADER_LOG_LEVEL", "LOUD", "'LOUD' is none of"),
    ],
)
def test_a_setting_that_does_not_parse_is_one_line_for_every_command(
    tmp_path: Path, command: str, name: str, value: str, why: str
) -> None:
    out = run(*command_line(command, tmp_path), env={name: value}, cwd=tmp_path)
    assert "Traceback" not in out.stdout + out.stderr, out.stderr
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"downloader: invalid setting {name}: {why}"), out.stderr
    assert not (tmp_path / "data" / "redis").exists(), "`up` started its Redis before reading the settings"


def test_a_misspelt_variable_is_a_warning_naming_the_real_one(tmp_path: Path, redis_url: str) -> None:
    typo = "DOWNLOADER_" + "CALLBACK_SIGNING_KEY"  # what the chart used to set
    out = run("retry", "--failed", "--dry-run", env={"DOWNLOADER_REDIS_URL": redis_url, typo: "s3cret"},
              cwd=tmp_path)  # fmt: skip
    assert out.returncode == 0, out.stderr
    warnings = [line.split(": ", 1)[1] for line in out.stderr.splitlines() if " WARNING " in line]
    assert warnings == [
        f"{typo} is not a setting and is ignored; did you mean DOWNLOADER_CALLBACK_SIGNING_KEYS?"
    ]


def test_an_uncreatable_tmp_dir_is_one_line_not_a_traceback(tmp_path: Path, redis_url: str) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    out = run("worker", env={"DOWNLOADER_REDIS_URL": redis_url, "DOWNLOADER_TMP_DIR": str(blocker / "tmp"),
                             "DOWNLOADER_STORAGE_ROOT": str(tmp_path / "files")}, cwd=tmp_path)  # fmt: skip
    assert "Traceback" not in out.stderr, out.stderr
    assert out.returncode == 2  # it used to exit 0, after a traceback in the worker's thread
    assert out.stderr.strip().splitlines() == [
        f"downloader: invalid setting DOWNLOADER_TMP_DIR: cannot create {blocker / 'tmp'}: Not a directory"
    ]


@pytest.mark.parametrize(
    "command,variable",
    [
        ("api", "DOWNLOADER_KUBECONFIG"),
        ("up", "DOWNLOADER_KUBECONFIG"),
        ("up", "DOWNLOADER_STORAGE_ROOT"),
    ],
)
def test_what_the_api_would_find_wrong_at_start_up_is_one_line(
    tmp_path: Path, redis_url: str, command: str, variable: str
) -> None:
    """Not a traceback from uvicorn's start-up (the API loads a kubeconfig there, and `up`
    makes the storage root it serves)."""
    blocker = tmp_path / "file"
    blocker.write_text("a: [\n")  # neither YAML nor a directory
    env = {"DOWNLOADER_REDIS_URL": redis_url, "DOWNLOADER_TMP_DIR": str(tmp_path / "tmp"),
           variable: str(blocker / "x" if variable == "DOWNLOADER_STORAGE_ROOT" else blocker)}  # fmt: skip
    out = run(*command_line(command, tmp_path), env=env, cwd=tmp_path)
    assert "Traceback" not in out.stderr, out.stderr
    assert out.returncode == 2
    lines = [line for line in out.stderr.splitlines() if line.startswith("downloader:")]
    assert len(lines) == 1 and variable in lines[0], out.stderr


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
