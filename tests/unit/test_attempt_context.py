"""An attempt sees a small context of its worker, never the Processor: attempts.py imports no
module of the scheduling loop (it once did, under TYPE_CHECKING: a hidden import cycle)."""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import pytest

from downloader.worker import attempts

WORKER = Path(attempts.__file__).parent


def imported_modules(path: Path) -> set[str]:
    """Every module a file imports, at any depth (TYPE_CHECKING blocks and functions too)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def test_attempts_import_nothing_of_the_loop_that_runs_them() -> None:
    loop = {"downloader.worker.processor", "downloader.worker.notifier", "downloader.worker.housekeeping"}
    assert not imported_modules(WORKER / "attempts.py") & loop


def test_the_context_is_frozen_and_small() -> None:
    fields = {f.name for f in dataclasses.fields(attempts.AttemptContext)}
    services = {"db", "token", "fetcher", "storage", "stats", "clock"}
    settings = {
        "tmp_dir",
        "download_url",
        "retry_backoff_seconds",
        "max_retries",
        "job_retention_seconds",
        "retry_after_max_seconds",
        "sync_files",
    }
    assert fields == services | settings
    context = attempts.AttemptContext(**dict.fromkeys(fields - {"clock"}))  # type: ignore[arg-type]
    with pytest.raises(dataclasses.FrozenInstanceError):
        context.token = "another worker's"  # type: ignore[misc]
