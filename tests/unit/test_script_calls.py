"""Every Lua script names its KEYS and ARGV in its first lines and uses only those names, and
its one keyword-only wrapper passes exactly as many, so the two cannot drift apart (no Redis).
"""

from __future__ import annotations

import dataclasses
import inspect
import re
from collections.abc import Callable

import pytest
from support import redis_state

from downloader.jobs.models import Aggregation, Job
from downloader.store import DeadLetter, NextStep, Outcome, calls, keys, scripts
from downloader.store.calls import ScriptCall

#: The Lua functions scripts start with (not scripts themselves).
PRELUDES = [
    value
    for name, value in vars(scripts).items()
    if isinstance(value, str) and name.isupper() and (name.startswith("_") or name.endswith("_FUNCTION"))
]
#: Every script the product runs, and those the tests run on their own.
SCRIPTS = {
    name: value
    for name, value in vars(scripts).items()
    if isinstance(value, str) and name.isupper() and value not in PRELUDES
} | {
    "tests: " + name: getattr(redis_state, name)
    for name in ("RECOVER", "RECORD_ATTEMPT", "DELETE_IDLE_AGGREGATION")
}

JOB = Job(id="", url="http://127.0.0.1:9/x", aggr_id="aggr", callback_url="http://127.0.0.1:9/cb")
FIELDS = {"DownloadState": "Pending", "DownloadMeta": "x"}
IDS = ["a", "b", "c"]


@dataclasses.dataclass(frozen=True)
class Sample:
    wrapper: Callable[..., ScriptCall]
    call: ScriptCall
    variadic: int = 0
    """How many ARGV the call passes after the named ones (field/value pairs, ids)."""


def samples() -> list[Sample]:
    job = dataclasses.replace(JOB, id="J1")
    outcome = Outcome(fields=FIELDS, next_step=NextStep.RETRY, due=1.0)
    aggregation = Aggregation("aggr", 3)
    return [
        Sample(
            calls.enqueue_call,
            calls.enqueue_call(job=JOB, aggregation=aggregation, job_id="J1", now=1.0),
            2 * len(job.to_hash()),
        ),
        Sample(calls.release_held_call, calls.release_held_call(job_id="J1", aggr_id="aggr", score=1.0)),
        Sample(calls.undo_held_call, calls.undo_held_call(job_id="J1", aggr_id="aggr", held_until=1.0)),
        Sample(
            calls.claim_call,
            calls.claim_call(
                aggr_id="aggr", wanted=1, token="t", call_id="c", lease_seconds=1, now=1, meta_ttl=1
            ),
        ),
        Sample(
            calls.renew_call, calls.renew_call(aggr_id="aggr", ids=IDS, token="t", lease_seconds=1), len(IDS)
        ),
        Sample(
            calls.finish_call,
            calls.finish_call(job=job, token="t", call_id="c", outcome=outcome, now=1.0, meta_ttl=1),
            2 * len(FIELDS),
        ),
        Sample(
            calls.drop_claim_call,
            calls.drop_claim_call(
                aggr_id="aggr", job_id="J1", token="t", dead_letter=DeadLetter("aggr", "r", 1.0), failure="f"
            ),
        ),
        Sample(
            calls.recover_due_call,
            calls.recover_due_call(
                now=1.0, crash_tolerance=1, error="e", meta_ttl=1, max_aggregations=1, max_leases=1
            ),
        ),
        Sample(calls.rescue_orphan_call, calls.rescue_orphan_call(job_id="J1", aggr_id="aggr", now=1.0)),
        Sample(
            calls.claim_callbacks_call,
            calls.claim_callbacks_call(wanted=1, token="t", lease_seconds=1, now=1.0),
        ),
        Sample(
            calls.callback_delivered_call,
            calls.callback_delivered_call(
                job_id="J1", token="t", delete_at=1.0, location="l", now=1.0, kept_ttl=1
            ),
        ),
        Sample(
            calls.callback_undelivered_call,
            calls.callback_undelivered_call(
                job_id="J1",
                token="t",
                fields=FIELDS,
                retry_at=1.0,
                now=1.0,
                meta_ttl=1,
                delete_at=None,
                location="",
            ),
            2 * len(FIELDS),
        ),
        Sample(
            calls.count_job_latency_call, calls.count_job_latency_call(job_id="J1", aggr_id="aggr", now=1.0)
        ),
        Sample(calls.retry_callback_call, calls.retry_callback_call(job_id="J1", now=1.0)),
        Sample(calls.claim_deletions_call, calls.claim_deletions_call(wanted=1, now=1.0, retry_at=2.0)),
        Sample(
            redis_state.recover_call,
            redis_state.recover_call(
                aggr_id="aggr", job_id="J1", now=1.0, crash_tolerance=1, error="e", meta_ttl=1
            ),
        ),
        Sample(
            redis_state.record_attempt_call,
            redis_state.record_attempt_call(aggr_id="aggr", kind="ok", failure="", now=1.0),
        ),
        Sample(
            redis_state.delete_idle_aggregation_call, redis_state.delete_idle_aggregation_call(aggr_id="aggr")
        ),
    ]


@dataclasses.dataclass(frozen=True)
class Declared:
    keys: int
    argv: int
    argv_from: int | None
    """`argv_from(n)`'s n: where the tail of variadic ARGV starts."""


_INDEXED = re.compile(r"\b(KEYS|ARGV)\[(\d+)\]")
_DECLARATION = re.compile(r"^local ([\w, ]+) = (.+?)(?:\s*--.*)?$")
_ARGV_FROM = re.compile(r"^local \w+ = argv_from\((\d+)\)(?:\s*--.*)?$")


def body_of(script: str) -> list[str]:
    """The script's own lines, after the Lua functions it starts with."""
    stripped = True
    while stripped:
        stripped = False
        for prelude in sorted(PRELUDES, key=len, reverse=True):  # composite ones first
            if script.startswith(prelude):
                script, stripped = script[len(prelude) :], True
    return script.strip().splitlines()


def declared(name: str, script: str) -> Declared:
    """What the script's first lines name; fails on a KEYS or ARGV used anywhere else."""
    lines = body_of(script)
    indices: dict[str, list[int]] = {"KEYS": [], "ARGV": []}
    argv_from = None
    at = 0
    for at, line in enumerate(lines):  # noqa: B007 (read after the loop)
        if match := _ARGV_FROM.match(line):
            argv_from = int(match[1])
            continue
        match = _DECLARATION.match(line)
        found = _INDEXED.findall(line)
        if not match or not found:
            break
        names = [n.strip() for n in match[1].split(",")]
        assert len(names) == len(found) == len(match[2].split(",")), f"{name}: one name per value: {line}"
        for kind, index in found:
            indices[kind].append(int(index))
    rest = "\n".join(lines[at:])
    assert not re.search(r"\b(KEYS|ARGV)\b", rest), f"{name}: KEYS or ARGV used past its first lines"
    for kind, seen in indices.items():
        assert seen == list(range(1, len(seen) + 1)), f"{name}: {kind} named once each, in order: {seen}"
    return Declared(len(indices["KEYS"]), len(indices["ARGV"]), argv_from)


def test_every_script_has_exactly_one_wrapper() -> None:
    wrapped = [sample.call.script for sample in samples()]
    assert len(wrapped) == len(set(wrapped)), "one wrapper per script"
    names = {value: name for name, value in SCRIPTS.items()}
    assert sorted(names[script] for script in wrapped) == sorted(SCRIPTS)


@pytest.mark.parametrize("sample", samples(), ids=lambda sample: sample.wrapper.__name__)
def test_a_wrapper_passes_what_its_script_names(sample: Sample) -> None:
    script = sample.call.script
    name = next(name for name, value in SCRIPTS.items() if value == script)
    names = declared(name, script)
    assert len(sample.call.keys) == names.keys
    assert len(sample.call.args) == names.argv + sample.variadic
    if sample.variadic:
        assert names.argv_from == names.argv + 1, "the variadic tail starts after the named ARGV"
    else:
        assert names.argv_from is None


@pytest.mark.parametrize("sample", samples(), ids=lambda sample: sample.wrapper.__name__)
def test_wrappers_take_keywords_only(sample: Sample) -> None:
    parameters = inspect.signature(sample.wrapper).parameters.values()
    assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in parameters)


def test_the_checker_catches_a_script_that_uses_an_unnamed_argument() -> None:
    with pytest.raises(AssertionError, match="past its first lines"):
        declared("bad", "local id = ARGV[1]\nredis.call('DEL', KEYS[1])\n")
    with pytest.raises(AssertionError, match="in order"):
        declared("bad", "local a, b = ARGV[1], ARGV[3]\nreturn 1\n")


@pytest.mark.parametrize(
    ("next_step", "queue", "channel", "score"),
    [
        (NextStep.RETRY, "jobs:aggr", keys.WAKEUP_CHANNEL, "5.0"),
        (NextStep.CALLBACK, keys.CALLBACK_QUEUE, keys.CALLBACK_WAKEUP_CHANNEL, "5.0"),
        (NextStep.DELETE, keys.DELETION_QUEUE, "", "5.0"),
        (None, "jobs:aggr", keys.WAKEUP_CHANNEL, ""),  # no score: FINISH queues it nowhere
    ],
)
def test_an_outcomes_next_step_is_mapped_to_its_queue_and_channel(
    next_step: NextStep | None, queue: str, channel: str, score: str
) -> None:
    job = dataclasses.replace(JOB, id="J1")
    outcome = Outcome(fields={}, next_step=next_step, due=5.0)
    call = calls.finish_call(job=job, token="t", call_id="c", outcome=outcome, now=1.0, meta_ttl=1)
    target, target_score, announced_on = call.keys[3], call.args[3], call.args[16]  # as FINISH names them
    assert (target, target_score, announced_on) == (queue, score, channel)
