"""The two implementations `compare.py` runs: ours (`downloader api|worker|notifier` from the
venv) and the Go original (`downloader-go api|processor|notifier`, one binary given by path,
which is only run, never read). Both expose the same small interface, so each scenario is
written once:

* `setup(run_dir, redis_port)`: prepare a run directory (storage, config);
* `command(role, api_port)` and `env()`: how to start `api`, `worker` (the Go "processor")
  and `notifier`;
* `ready(redis_client, started)`: whether the started roles are ready, beyond `GET /hb`;
* `params()`: what the run used (concurrency, settings), for the JSON.

`AsyncFloor` (`compare.py --floor`, drain scenarios only) is ours with the worker replaced by
`bench/async_floor.py`, the measured floor of an asyncio worker.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

#: The callback concurrency both notifiers get, so they compare.
NOTIFIER_CONCURRENCY = 8


class Ours:
    key = "ours"
    label = "ours"
    worker_name = "downloader worker"

    def __init__(self, exe: Path, extra_env: list[str], worker_concurrency: int = 0) -> None:
        self.exe = str(exe)
        self.extra_env = extra_env
        self.worker_concurrency = worker_concurrency
        self._env: dict[str, str] = {}

    def available(self) -> bool:
        return Path(self.exe).exists()

    def setup(self, run_dir: Path, redis_port: int) -> None:
        (run_dir / "files").mkdir(parents=True, exist_ok=True)
        (run_dir / "tmp").mkdir(parents=True, exist_ok=True)
        # What e2e.py gives the product: this environment plus these.
        env = dict(os.environ)
        env.update(
            DOWNLOADER_REDIS_URL=f"redis://127.0.0.1:{redis_port}/0",
            DOWNLOADER_STORAGE_ROOT=str(run_dir / "files"),
            DOWNLOADER_TMP_DIR=str(run_dir / "tmp"),
            DOWNLOADER_DOWNLOAD_URL="http://localhost/files",
            DOWNLOADER_LOG_LEVEL="WARNING",
            # the file server and the receiver are on 127.0.0.1, which the service refuses by default
            DOWNLOADER_ALLOW_PRIVATE_NETWORKS="true",
            DOWNLOADER_NOTIFIER_CONCURRENCY=str(NOTIFIER_CONCURRENCY),
            NO_PROXY="127.0.0.1",
            no_proxy="127.0.0.1",
        )
        if self.worker_concurrency:
            env["DOWNLOADER_WORKER_CONCURRENCY"] = str(self.worker_concurrency)
        for extra in self.extra_env:
            name, _, value = extra.partition("=")
            env[name] = value
        self._env = env
        self.storage_root = run_dir / "files"

    def env(self) -> dict[str, str]:
        return self._env

    def command(self, role: str, api_port: int) -> list[str]:
        if role == "api":
            return [self.exe, "api", "--host", "127.0.0.1", "--port", str(api_port)]
        if role in ("worker", "notifier"):
            return [self.exe, role]
        raise ValueError(role)

    def ready(self, redis_client: Any, started: dict[str, float]) -> bool:
        """The worker and the notifier publish `stats:processor` / `stats:notifier` once their
        loops run."""
        keys = []
        if any(name.startswith("worker") for name in started):
            keys.append("stats:processor")
        if "notifier" in started:
            keys.append("stats:notifier")
        return not keys or redis_client.exists(*keys) == len(keys)

    def params(self) -> dict[str, Any]:
        return {
            "worker_concurrency": self.worker_concurrency or "product default (16)",
            "notifier_concurrency": NOTIFIER_CONCURRENCY,
            "env": {k: v for k, v in self._env.items() if k.startswith("DOWNLOADER_")},
        }


class AsyncFloor(Ours):
    """Our api and notifier, the worker replaced by `bench/async_floor.py` (same environment);
    `variant` is "" or "+"-joined flags of it without their dashes ("batch", "no-fsync",
    "loop=asyncio"), e.g. "batch+no-fsync"."""

    def __init__(
        self, exe: Path, extra_env: list[str], worker_concurrency: int = 0, variant: str = ""
    ) -> None:
        super().__init__(exe, extra_env, worker_concurrency)
        self.variant = variant
        self.key = self.label = "ours-asyncio-floor" + (f"+{variant}" if variant else "")
        self.worker_name = "bench/async_floor.py"
        self.flags = [f"--{part.replace('=', ' ')}" for part in variant.split("+") if part]
        self.flags = [word for flag in self.flags for word in flag.split(" ")]

    def setup(self, run_dir: Path, redis_port: int) -> None:
        super().setup(run_dir, redis_port)
        self.ready_prefix = run_dir / "floor-ready"

    def command(self, role: str, api_port: int) -> list[str]:
        if role != "worker":
            return super().command(role, api_port)
        python = str(Path(self.exe).with_name("python"))
        script = str(Path(__file__).resolve().with_name("async_floor.py"))
        concurrency = ["--concurrency", str(self.worker_concurrency)] if self.worker_concurrency else []
        return [python, script, *concurrency, "--ready-file", str(self.ready_prefix), *self.flags]

    def ready(self, redis_client: Any, started: dict[str, float]) -> bool:
        """The notifier as ours; each floor process touches `floor-ready.<pid>` once subscribed."""
        workers = sum(1 for name in started if name.startswith("worker"))
        notifier = {n: t for n, t in started.items() if not n.startswith("worker")}
        touched = len(list(self.ready_prefix.parent.glob(self.ready_prefix.name + ".*")))
        return super().ready(redis_client, notifier) and touched >= workers

    def params(self) -> dict[str, Any]:
        return super().params() | {"worker": f"bench/async_floor.py {' '.join(self.flags)}".strip()}


class GoOriginal:
    """skroutz/downloader, run from its binary with one JSON config per run: Redis address,
    filesystem storage and temp dir in the run dir, the heartbeat file, the notifier's
    concurrency (8, as ours) and the README's other values."""

    key = "go"
    label = "Go original"
    worker_name = "downloader-go processor"

    def __init__(self, binary: str | None) -> None:
        self.binary = binary

    def available(self) -> bool:
        return bool(self.binary) and Path(str(self.binary)).is_file() and os.access(str(self.binary), os.X_OK)

    def setup(self, run_dir: Path, redis_port: int) -> None:
        files, tmp = run_dir / "files", run_dir / "tmp"
        files.mkdir(parents=True, exist_ok=True)
        tmp.mkdir(parents=True, exist_ok=True)
        self.config = {
            "redis": {"addr": f"127.0.0.1:{redis_port}"},
            "api": {"heartbeat_path": str(run_dir / "disable_api")},
            "processor": {
                "filestorage": {"type": "filesystem", "rootdir": str(files)},
                "storage_dir": str(tmp),
                "request_headers": {"Accept": "*/*", "User-Agent": "Downloader v1"},
                "stats_interval": 5000,
                "download_url": "http://localhost/files",
            },
            "notifier": {
                "download_url": "http://localhost/files",
                "concurrency": NOTIFIER_CONCURRENCY,
                "stats_interval": 5000,
                "deletion_interval": 180,
            },
            "backends": {"http": {"timeout": 30}},
        }
        self.config_path = run_dir / "config.json"
        self.config_path.write_text(json.dumps(self.config, indent=1) + "\n")
        self.storage_root = files
        env = dict(os.environ)
        env.update(NO_PROXY="127.0.0.1", no_proxy="127.0.0.1")
        self._env = env

    def env(self) -> dict[str, str]:
        return self._env

    def command(self, role: str, api_port: int) -> list[str]:
        exe, cfg = str(self.binary), str(self.config_path)
        if role == "api":
            return [exe, "api", "--host", "127.0.0.1", "--port", str(api_port), "--config", cfg]
        if role == "worker":
            return [exe, "processor", "--config", cfg]
        if role == "notifier":
            return [exe, "notifier", "--config", cfg]
        raise ValueError(role)

    def ready(self, redis_client: Any, started: dict[str, float]) -> bool:
        """The processor and the notifier give no sign of readiness (their stats appear after
        5 s): count them ready once they have run for 0.3 s."""
        return all(time.monotonic() - t >= 0.3 for name, t in started.items() if name != "api")

    def params(self) -> dict[str, Any]:
        return {
            "binary": self.binary,
            "worker_concurrency": "aggr_limit per aggregation, no process-wide cap",
            "notifier_concurrency": NOTIFIER_CONCURRENCY,
            "config": getattr(self, "config", None),
        }
