"""Every Redis key name and TTL of the service, and nothing else.

The first group is the original Go service's schema (reference section 2.4), kept byte for
byte so that its clients, tools and data keep working. The second group is ours: leases and
per-job bookkeeping live under keys of their own, because the original's reader rejects a
`job:<id>` hash that holds any field it does not know. No other module writes a key literal.
"""

from __future__ import annotations

# --- the original's keys -------------------------------------------------------------

JOB_PREFIX = "job:"
AGGREGATION_PREFIX = "aggr:"
QUEUE_PREFIX = "jobs:"
STATS_PREFIX = "stats:"
CALLBACK_QUEUE = "CallbackQueue"
DELETION_QUEUE = "JobDeletionQueue"

# --- ours ----------------------------------------------------------------------------

INFLIGHT_PREFIX = "inflight:"
LEASES_PREFIX = "leases:"
JOB_META_PREFIX = "jobmeta:"
JOB_ERRORS_PREFIX = "joberrors:"
JOB_OPTIONS_PREFIX = "jobopts:"
#: Hash job id -> encoded storage Location of its file, for the reaper: by the time a file
#: is deleted the job's hash (and so its bucket and subpath) is gone. Entries the original's
#: notifier queued have none and mean the configured storage's `<id[0:3]>/<id>`.
DELETION_TARGETS = "JobDeletionTargets"
CALLBACK_INFLIGHT = "CallbackInflight"
CALLBACK_LEASES = "CallbackLeases"
#: Set of aggregation ids whose Aggregation resource says `paused`: no claim succeeds.
PAUSED_AGGREGATIONS = "PausedAggregations"
#: Set of aggregation ids the operator manages: workers never delete their `aggr:` hash.
MANAGED_AGGREGATIONS = "ManagedAggregations"

#: Set of the aggregation ids that have queued or claimed jobs: the registry every process
#: reads instead of SCANning the keyspace. ENQUEUE adds an aggregation when its queue gets its
#: first job; CLAIM_DOWNLOADS removes it when both its queue and its leases are empty.
#: Queues written by the original's API are added by the adoption sweep.
AGGREGATIONS = "Aggregations"
#: Sorted set of aggregation ids with claimed jobs, scored no later than the earliest lease
#: expiry among them (Redis's clock): lease recovery reads only the members that are due,
#: whatever the number of aggregations or keys.
LEASES_DUE = "LeasesDue"
#: Hash job id -> JSON record (`aggr_id`, `reason`, `at`) of the jobs a worker claimed and
#: could not read (a field the original's Job struct lacks, a bad number, a hash that names
#: another job or aggregation). They are set aside here instead of being retried or dropped:
#: their hash stays as found, no queue holds them, `GET /jobs/<id>` and the dashboard's recent
#: failures say why. No TTL: each one waits for a person (repair the hash and delete its field
#: here; the notifier's start-up sweep then queues it again).
DEAD_LETTERS = "DeadLetters"
#: String per claim call (`claimed:<call id>`): the ids that call leased, kept for the length of
#: the lease. A call whose reply was lost is sent again by the client (redis-py retries on
#: timeout); the retry finds the record and answers with those ids instead of leasing more.
CLAIM_RECEIPT_PREFIX = "claimed:"
#: String held (SET NX EX) by the one process of the fleet running the adoption sweep.
ADOPTION_LOCK = "downloader:adoption"
#: String held (SET NX EX, renewed per page) by the one process sweeping for the original's
#: orphaned jobs (`Store.rescue_orphans`, at a notifier's start): notifiers that start together
#: (a rollout) do not all scan every job at once.
RESCUE_LOCK = "downloader:rescue"

#: Pub/sub channel (not a key): the API publishes an aggregation id on it when that
#: aggregation's queue goes from empty to non-empty, so idle workers start at once instead
#: of at their next scan. Jobs written by the original's API are found by the scan.
WAKEUP_CHANNEL = "downloader:wakeup"

#: Pub/sub channel: FINISH and the other scripts that fill `CallbackQueue` publish on it when
#: the queue goes from empty to non-empty, so idle notifiers deliver at once without polling.
CALLBACK_WAKEUP_CHANNEL = "downloader:callbacks"

#: Stats keys expire after this many stats intervals, so a stopped component disappears
#: from /stats (the original used 2 intervals; 3 tolerates one late flush on a busy host).
STATS_TTL_INTERVALS = 3

#: How many error texts `GET /jobs/<id>` keeps per job: enough to see a retry history,
#: bounded so a job retried a thousand times cannot grow without limit.
JOB_ERRORS_KEPT = 20

#: Bookkeeping of a job that nobody deletes explicitly (a job without callback keeps its
#: original hash forever, as the original did; our side keys should not outlive a week).
JOB_META_TTL_SECONDS = 7 * 24 * 3600


def job(job_id: str) -> str:
    return JOB_PREFIX + job_id


def aggregation(aggr_id: str) -> str:
    return AGGREGATION_PREFIX + aggr_id


def queue(aggr_id: str) -> str:
    """Sorted set of the aggregation's waiting job ids, scored by ready time."""
    return QUEUE_PREFIX + aggr_id


def inflight(aggr_id: str) -> str:
    """Sorted set of the aggregation's claimed job ids, scored by lease expiry."""
    return INFLIGHT_PREFIX + aggr_id


def leases(aggr_id: str) -> str:
    """Hash job id -> token of the process holding its lease (fences late writers)."""
    return LEASES_PREFIX + aggr_id


def job_meta(job_id: str) -> str:
    """Hash of what we track per job beyond the original's fields (timestamps, crashes)."""
    return JOB_META_PREFIX + job_id


def job_options(job_id: str) -> str:
    """String (JSON): the request fields the original's hash has no place for (`JobOptions`).
    No TTL: it lives exactly as long as the job's hash."""
    return JOB_OPTIONS_PREFIX + job_id


def job_errors(job_id: str) -> str:
    """List of the job's attempt errors, newest last."""
    return JOB_ERRORS_PREFIX + job_id


def claim_receipt(call_id: str) -> str:
    return CLAIM_RECEIPT_PREFIX + call_id


def stats(component: str) -> str:
    return STATS_PREFIX + component


def aggregation_from_queue(key: str) -> str:
    return key[len(QUEUE_PREFIX) :]


def aggregation_from_inflight(key: str) -> str:
    return key[len(INFLIGHT_PREFIX) :]


QUEUE_PATTERN = QUEUE_PREFIX + "*"
INFLIGHT_PATTERN = INFLIGHT_PREFIX + "*"
JOB_PATTERN = JOB_PREFIX + "*"

# --- what the web dashboard reads ------------------------------------------------------

#: Sorted set per role (api, worker, notifier, operator): member = the instance's JSON
#: (id, host, pid, version, started), score = when it counts as gone. Every process renews
#: its entry each interval; a process that stops renewing drops out after the TTL.
INSTANCES_PREFIX = "instances:"
INSTANCE_ROLES = ("api", "worker", "notifier", "operator")
INSTANCE_HEARTBEAT_SECONDS = 5.0
INSTANCE_TTL_SECONDS = 3 * INSTANCE_HEARTBEAT_SECONDS
#: TTL of a role's whole sorted set, set on a process's first beat and then every half of it
#: (not each beat): it only clears the key once every process of the role has stopped.
INSTANCE_KEY_TTL_SECONDS = 60
#: List (newest first) of JSON records of downloads that ended Failed, capped by LTRIM.
RECENT_FAILURES = "RecentFailures"
RECENT_FAILURES_KEPT = 50
#: Hash per minute (unix seconds // 60) of finished attempts: fields `ok`, `failed`,
#: `retried` (all aggregations) and `<aggr>:ok`, `<aggr>:failed`, `<aggr>:retried`.
THROUGHPUT_PREFIX = "throughput:"
THROUGHPUT_MINUTES = 30
THROUGHPUT_TTL_SECONDS = (THROUGHPUT_MINUTES + 5) * 60


def instances(role: str) -> str:
    return INSTANCES_PREFIX + role


def throughput(minute: int) -> str:
    return f"{THROUGHPUT_PREFIX}{minute}"
