"""What the store hands out and takes in: plain records, no Redis.

Claims as a claim reads them, an attempt's `Outcome`, a dead letter, what GET /jobs/<id>
shows, and a process as the dashboard lists it; and the random ids of jobs and lease holders.
"""

from __future__ import annotations

import dataclasses
import enum
import itertools
import json
import os
import secrets
import socket
import time

from downloader.jobs.models import Aggregation, Job
from downloader.version import __version__

#: The kinds of finished attempts FINISH counts (also the per-minute total fields).
ATTEMPT_KINDS = ("ok", "failed", "retried")


def new_job_id() -> str:
    """14 url-safe characters from 10 random bytes of a cryptographic source."""
    return secrets.token_urlsafe(10)


def new_token() -> str:
    """A lease holder's identity; fences writes of a process whose lease was taken back."""
    return secrets.token_hex(8)


_CALL_PREFIX = secrets.token_hex(6)
_calls = itertools.count()


def new_call_id() -> str:
    """An id no other script call of the fleet uses: this process's random prefix and a count.
    Scripts keep it to know a call resent after a lost reply; drawing 8 random bytes per call
    instead cost a system call for every claim and every outcome."""
    return f"{_CALL_PREFIX}{next(_calls):x}"


@dataclasses.dataclass(frozen=True)
class ClaimedJob:
    """A job as a claim reads it: the original's hash, and our encoded `JobOptions`."""

    raw: dict[str, str]
    options: str = ""
    result: str = ""
    """Encoded `DownloadResult` (read by the notifier only)."""


@dataclasses.dataclass(frozen=True)
class Claim:
    """What one claim attempt on an aggregation gave: its jobs, marked InProgress and read in
    the same step (an empty hash: the job is gone), or why none."""

    jobs: dict[str, ClaimedJob] = dataclasses.field(default_factory=dict)
    aggregation: Aggregation | None = None
    full: bool = False
    paused: bool = False
    next_ready: float | None = None
    empty: bool = False
    """Nothing is queued (`idle`: nothing is claimed either, and it left the registry)."""
    idle: bool = False
    held_by_hosts: bool = False
    """Jobs are due, but their hosts are paused, at their limit or past their rate."""
    more: bool = False
    """Jobs were claimed and due ones were left (by the limit, `wanted` or their hosts); when
    False, `next_ready` (None: nothing queued) says when to look again."""

    @property
    def ids(self) -> list[str]:
        return list(self.jobs)


@dataclasses.dataclass(frozen=True)
class CallbackClaim:
    """Callbacks claimed for delivery (their attempt counted; None: the job is gone), and what
    is left: `more` (as many as wanted were claimed: more may be due), else when the next one
    is due (None: nothing queued)."""

    jobs: dict[str, ClaimedJob | None]
    next_due: float | None = None
    more: bool = False

    @property
    def ids(self) -> list[str]:
        return list(self.jobs)


@dataclasses.dataclass(frozen=True)
class Recovered:
    """What a lease recovery pass did: (aggregation, job, `recover_job`'s result) of each
    expired download lease, and how many callbacks went back to their queue."""

    downloads: list[tuple[str, str, int]]
    callbacks: int
    next_due_in: float | None = None
    """Seconds until the next lease held anywhere expires; None when none is held."""


class NextStep(enum.Enum):
    """What follows an attempt; the store knows which queue that is."""

    RETRY = "retry"
    """Download it again: back to its aggregation's queue."""
    CALLBACK = "callback"
    """Tell the client: to the callback queue."""
    DELETE = "delete"
    """Nothing to tell: to the deletion queue, its file deleted then (`deletion_target`)."""


@dataclasses.dataclass(frozen=True)
class Outcome:
    """The end of one download attempt, to be written atomically by `Store.finish`."""

    fields: dict[str, str]
    next_step: NextStep | None = None
    """None: the job leaves its lease for no queue (tests that stage a state by hand)."""
    due: float = 0.0
    """When `next_step` is due (the job's score in its next queue)."""
    error: str = ""
    finished: bool = False
    deletion_target: str = ""
    """Encoded storage Location, recorded when the next step is DELETE."""
    result: str = ""
    """Encoded DownloadResult of a successful download."""
    counted_as: str = ""
    """For the dashboard's per-minute counts: "ok", "failed", "retried", or "" (not counted)."""
    failure: str = ""
    """JSON record for the dashboard's recent failures ("" for none)."""
    pause_host: float = 0.0
    """Seconds the job's origin host is paused for, fleet-wide (its answer's Retry-After)."""


@dataclasses.dataclass(frozen=True)
class HostLoad:
    """One origin host as the fleet sees it: downloads leased for it now, and until when (Unix
    seconds, Redis's clock) a Retry-After pauses it (None: not paused)."""

    host: str
    in_flight: int
    paused_until: float | None


@dataclasses.dataclass(frozen=True)
class DeadLetter:
    """Why a claimed job was set aside unread (`keys.DEAD_LETTERS`)."""

    aggr_id: str
    reason: str
    at: float

    def encode(self) -> str:
        return json.dumps(dataclasses.asdict(self), separators=(",", ":"))

    @classmethod
    def decode(cls, raw: str) -> DeadLetter:
        try:
            values = json.loads(raw)
            return cls(
                str(values.get("aggr_id", "")), str(values.get("reason", "")), float(values.get("at", 0))
            )
        except (ValueError, TypeError, AttributeError):
            return cls("", raw, 0.0)  # written by hand: shown as it is


@dataclasses.dataclass(frozen=True)
class JobStatus:
    """Everything GET /jobs/<id> shows."""

    job: Job
    meta: dict[str, str]
    errors: list[str]
    queued_at: float | None
    lease_expires_at: float | None
    dead_letter: DeadLetter | None = None
    """Set aside as unreadable: `job` then holds only what could be read of its hash."""
    delivered_at: float | None = None
    """Its callback was delivered then: `job` is what `jobmeta` kept of its deleted hash."""
    callback_due_at: float | None = None
    """When its callback's next attempt is due (its score in `CallbackQueue`: a backoff)."""


@dataclasses.dataclass(frozen=True)
class Instance:
    """One running process as the dashboard lists it: the member of `instances:<role>`."""

    role: str
    id: str
    host: str
    pid: int
    version: str
    started: float

    @classmethod
    def here(cls, role: str, instance_id: str | None = None, host: str = "") -> Instance:
        """This process; `host` names it (its pod, DOWNLOADER_POD_NAME), else the host name."""
        host = host or socket.gethostname()
        return cls(role, instance_id or new_token(), host, os.getpid(), __version__, time.time())

    def encode(self) -> str:
        # Fixed once the process starts: renewing the entry only moves its score.
        fields = dataclasses.asdict(self)
        del fields["role"]
        return json.dumps(fields, sort_keys=True, separators=(",", ":"))

    @classmethod
    def decode(cls, role: str, member: str) -> Instance:
        try:
            raw = json.loads(member)
            return cls(
                role,
                str(raw["id"]),
                str(raw["host"]),
                int(raw["pid"]),
                str(raw["version"]),
                float(raw["started"]),
            )
        except (ValueError, KeyError, TypeError):
            return cls(role, member[:40], "?", 0, "?", 0.0)
