"""moto's S3/SQS server as a real process on a free 127.0.0.1 port, for the AWS tests.

The product talks HTTP to it exactly as it would to AWS (boto3 with `endpoint_url`); nothing
is patched in-process. A server that does not come up fails the tests with its log tail.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import NoReturn

import pytest

from support.procs import stop_process

START_TIMEOUT_SECONDS = 30.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def unique_name(prefix: str) -> str:
    """A bucket or queue name no other test uses: the server is shared by the session."""
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def _command(port: int) -> list[str]:
    """The venv's `moto_server` script, or the module when the script is not installed."""
    script = Path(sys.executable).parent / "moto_server"
    head = [str(script)] if script.exists() else [sys.executable, "-m", "moto.server"]
    return [*head, "-H", "127.0.0.1", "-p", str(port)]


class MotoServer:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.log_path = workdir / "moto.log"
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> MotoServer:
        self.workdir.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                _command(self.port),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        if not self._wait_until_serving():
            self.stop()
            self._fail(f"did not answer within {START_TIMEOUT_SECONDS:g}s")
        return self

    def _wait_until_serving(self) -> bool:
        assert self.proc is not None
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self._fail(f"exited with status {self.proc.returncode}")
            if self._answers():
                return True
            time.sleep(0.1)
        return False

    def _answers(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/moto-api/", timeout=1):
                return True
        except urllib.error.HTTPError:
            return True  # any HTTP answer means it is serving
        except OSError:
            return False

    def _fail(self, why: str) -> NoReturn:
        tail = self.log_path.read_text(errors="replace")[-3000:]
        pytest.fail(f"moto server {why}; log tail:\n{tail}", pytrace=False)

    def stop(self) -> None:
        stop_process(self.proc)
        self.proc = None
