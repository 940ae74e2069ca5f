"""Measuring helpers shared by the benchmarks: ports, /proc readings, host noise, percentiles,
and where the repository and the measured venv are.

The benchmarks run as scripts from this folder and import it by name.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import math
import os
import platform
import resource
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Any

#: The repository. Its root must not be importable (its `downloader/` folder would hide the
#: installed `downloader.api`, `.worker` and `.operator`), so importing this module drops it
#: from sys.path, and adds `tools/`: the local service launchers the tests use too
#: (`testbed.controlplane` for operator_bench.py), so that no benchmark imports from tests/.
REPO = Path(__file__).resolve().parent.parent
TOOLS = REPO / "tools"
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != REPO]
if str(TOOLS) not in sys.path:
    sys.path.append(str(TOOLS))

#: The `downloader` executables: next to this interpreter (the venv measured), else the repo's.
VENV_BIN = Path(sys.executable).parent
if not (VENV_BIN / "downloader").exists():
    VENV_BIN = REPO / ".venv" / "bin"

CLK_TCK = os.sysconf("SC_CLK_TCK")
PR_SET_PDEATHSIG = 1


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def proc_cpu_seconds(pid: int) -> float | None:
    """utime + stime of `pid` (all its threads) from /proc/<pid>/stat."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # fields 14 and 15 of proc(5)


def proc_status(pid: int) -> dict[str, int]:
    """VmHWM / VmRSS in kB and the thread count, from /proc/<pid>/status."""
    out: dict[str, int] = {}
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return out
    for line in lines:
        key, _, value = line.partition(":")
        if key in ("VmHWM", "VmRSS", "Threads"):
            out[key] = int(value.split()[0])
    return out


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank-with-interpolation percentile (p in 0..100)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = (len(ordered) - 1) * p / 100
    lo, hi = math.floor(k), math.ceil(k)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def set_pdeathsig() -> None:
    """In a child before exec: get SIGTERM if the benchmark dies without cleaning up."""
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def host_busy_seconds() -> float:
    """CPU seconds the whole host spent not idle (all cores), from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields[:8]) - idle) / CLK_TCK


def calibrate() -> float:
    """Milliseconds of a fixed pure-Python workload (best of 5): how fast this host's CPU is
    right now. On a shared VM it moves by tens of percent between runs; compare it across
    result files before comparing their throughput."""
    best = float("inf")
    for _ in range(5):
        t = time.perf_counter()
        d: dict[int, int] = {}
        for i in range(200_000):
            d[i & 1023] = d.get(i & 1023, 0) + i
        best = min(best, time.perf_counter() - t)
    return round(best * 1000, 2)


def self_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor()


def interrupt_on_signals() -> None:
    """SIGTERM and SIGINT raise KeyboardInterrupt, so a benchmark cleans up either way (SIGINT
    also when started in the background, where it is ignored by default)."""

    def on_term(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)


def write_result(path: str | None, result: dict[str, Any]) -> None:
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(result, indent=1) + "\n")
        print(f"  wrote {path}")
