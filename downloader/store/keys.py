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
#: Hash per client idempotency key (`idempotency:<scope>:<key>`, see `store.idempotency`):
#: `id` (the job the key's first request queued) and `fingerprint` (sha256 of that request).
#: Written by ENQUEUE with the job, in one step; TTL `DOWNLOADER_IDEMPOTENCY_WINDOW_SECONDS`
#: (default a day), after which the key may name a new job. Gone with the job when UNDO_HELD
#: undoes it (a 503 means nothing was queued, so the retry must queue).
IDEMPOTENCY_PREFIX = "idempotency:"
#: String held (SET NX EX) by the one process of the fleet running the adoption sweep.
ADOPTION_LOCK = "downloader:adoption"
#: String held (SET NX EX, renewed per page) by the one process sweeping for the original's
#: orphaned jobs (`Store.rescue_orphans`, at a notifier's start): notifiers that start together
#: (a rollout) do not all scan every job at once.
RESCUE_LOCK = "downloader:rescue"

#: Politeness per origin host, fleet-wide (see `downloader.jobs.hosts`). A job's host is read
#: from its URL by CLAIM_DOWNLOADS, so jobs written by the original's API are counted as well.
#: Sorted set per host under a limit of the job ids leased for it (an unlimited host's
#: downloads are not counted), scored by lease expiry (Redis's clock) as `inflight:<aggr>`:
#: counted at claim (expired members first trimmed, so a dead worker's slots come back when its
#: lease expires), renewed by RENEW, emptied by FINISH, DROP_CLAIM and recovery (the lease's
#: value in `leases:<aggr>` names the host whose slot it holds); an empty set is no key.
HOST_INFLIGHT_PREFIX = "hostinflight:"
#: String per paused host (a 429/503 with Retry-After): the pause's end in Unix seconds on
#: Redis's clock, expiring (PX) with it. No claim takes a job for the host meanwhile.
HOST_PAUSE_PREFIX = "hostpause:"
#: String per host with a requests-per-second limit: the earliest time (Redis's clock) of its
#: next request, expiring (PX) then. One claim per interval per host across the fleet.
HOST_NEXT_PREFIX = "hostnext:"
#: Sorted set host -> when it was last claimed for under a limit or rate, or paused until
#: (Redis's clock): the hosts the dashboard and /metrics show. Members older than
#: HOSTS_SEEN_SECONDS are trimmed, and the key expires that long after a claim first names a
#: host (a quiet fleet leaves no trace).
HOSTS = "Hosts"
HOSTS_SEEN_SECONDS = 3600
#: String that lives (PX) as long as the longest host pause in force: while it is absent and
#: no host limit or rate is configured, a claim reads no job's host at all.
HOST_PAUSES = "HostPauses"

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
    """Hash job id -> token of the process holding its lease (fences late writers), followed by
    " <host>" when the lease holds a slot of its host (`hostinflight:<host>`)."""
    return LEASES_PREFIX + aggr_id


def job_meta(job_id: str) -> str:
    """Hash of what we track per job beyond the original's fields (timestamps, crashes;
    `Errors` and `Options` = "1" when its errors list and options key exist). Once
    its callback is delivered the job's hash goes, as in the original, and this one keeps what
    GET /jobs/<id> shows of it (`Delivered`: JSON of some of its fields, `DeliveredAt`) until
    the reaper deletes its file."""
    return JOB_META_PREFIX + job_id


def job_options(job_id: str) -> str:
    """String (JSON): the request fields the original's hash has no place for (`JobOptions`).
    No TTL while the job's hash lives; a delivered job's is kept (with a TTL) until its file
    is deleted, like its meta."""
    return JOB_OPTIONS_PREFIX + job_id


def job_errors(job_id: str) -> str:
    """List of the job's attempt errors, newest last."""
    return JOB_ERRORS_PREFIX + job_id


def claim_receipt(call_id: str) -> str:
    return CLAIM_RECEIPT_PREFIX + call_id


def host_inflight(host: str) -> str:
    return HOST_INFLIGHT_PREFIX + host


def host_pause(host: str) -> str:
    return HOST_PAUSE_PREFIX + host


def idempotency(scope: str, key: str) -> str:
    """The record of a client's idempotency key within its caller's scope (never ':')."""
    return f"{IDEMPOTENCY_PREFIX}{scope}:{key}"


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
#: Hash per minute of end-to-end latencies (creation to callback delivered, or to stored for a
#: job without callback): field `<aggr>:<upper bound in seconds>` (LATENCY_BOUNDS, `inf`
#: above the last) -> jobs that ended in that minute within it. A
#: histogram, so p50/p95 cost a few fields per aggregation, never a list of samples.
LATENCY_PREFIX = "latency:"
#: The histogram's bucket upper bounds in seconds, as written in its field names.
LATENCY_BOUNDS = (
    "0.25", "0.5", "1", "2", "3", "5", "8", "13", "20", "30", "45", "60", "90", "120", "180", "300",
    "600", "900", "1800", "3600", "7200", "10800",
)  # fmt: skip
LATENCY_ABOVE = "inf"
LATENCY_TTL_SECONDS = THROUGHPUT_TTL_SECONDS
#: Field `<aggr>:limit` of a `throughput:<minute>` hash: the limit of an aggregation whose idle
#: `aggr:` hash a worker just deleted (as the original did), so the dashboard still shows the
#: limit of an aggregation that drained within its window.
THROUGHPUT_LIMIT_KIND = "limit"
#: Hash per minute of callbacks that failed, by destination host: fields `<host>:retried` (an
#: attempt failed, another follows) and `<host>:failed` (failed for good). Written by the
#: notifier; bounded by the destinations of one minute, gone after THROUGHPUT_TTL_SECONDS.
CALLBACK_HOSTS_PREFIX = "callbackhosts:"
#: How many queued or in-flight callbacks the dashboard reads to count them per destination
#: host: exact below it, a sample (the earliest due) above.
CALLBACK_HOSTS_SAMPLE = 1000


def instances(role: str) -> str:
    return INSTANCES_PREFIX + role


def throughput(minute: int) -> str:
    return f"{THROUGHPUT_PREFIX}{minute}"


def latency(minute: int) -> str:
    return f"{LATENCY_PREFIX}{minute}"


def callback_hosts(minute: int) -> str:
    return f"{CALLBACK_HOSTS_PREFIX}{minute}"
