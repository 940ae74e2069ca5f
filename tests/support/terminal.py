"""Run a command with its stderr on a pseudo-terminal, as a user at a terminal sees it: what
the CLI draws only for a terminal (progress bars, quiet logs) is tested through this."""

from __future__ import annotations

import os
import pty
import select
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path


def on_a_terminal(argv: Sequence[str], env: Mapping[str, str], cwd: Path) -> tuple[int, str, str]:
    """(status, what the terminal showed from stderr, stdout) of `argv` run to its end."""
    primary, secondary = pty.openpty()
    try:
        proc = subprocess.Popen(list(argv), env=dict(env), cwd=cwd, stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=secondary, text=True)  # fmt: skip
        os.close(secondary)
        secondary = -1
        seen = b""
        while True:
            ready, _, _ = select.select([primary], [], [], 60)
            assert ready, "the command went quiet"
            try:
                chunk = os.read(primary, 65536)
            except OSError:  # EIO: every writer of the terminal is gone
                break
            if not chunk:
                break
            seen += chunk
        stdout, _ = proc.communicate(timeout=60)
    finally:
        os.close(primary)
        if secondary >= 0:
            os.close(secondary)
    return proc.returncode, seen.decode(), stdout
