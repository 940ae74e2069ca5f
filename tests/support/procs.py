"""Real `downloader` processes for the integration tests: api, worker, notifier, up.

`Stack` starts them with a per-test environment (Redis URL, storage and tmp under the
test's tmp_path, short backoffs, and no `DOWNLOADER_*` variable of the caller), writes each
process' output to `<tmp_path>/logs/<name>.log`, waits until it serves, and stops them all
(SIGTERM, then SIGKILL) when the test ends. `kill9()` simulates a crash.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx
import redis

#: The installed console script, else `python -m downloader` (run with the test's tmp_path as
#: its cwd: from the repository root, the checkout's `downloader/` folder would hide the
#: installed `downloader.api`, `downloader.worker` and `downloader.operator`).
_SCRIPT = Path(sys.executable).with_name("downloader")
DOWNLOADER = [str(_SCRIPT)] if _SCRIPT.is_file() else [sys.executable, "-m", "downloader"]
DOWNLOAD_URL_BASE = "http://localhost/foo"
START_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0

#: The environment every process gets (a test may override any of it).
BASE_SETTINGS = {
    "DOWNLOADER_STORAGE_BACKEND": "filesystem",
    "DOWNLOADER_DOWNLOAD_URL": DOWNLOAD_URL_BASE,
    "DOWNLOADER_RETRY_BACKOFF_SECONDS": "0.2",
    "DOWNLOADER_CALLBACK_BACKOFF_SECONDS": "0.2",
    "DOWNLOADER_STATS_INTERVAL_SECONDS": "0.3",
    "DOWNLOADER_SCAN_INTERVAL_SECONDS": "0.2",
    # Long enough that a busy 2-core host never loses a live lease; crash tests shorten it.
    "DOWNLOADER_LEASE_SECONDS": "10",
    "DOWNLOADER_CALLBACK_TIMEOUT_SECONDS": "5",
    "DOWNLOADER_DEFAULT_REQUEST_HEADERS": json.dumps({"Accept": "*/*", "User-Agent": "Downloader v1"}),
    "DOWNLOADER_LOG_LEVEL": "INFO",
    # Every test server listens on 127.0.0.1, which the default policy refuses to reach.
    "DOWNLOADER_ALLOW_PRIVATE_NETWORKS": "true",
}


#: The callback payload's keys, in order: the original's ten (reference 4.3), then ours.
PAYLOAD_KEYS = [
    "success",
    "error",
    "extra",
    "image_size",
    "resource_url",
    "download_url",
    "job_id",
    "response_code",
    "delivered",
    "delivery_error",
    "sha256",
    "size",
    "content_type",
    "final_url",
    "attempts",
]


def stop_process(proc: subprocess.Popen[bytes] | None, timeout: float = 10.0) -> None:
    """SIGTERM a helper server (Redis, moto, ...) and wait; SIGKILL it if it outlives `timeout`."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def clean_environ() -> dict[str, str]:
    """The caller's environment without any DOWNLOADER_* variable and with no proxy for us."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DOWNLOADER_")}
    for name in ("NO_PROXY", "no_proxy"):
        env[name] = ",".join(filter(None, [env.get(name, ""), "127.0.0.1", "localhost"]))
    env["PYTHONUNBUFFERED"] = "1"
    return env


def tail(path: Path, lines: int = 40) -> str:
    try:
        data = path.read_bytes()[-32768:]
    except OSError as exc:
        return f"<cannot read {path}: {exc}>"
    return "\n".join(data.decode("utf-8", "replace").splitlines()[-lines:])


class Proc:
    """One child process with its output in a log file."""

    def __init__(self, name: str, argv: Sequence[str], env: Mapping[str, str], cwd: Path, log: Path) -> None:
        self.name = name
        self.argv = list(argv)
        self.log = log
        self._terminated = False
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("ab") as out:
            self.popen = subprocess.Popen(
                self.argv,
                env=dict(env),
                cwd=cwd,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # our signals only, never the terminal's Ctrl-C
            )

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def alive(self) -> bool:
        return self.popen.poll() is None

    @property
    def returncode(self) -> int | None:
        return self.popen.poll()

    def output(self) -> str:
        try:
            return self.log.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""

    def tail(self, lines: int = 40) -> str:
        return tail(self.log, lines)

    def check_alive(self) -> None:
        if not self.alive:
            raise AssertionError(
                f"{self.name} exited with {self.returncode}; its log ends with:\n{self.tail()}"
            )

    def signal(self, sig: int) -> None:
        if self.alive:
            self.popen.send_signal(sig)
            if sig in (signal.SIGTERM, signal.SIGINT):
                self._terminated = True

    def wait(self, timeout: float) -> int:
        return self.popen.wait(timeout)

    def kill9(self) -> None:
        """A crash: SIGKILL, no chance to give anything back."""
        if self.alive:
            self.popen.kill()
        self.popen.wait(5)

    def stop(self, timeout: float = STOP_TIMEOUT) -> int:
        """SIGTERM (unless sent already: a second one means "exit now"), then SIGKILL of its
        whole session after `timeout`; returns the exit status."""
        if self.alive:
            if not self._terminated:
                self.signal(signal.SIGTERM)
            try:
                return self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.popen.pid, signal.SIGKILL)
        return self.popen.wait(5)


class Api(Proc):
    def __init__(self, *args: Any, port: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.http = httpx.Client(base_url=self.url, timeout=15.0, trust_env=False)

    def post_job(self, body: Mapping[str, Any]) -> str:
        """POST /download; returns the new job's id (asserting 201)."""
        resp = self.http.post("/download", json=dict(body))
        assert resp.status_code == 201, f"POST /download answered {resp.status_code}: {resp.text}"
        job_id: str = resp.json()["id"]
        return job_id

    def job(self, job_id: str) -> httpx.Response:
        return self.http.get(f"/jobs/{job_id}")

    def close(self) -> None:
        self.http.close()


class Stack:
    """The processes of one test, on one Redis."""

    def __init__(self, tmp_path: Path, redis_url: str, **settings: Any) -> None:
        self.tmp_path = tmp_path
        self.redis_url = redis_url
        self.storage_root = tmp_path / "files"
        self.tmp_dir = tmp_path / "tmp"
        self.logs = tmp_path / "logs"
        self.settings: dict[str, str | None] = {
            **BASE_SETTINGS,
            "DOWNLOADER_REDIS_URL": redis_url,
            "DOWNLOADER_STORAGE_ROOT": str(self.storage_root),
            "DOWNLOADER_TMP_DIR": str(self.tmp_dir),
        }
        self.settings.update(_names(settings))
        self.procs: list[Proc] = []
        self._counts: dict[str, int] = {}
        self.db = redis.Redis.from_url(redis_url, decode_responses=True)

    # --- environment ---------------------------------------------------------------

    def configure(self, **settings: Any) -> None:
        """Change the settings of the processes started from now on (`lease_seconds=2`)."""
        self.settings.update(_names(settings))

    def env(self, **overrides: Any) -> dict[str, str]:
        """The environment of a process: ours over the caller's; a None value unsets."""
        env = clean_environ()
        for name, value in {**self.settings, **_names(overrides)}.items():
            if value is None:
                env.pop(name, None)
            else:
                env[name] = value
        return env

    def _log_name(self, name: str) -> Path:
        n = self._counts[name] = self._counts.get(name, 0) + 1
        return self.logs / (f"{name}.log" if n == 1 else f"{name}-{n}.log")

    def spawn(
        self,
        name: str,
        args: Sequence[str],
        *,
        cwd: Path | None = None,
        env: Mapping[str, str] | None = None,
        cls: type[Proc] = Proc,
        **kwargs: Any,
    ) -> Any:
        proc = cls(
            name,
            [*DOWNLOADER, *args],
            env if env is not None else self.env(),
            cwd or self.tmp_path,
            self._log_name(name),
            **kwargs,
        )
        self.procs.append(proc)
        return proc

    # --- the processes -------------------------------------------------------------

    def api(self, **overrides: Any) -> Api:
        port = free_port()
        api: Api = self.spawn(
            "api",
            ["api", "--host", "127.0.0.1", "--port", str(port)],
            env=self.env(**overrides),
            cls=Api,
            port=port,
        )
        self.wait_http(api, f"{api.url}/hb")
        return api

    def worker(self, *aggregations: str, wait: bool = True, **overrides: Any) -> Proc:
        args = ["worker"]
        for aggr in aggregations:
            args += ["--aggregation", aggr]
        proc: Proc = self.spawn("worker", args, env=self.env(**overrides))
        if wait:
            self.wait_serving(proc, "stats:processor", "serving")
        return proc

    def notifier(self, wait: bool = True, **overrides: Any) -> Proc:
        proc: Proc = self.spawn("notifier", ["notifier"], env=self.env(**overrides))
        if wait:
            self.wait_serving(proc, "stats:notifier", "delivering")
        return proc

    def up(self, cwd: Path, port: int, **overrides: Any) -> Proc:
        proc: Proc = self.spawn(
            "up", ["up", "--host", "127.0.0.1", "--port", str(port)], cwd=cwd, env=self.env(**overrides)
        )
        self.wait_http(proc, f"http://127.0.0.1:{port}/hb")
        return proc

    def all_three(self, **overrides: Any) -> tuple[Api, Proc, Proc]:
        """api, worker and notifier, started side by side (each one waited for)."""
        port = free_port()
        env = self.env(**overrides)
        api: Api = self.spawn(
            "api", ["api", "--host", "127.0.0.1", "--port", str(port)], env=env, cls=Api, port=port
        )
        worker: Proc = self.spawn("worker", ["worker"], env=env)
        notifier: Proc = self.spawn("notifier", ["notifier"], env=env)
        self.wait_http(api, f"{api.url}/hb")
        self.wait_serving(worker, "stats:processor", "serving")
        self.wait_serving(notifier, "stats:notifier", "delivering")
        return api, worker, notifier

    # --- readiness -------------------------------------------------------------------

    def wait_http(self, proc: Proc, url: str, timeout: float = START_TIMEOUT) -> None:
        def answers() -> bool:
            try:
                return httpx.get(url, timeout=1.0, trust_env=False).status_code == 200
            except httpx.HTTPError:
                return False

        self._wait_start(proc, answers, f"{proc.name} to answer {url}", timeout)

    def wait_serving(self, proc: Proc, stats_key: str, log_word: str, timeout: float = START_TIMEOUT) -> None:
        """Ready when it has said so in its log and its stats key exists."""
        self._wait_start(
            proc,
            lambda: log_word in proc.output() and bool(self.db.exists(stats_key)),
            f"{proc.name} to publish {stats_key}",
            timeout,
        )

    @staticmethod
    def _wait_start(proc: Proc, ready: Callable[[], bool], what: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not ready():
            proc.check_alive()  # a process that died says why at once
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout:g}s waiting for {what}\n{proc.tail()}")
            time.sleep(0.05)

    # --- reading Redis ------------------------------------------------------------------

    def stats(self, component: str) -> dict[str, int]:
        raw = self.db.get(f"stats:{component}")
        return json.loads(raw) if raw else {}

    def stored_path(self, job_id: str) -> Path:
        return self.storage_root / job_id[:3] / job_id

    # --- teardown and reporting -----------------------------------------------------------

    def stop_all(self) -> None:
        """SIGTERM to every process at once, then wait for each (SIGKILL after STOP_TIMEOUT)."""
        for proc in self.procs:
            proc.signal(signal.SIGTERM)
        for proc in reversed(self.procs):
            proc.stop()
            if isinstance(proc, Api):
                proc.close()
        self.db.close()

    def log_tails(self, lines: int = 40) -> str:
        return "\n".join(f"--- {p.log.name} (pid {p.pid}) ---\n{p.tail(lines)}" for p in self.procs)


def _names(settings: Mapping[str, Any]) -> dict[str, Any]:
    """`lease_seconds=2` -> `DOWNLOADER_LEASE_SECONDS="2"`; full names pass through."""
    out: dict[str, Any] = {}
    for key, value in settings.items():
        name = key if key.isupper() else "DOWNLOADER_" + key.upper()
        if isinstance(value, dict):
            value = json.dumps(value)
        out[name] = None if value is None else str(value)
    return out


def aggr_id(prefix: str = "it") -> str:
    """A fresh aggregation id: tests never share one."""
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def job_body(
    url: str, aggr: str, callback: str | None = None, limit: int = 4, **fields: Any
) -> dict[str, Any]:
    """A POST /download body with an http callback (callback_type/callback_dst) when given."""
    body: dict[str, Any] = {"url": url, "aggr_id": aggr, "aggr_limit": limit}
    if callback is not None:
        body["callback_type"] = "http"
        body["callback_dst"] = callback
    body.update(fields)
    return body
