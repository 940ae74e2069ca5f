"""The summarising logic of bench/compare.py (bench/cmpsummary.py) and the pure helpers of
bench/harness.py: medians, min/max, the ratio of medians, "not compared" without the original,
failed runs kept out of the figures and listed, and the Redis command accounting."""

from __future__ import annotations

import ast
import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"


def load(name: str) -> ModuleType:
    """Import bench/<name>.py by path, without touching sys.path. bench/ is not a package: its
    scripts import each other by plain name (`from hostinfo import ...`), so the bench modules
    that this one imports at its top level are loaded first, the same way, and registered in
    sys.modules under those names, where its own imports find them."""
    loaded = sys.modules.get(name)
    if loaded is not None and getattr(loaded, "__file__", "").startswith(str(BENCH)):
        return loaded
    path = BENCH / f"{name}.py"
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        for dependency in names:
            if (BENCH / f"{dependency}.py").is_file():
                load(dependency)
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


cmp = load("cmpsummary")


def run(impl: str, scenario: str, rnd: int, ok: bool = True, **metrics: Any) -> dict[str, Any]:
    return {
        "impl": impl,
        "scenario": scenario,
        "round": rnd,
        "ok": ok,
        "error": None if ok else "missing 3",
        "metrics": metrics,
    }


def test_stats_are_min_median_max_over_the_values_given() -> None:
    assert cmp.stats([3, 1, 2, None]) == {"n": 3, "min": 1.0, "median": 2.0, "max": 3.0}
    assert cmp.stats([4, 1, 3, 2])["median"] == 2.5
    assert cmp.stats([None]) is None
    assert cmp.stats([]) is None


def test_ratio_is_ours_over_go_and_none_when_either_is_missing() -> None:
    assert cmp.ratio(300.0, 100.0) == 3.0
    assert cmp.ratio(None, 100.0) is None
    assert cmp.ratio(1.0, None) is None
    assert cmp.ratio(1.0, 0.0) is None


def test_summary_and_table_give_per_implementation_figures_and_the_ratio_of_medians() -> None:
    runs = [run("ours", "burst", r, e2e_jobs_per_s=v) for r, v in enumerate((250, 200, 300), 1)]
    runs += [run("go", "burst", r, e2e_jobs_per_s=v) for r, v in enumerate((100, 125, 90), 1)]
    summary = cmp.summarize(runs)
    assert summary["figures"]["burst"]["e2e_jobs_per_s"]["ours"] == {
        "n": 3,
        "min": 200.0,
        "median": 250.0,
        "max": 300.0,
    }
    assert summary["figures"]["burst"]["e2e_jobs_per_s"]["go"]["median"] == 100.0
    table = cmp.markdown_table(summary, compared=True)
    row = next(line for line in table.splitlines() if line.startswith("| e2e jobs/s"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[1:9] == ["200", "250", "300", "90", "100", "125", "2.50", "3/3 · 3/3"]


def test_multi_part_rows_join_their_figures() -> None:
    runs = [run("ours", "paced", 1, latency_p50_ms=20.0, latency_p99_ms=40.0)]
    runs += [run("go", "paced", 1, latency_p50_ms=1000.0, latency_p99_ms=2000.0)]
    table = cmp.markdown_table(cmp.summarize(runs), compared=True)
    row = next(line for line in table.splitlines() if line.startswith("| latency p50 / p99"))
    assert "| 20 / 40 |" in row
    assert "| 1,000 / 2,000 |" in row
    assert "| 0.02 / 0.02 |" in row


def test_without_the_original_the_ratio_says_not_compared() -> None:
    runs = [run("ours", "burst", r, e2e_jobs_per_s=v) for r, v in enumerate((250, 200), 1)]
    table = cmp.markdown_table(cmp.summarize(runs), compared=False)
    row = next(line for line in table.splitlines() if line.startswith("| e2e jobs/s"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[1:4] == ["200", "225", "250"]
    assert cells[4:7] == ["–", "–", "–"]
    assert cells[7] == cmp.NOT_COMPARED == "not compared"
    # rows nobody measured are left out
    assert "API alone" not in table


def test_a_failed_run_is_excluded_from_the_figures_and_reported() -> None:
    runs = [
        run("ours", "burst", 1, e2e_jobs_per_s=250),
        run("ours", "burst", 2, ok=False, e2e_jobs_per_s=5),  # would drag the median down
        run("ours", "burst", 3, e2e_jobs_per_s=270),
        run("go", "burst", 1, e2e_jobs_per_s=100),
    ]
    summary = cmp.summarize(runs)
    assert summary["figures"]["burst"]["e2e_jobs_per_s"]["ours"] == {
        "n": 2,
        "min": 250.0,
        "median": 260.0,
        "max": 270.0,
    }
    assert summary["counts"]["burst"]["ours"] == {"ok": 2, "failed": 1}
    assert summary["failed"] == [{"impl": "ours", "scenario": "burst", "round": 2, "error": "missing 3"}]
    table = cmp.markdown_table(summary, compared=True)
    assert "| 2/3 · 1/1 |" in table
    text = cmp.failures_text(summary)
    assert "1 failed run" in text
    assert "ours burst round 2: missing 3" in text
    assert cmp.failures_text(cmp.summarize(runs[:1])) == "Every run passed verification.\n"


def test_when_every_go_run_failed_its_columns_are_empty_and_the_ratio_unknown() -> None:
    runs = [run("ours", "burst", 1, e2e_jobs_per_s=250), run("go", "burst", 1, ok=False)]
    table = cmp.markdown_table(cmp.summarize(runs), compared=True)
    row = next(line for line in table.splitlines() if line.startswith("| e2e jobs/s"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[4:8] == ["–", "–", "–", "–"]
    assert cells[8] == "1/1 · 0/1"


def test_non_numeric_metrics_are_ignored() -> None:
    runs = [run("ours", "burst", 1, e2e_jobs_per_s=250, note="x", flag=True, gone=None)]
    figures = cmp.summarize(runs)["figures"]["burst"]
    assert set(figures) == {"e2e_jobs_per_s"}


def test_scaling_is_the_median_with_n_workers_over_one() -> None:
    runs = [run("ours", f"drain-{n}", 1, steady_callbacks_per_s=v) for n, v in ((1, 200), (2, 300), (4, 360))]
    assert cmp.scaling(cmp.summarize(runs)) == {1: 1.0, 2: 1.5, 4: 1.8}
    assert cmp.scaling(cmp.summarize([])) == {1: None, 2: None, 4: None}


def test_raw_limits_summary_skips_failed_measurements() -> None:
    raw = [
        {"client": "requests", "round": 1, "ok": True, "files_per_s": 500.0, "cpu_ms_per_file": 1.8},
        {"client": "requests", "round": 2, "ok": True, "files_per_s": 700.0, "cpu_ms_per_file": 1.6},
        {"client": "requests", "round": 3, "ok": False, "files_per_s": 1.0, "error": "boom"},
    ]
    summary = cmp.summarize_raw(raw)
    assert summary["figures"]["requests"]["files_per_s"] == {
        "n": 2,
        "min": 500.0,
        "median": 600.0,
        "max": 700.0,
    }
    assert summary["failed"] == [{"client": "requests", "round": 3, "error": "boom", "errors": None}]
    table = cmp.raw_table(summary)
    assert "| requests, Session per thread: files/s | 500 | 600 | 700 | 2 |" in table
    assert cmp.raw_table(cmp.summarize_raw([])) == "(no raw limits measured)\n"


@pytest.fixture(scope="module")
def harness() -> ModuleType:
    return load("harness")


def snapshot(
    t: float, calls: dict[str, int], reads: int, rejected: dict[str, int] | None = None
) -> dict[str, Any]:
    return {
        "t": t,
        "calls": calls,
        "rejected": rejected or {},
        "total_commands_processed": sum(calls.values()),
        "total_reads_processed": reads,
        "total_connections_received": 1,
    }


def test_redis_diff_takes_off_the_snapshots_own_commands(harness: ModuleType) -> None:
    a = snapshot(10.0, {"info": 4, "evalsha": 10, "hset": 30}, reads=100)
    # in between: 5 scripts running 3 HSETs each, 2 ZADDs sent by clients, one rejected
    # command, the two INFOs of snapshot a, and the read of snapshot b: 5 + 2 + 1 + 1 client reads
    b = snapshot(12.5, {"info": 6, "evalsha": 15, "hset": 45, "zadd": 2}, reads=109, rejected={"get": 1})
    d = harness.redis_diff(a, b)
    assert d["all"] == 5 + 15 + 2 + 1
    assert d["read_events"] == 8
    assert d["scripts"] == 5
    assert d["seconds"] == 2.5
    assert d["by_command"] == {"hset": 15, "evalsha": 5, "zadd": 2, "get": 1}
    # commands the harness sent itself in between (markers) are taken off too
    b["calls"]["echo"] = 2
    b["total_reads_processed"] += 2
    assert harness.redis_diff(a, b, {"echo": 2})["all"] == d["all"]
    assert harness.redis_diff(a, b, {"echo": 2})["read_events"] == 8


def test_steady_rate_is_the_rate_between_the_10th_and_90th_percentile(harness: ModuleType) -> None:
    times = [i / 100 for i in range(100)]  # 100 events/s
    assert harness.steady_rate(times) == pytest.approx(101.0, rel=0.02)
    assert harness.steady_rate(times[:10]) is None


# --- bench/async_floor.py (compare.py --floor): the parts that must match the product -----------


@pytest.fixture(scope="module")
def floor() -> ModuleType:
    return load("async_floor")


def test_the_floor_reads_claims_with_the_stores_own_parser(floor: ModuleType) -> None:
    from downloader.store import queue

    assert floor.parse_claim is queue.parse_claim


def test_the_floors_resolver_refuses_what_the_outbound_guard_refuses(floor: ModuleType) -> None:
    import asyncio

    from downloader.fetching import outbound

    strict, permissive = outbound.Policy(), outbound.PERMISSIVE

    async def resolve(policy: outbound.Policy) -> Any:
        return await floor.CheckedResolver(policy).resolve("localhost", 80)

    with pytest.raises(floor.Refused, match=outbound.NOT_ALLOWED):
        asyncio.run(resolve(strict))
    assert asyncio.run(resolve(permissive))
    with pytest.raises(floor.Refused, match=r"10\.1\.2\.3"):
        floor.refuse("10.1.2.3", strict, "10.1.2.3")
    floor.refuse("10.1.2.3", permissive, "10.1.2.3")
    assert floor.is_literal("[::1]") and floor.is_literal("127.0.0.1") and not floor.is_literal("localhost")


def test_a_floor_variant_is_async_floor_flags(floor: ModuleType, tmp_path: Path) -> None:
    original = load("original")
    plain = original.AsyncFloor(tmp_path / "downloader", [], 0)
    assert plain.key == "ours-asyncio-floor" and plain.flags == []
    variant = original.AsyncFloor(tmp_path / "downloader", [], 32, "batch+loop=asyncio+no-fsync")
    assert variant.key == "ours-asyncio-floor+batch+loop=asyncio+no-fsync"
    variant.setup(tmp_path, 6379)
    command = variant.command("worker", 8080)
    assert command[1].endswith("bench/async_floor.py")
    args = floor.parse_args(command[2:])
    assert (args.batch, args.loop, args.no_fsync, args.concurrency) == (True, "asyncio", True, 32)
    assert variant.command("notifier", 8080) == [str(tmp_path / "downloader"), "notifier"]


def test_the_floor_table_puts_each_floor_beside_ours_and_go() -> None:
    impls = ("ours", "go", "ours-asyncio-floor")
    runs = [
        run(impl, "drain-1", r, steady_callbacks_per_s=v * r, worker_cpu_ms_per_job_steady=c)
        for impl, v, c in zip(impls, (250, 500, 1000), (2.0, 1.0, 0.5), strict=True)
        for r in (1, 2, 3)
    ]
    table = cmp.impl_table(cmp.summarize(runs), impls)
    assert table.splitlines()[0] == (
        "| figure | ours | go | ours-asyncio-floor | ours-asyncio-floor / go | ours-asyncio-floor / ours |"
    )
    row = next(line for line in table.splitlines() if "steady drain" in line)
    assert (
        row
        == "| drain-1: steady drain (jobs/s: callbacks) | 500 (250–750) | 1,000 (500–1,500) | 2,000 (1,000–3,000) | 2.00 | 4.00 |"
    )
    assert "| drain-1: runs ok | 3/3 | 3/3 | 3/3 |" in table
    assert cmp.impl_table(cmp.summarize([]), impls) == "(no drain runs)\n"


def test_perf_counts_are_read_from_perf_stat_csv() -> None:
    compare = load("compare")
    text = (
        "# started on Thu Dec  3 10:00:00 2026\n\n"
        "52000,,raw_syscalls:sys_enter,5000000000,100.00,,\n"
        "21000,,syscalls:sys_enter_futex,5000000000,100.00,,\n"
        "<not supported>,,syscalls:sys_enter_fsync,0,100.00,,\n"
        "1234.5,msec,task-clock,1234500000,100.00,0.247,CPUs utilized\n"
    )
    assert compare.parse_perf_csv(text) == {
        "raw_syscalls:sys_enter": 52000.0,
        "syscalls:sys_enter_futex": 21000.0,
        "task-clock": 1234.5,
    }
