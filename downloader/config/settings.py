"""Settings of every process: `DOWNLOADER_*` environment variables over the original's config.json.

One pydantic-settings class, `Settings`, composed of small groups (RedisSettings,
StorageSettings, ...: GROUPS), one per concern, each saying what it governs; each field says
its unit and why its default is what it is. Access stays flat (`settings.redis_url` is
`DOWNLOADER_REDIS_URL`), and a component that needs one concern can ask for its group alone.
`load()` reads an optional config.json in the original's layout (reference 5.2), maps it
onto the same fields, and lets the environment win. Invalid values raise ConfigurationError
with one line naming the variable; a `DOWNLOADER_*` variable that nothing reads is logged as a
warning naming the closest real one, so a typo does not silently do nothing.
"""

from __future__ import annotations

import difflib
import json
import logging
import os
import re
import urllib.parse
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, Self

import pydantic
import redis.connection
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict, SettingsError

from downloader.config import parsing
from downloader.errors import ConfigurationError

log = logging.getLogger(__name__)

ENV_PREFIX = "DOWNLOADER_"
#: `DOWNLOADER_*` variables read outside the Settings class: by the CLI before the settings
#: load (log level), by `enqueue --api`, by the original's test switch, and by the test
#: tooling (build caches of tests/controlplane, tests/chart, tests/images and tests/node).
OTHER_VARIABLES = frozenset(
    {
        "DOWNLOADER_LOG_LEVEL",
        "DOWNLOADER_TEST_TIME",
        "DOWNLOADER_API_KEY",
        "DOWNLOADER_CONTROLPLANE_CACHE",
        "DOWNLOADER_CONTROLPLANE_KEEP",
        "DOWNLOADER_HELM_CACHE",
        "DOWNLOADER_IMAGES_CACHE",
        "DOWNLOADER_IMAGES_KEEP",
        "DOWNLOADER_IMAGES_RUNROOT",
        "DOWNLOADER_NODE_CACHE",
    }
)
#: Kubernetes gives every pod `<SERVICE>_SERVICE_HOST`, `<SERVICE>_PORT_80_TCP_ADDR`, ... for
#: each Service of its namespace: a release named "downloader" has Services named
#: downloader-api and downloader-redis, whose variables are no typo.
_SERVICE_LINK = re.compile(
    r"_SERVICE_HOST|_SERVICE_PORT(_[A-Z0-9_]+)?|_PORT_\d+_(TCP|UDP|SCTP)(_PROTO|_PORT|_ADDR)?"
)
#: ...and `<SERVICE>_PORT=tcp://10.0.0.7:80`, a name a setting could have: known by its value.
_SERVICE_LINK_URL = re.compile(r"(tcp|udp|sctp)://[^/]+:\d+")
#: Values never echoed in an error line.
_SECRET_FIELDS = frozenset(
    {"api_keys", "callback_signing_keys", "kafka_password", "redis_sentinel_password", "kafka_config"}
)


#: A `host_limits` key: a host name or IP (v6 in brackets), optionally with a port, or
#: `*.` and a domain suffix.
_HOST_PATTERN = re.compile(r"(\*\.)?([A-Za-z0-9_.-]+|\[[0-9A-Fa-f:.]+\])(:[0-9]{1,5})?")


def _test_time() -> bool:
    """The original's switch: any value of DOWNLOADER_TEST_TIME shrinks backoff units to 200 ms."""
    return "DOWNLOADER_TEST_TIME" in os.environ


#: What every group shares (see SettingsGroup). Not `use_attribute_docstrings`: reading this
#: file's source for them would add some 30 ms to every process start; the tests read it instead.
_GROUP_CONFIG = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", frozen=True)


class SettingsGroup(BaseSettings):
    """Base of the groups below: each field is read from `DOWNLOADER_<FIELD>`, the environment
    wins over values passed in (those of -c/--config), and loaded settings never change.

    A group is a type of its own: a component that needs only Redis asks for `RedisSettings`
    and accepts the whole `Settings` as well as a `RedisSettings()` loaded alone."""

    model_config = _GROUP_CONFIG

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The environment wins over values from -c/--config, which arrive as init kwargs.
        return env_settings, init_settings


class RedisSettings(SettingsGroup):
    """The Redis every process shares: where it is, directly or through Sentinel (the original's
    `redis` section), and how durably the API waits for an accepted job to be replicated."""

    redis_url: str = "redis://127.0.0.1:6379/0"
    """Redis connection URL (`redis://host:port/db`, `rediss://` for TLS, `unix:///path`).
    With Sentinel, only its database number, user and password are used."""

    redis_sentinels: str = ""
    """Comma-separated `host:port` list of Redis Sentinels; with `redis_master_name` set, every
    process asks them for the primary and follows failovers (the original's `redis.sentinel`)."""

    redis_master_name: str = ""
    """The Sentinel-monitored primary's name (the original's `redis.master_name`)."""

    redis_sentinel_password: str = ""
    """Password of the Sentinels themselves, when they require one (the primary's is in the URL)."""

    redis_wait_replicas: int = pydantic.Field(default=0, ge=0)
    """After accepting a job, the API waits until this many replicas hold it (Redis WAIT), so a
    failover right after the 201 cannot lose it. 0 answers at once (async replication)."""

    redis_wait_timeout_ms: int = pydantic.Field(default=1000, ge=1)
    """Longest such wait; on timeout the job is still accepted and a warning logged."""

    @pydantic.field_validator("redis_url")
    @classmethod
    def _check_redis_url(cls, url: str) -> str:
        # redis-py parses it only when the first client connects, deep inside a traceback.
        try:
            redis.connection.parse_url(url)  # type: ignore[no-untyped-call]
        except ValueError as exc:
            raise ValueError(f"not a Redis URL: {exc}") from None
        parts = urllib.parse.urlsplit(url)
        db = parts.path.strip("/")
        if parts.scheme != "unix" and db and not db.isdigit():
            # redis-py would silently use database 0.
            raise ValueError(f"the database number {db!r} (the URL's path) is not a number")
        return url


class ApiSettings(SettingsGroup):
    """The HTTP API's own knobs (the original's `api` section): the switch that takes an
    instance out of a load balancer, the size of the requests it accepts and how long an
    idempotency key names its job. Its bearer
    tokens are in SecuritySettings, its Redis durability in RedisSettings."""

    heartbeat_path: str = ""
    """While this file exists, GET /hb answers 503 (take an instance out of a balancer)."""

    max_request_bytes: int = pydantic.Field(default=1 << 20, gt=0)
    """Largest POST /download body; larger ones get 413."""

    idempotency_window_seconds: int = pydantic.Field(default=86400, ge=1)
    """Seconds an `Idempotency-Key` (POST /download, `downloader enqueue`) names the job its
    first request queued: a retry within it gets that job back, after it the key may name a
    new job. A day, as Stripe's: longer than any client's retry schedule or a re-run after a
    crash, short enough that the records (about 200 bytes a key) do not pile up."""


class SecuritySettings(SettingsGroup):
    """Who may be reached and who may call: the outbound guard every download and callback
    passes, the API's bearer tokens, and the keys callbacks are signed with."""

    allow_private_networks: bool = False
    """Let downloads and callbacks reach loopback, private, link-local (cloud metadata) and
    other non-public addresses. Off: such destinations fail with "destination address not
    allowed". `downloader up` turns it on for local use and says so."""

    allowed_networks: str = ""
    """Comma-separated CIDRs reachable even though they are not public (e.g. an internal
    callback receiver at 10.2.0.0/16), when `allow_private_networks` is off."""

    callback_signing_keys: str = ""
    """Comma-separated secrets; every HTTP callback (and Kafka message) is signed with each,
    so receivers can rotate: add the new key here, move receivers over, drop the old one."""

    api_keys: str = ""
    """Comma-separated bearer tokens for the API; "" leaves it open. `token=prefix1|prefix2`
    limits a token to aggregation ids starting with one of the prefixes."""


class FetchSettings(SettingsGroup):
    """How a worker downloads (the original's `processor` section, in part): how many at once,
    the headers it sends, and the timeouts and caps that keep one slow or huge response from
    holding a slot or filling a disk."""

    worker_concurrency: int = pydantic.Field(default=16, ge=1, le=1024)
    """Downloads one worker process runs at once, over all its aggregations. 16 threads is
    where `requests` stops getting faster on two cores (measured, DESIGN.md)."""

    worker_cpus: str = ""
    """CPUs a worker process runs on, as `taskset -c` lists them (`1`, `0,2-3`); "" leaves it to
    the kernel. Its Python runs on one core at a time (the GIL): where the threads hand it to
    each other across cores, one CPU measured 1.45x the drain at 0.7x the CPU per job here
    (bench/README.md). On Kubernetes a worker pod given a whole CPU (requests = limits = 1 under
    the static CPU manager policy) gets the same from the kubelet."""

    default_request_headers: dict[str, str] = pydantic.Field(default_factory=dict)
    """Headers sent with every download (JSON object); a job's own headers override per key."""

    download_timeout_seconds: float = pydantic.Field(default=300.0, gt=0)
    """Total time of a download whose job has no download_timeout (the original had none,
    so a stalled server held a slot of the aggregation forever)."""

    connect_timeout_seconds: float = pydantic.Field(default=10.0, gt=0)
    """Longest wait to connect to a download's server, within the download's total time."""

    max_redirects: int = pydantic.Field(default=10, ge=0)
    """Redirects a download follows (each hop checked by the outbound guard); one more fails it."""

    max_download_bytes: int = pydantic.Field(default=1 << 30, gt=0)
    """Larger responses fail terminally (1 GiB)."""

    resume_downloads: bool = True
    """Keep what a cut download stored (a timeout, a network error, a killed worker) and
    continue it on the job's next attempt with `Range` + `If-Range`, when the server named a
    strong ETag or a Last-Modified; off: every attempt starts from byte 0, as the original."""

    partial_retention_seconds: float = pydantic.Field(default=86400.0, gt=0)
    """A partial download left untouched this long in `tmp_dir` is deleted: its job ended on
    another worker or was given up (a day covers every backoff of the defaults)."""

    host_limit: int = pydantic.Field(default=0, ge=0)
    """Downloads at once per origin host (`host[:port]` of the job's URL) over the whole fleet,
    every aggregation together; 0: unlimited. Off by default, so that a drop-in replacement
    runs as the original did (only `aggr_limit` bounds a host); set it, or per host below,
    where many aggregations share a host."""

    host_limits: dict[str, int] = pydantic.Field(default_factory=dict)
    """Per-host limits over `host_limit` (JSON object): `{"img.shop.example": 2,
    "*.cdn.example": 4, "127.0.0.1:8080": 1}`. An exact `host:port` wins over the host name,
    which wins over the longest matching `*.suffix` (subdomains only); 0 means unlimited."""

    host_requests_per_second: float = pydantic.Field(default=0.0, ge=0)
    """Requests started per second per origin host over the whole fleet; 0: no such limit
    (the default: the original had none, and concurrency is the usual bound)."""

    host_rates: dict[str, float] = pydantic.Field(default_factory=dict)
    """Per-host requests per second over `host_requests_per_second` (JSON object, patterns as
    in `host_limits`)."""

    retry_after_max_seconds: float = pydantic.Field(default=3600.0, ge=0)
    """A 429 or 503 with Retry-After pauses its host fleet-wide for that long, at most this
    (an hour: a server's mistake or malice must not park a host for days); 0: Retry-After is
    ignored, as the original did."""

    @pydantic.field_validator("host_limits", "host_rates")
    @classmethod
    def _host_patterns(cls, value: dict[str, Any]) -> dict[str, Any]:
        for pattern, number in value.items():
            if not _HOST_PATTERN.fullmatch(pattern):
                raise ValueError(f"{pattern!r} is not a host, host:port or *.suffix pattern")
            if number < 0:
                raise ValueError(f"the value of {pattern!r} must be 0 (unlimited) or more")
        return {pattern.lower(): number for pattern, number in value.items()}


class StorageSettings(SettingsGroup):
    """Where downloads stream to and finished files go (a filesystem or S3), the address they
    are served at, how long they are kept, and the disk watermarks that pause downloads."""

    storage_backend: Literal["filesystem", "s3"] = "filesystem"
    """Where finished files go: a filesystem under `storage_root`, or the S3 bucket `s3_bucket`."""

    storage_root: Path = Path("data/files")
    """Root of the filesystem backend; files live at `<root>/<id[0:3]>/<id>`."""

    tmp_dir: Path = Path("data/tmp")
    """Where downloads stream to (`<tmp>/<id>.tmp`) before the atomic move. Same filesystem
    as the root makes the move a rename; the disk check watches this directory."""

    sync_files: bool = True
    """fsync each downloaded file and then its directory before the job is reported done, so
    that after a crash of the node a job reported successful has its whole file (the original
    synced the file, not the directory: its rename could be lost). false skips both: a drain
    of small files ran 1.0-2.1x as fast here (three pairs, bench/README.md), and a file
    written in the seconds before a crash may be lost or cut although its job succeeded.
    Files bound for S3 are never synced: the upload reads them back, and a crash before the
    outcome is written runs the job again."""

    s3_bucket: str = ""
    """Bucket of the S3 backend (`storage_backend=s3`); objects are keyed `<id[0:3]>/<id>`."""

    s3_region: str = ""
    """Region of `s3_bucket`; "" leaves it to the standard AWS configuration (environment, profile)."""

    s3_endpoint_url: str = ""
    """For S3-compatible stores (MinIO, Ceph, moto); "" means AWS itself. Also used for the
    per-job buckets of `s3_bucket`/`s3_region` requests. Credentials: the standard AWS chain."""

    s3_multipart_threshold_bytes: int = pydantic.Field(default=8 << 20, ge=5 << 20)
    """Files at least this large are uploaded in parts of this size (S3's minimum part: 5 MiB)."""

    download_url: str = "http://localhost/"
    """Base of the callback's `download_url`: the relative path `<id[0:3]>/<id>` is joined to
    its path. Must point at whatever serves the storage root."""

    job_retention_seconds: float = pydantic.Field(default=7 * 24 * 3600.0, gt=0)
    """Jobs without a callback are deleted this long after they finish, and jobs whose callback
    failed for good this long after it failed (until then POST /retry/<id> has everything):
    hash, meta and file together, the file when it is in the configured storage (the original
    kept them forever)."""

    deletion_delay_seconds: float = pydantic.Field(default=10800.0, gt=0)
    """Files are deleted this long after their callback was delivered (the original: 180 min)."""

    disk_check_interval_seconds: float = pydantic.Field(default=60.0, gt=0)
    """How often a worker measures the tmp filesystem against the watermarks below."""
    disk_high_watermark_percent: float = pydantic.Field(default=95.0, ge=0, le=100)
    """Above this much of the tmp filesystem used, downloads pause."""
    disk_low_watermark_percent: float = pydantic.Field(default=90.0, ge=0, le=100)
    """...and resume at or below this much."""

    @pydantic.model_validator(mode="after")
    def _check_watermarks(self) -> Self:
        if self.disk_low_watermark_percent > self.disk_high_watermark_percent:
            raise ValueError(
                "DOWNLOADER_DISK_LOW_WATERMARK_PERCENT must not exceed DOWNLOADER_DISK_HIGH_WATERMARK_PERCENT"
            )
        return self


class CallbackSettings(SettingsGroup):
    """How the notifier delivers callbacks (the original's `notifier` and `backends` sections):
    its concurrency, the HTTP timeout, and the Kafka and SQS backends. Their retries are in
    LeaseAndRetrySettings, their signing keys in SecuritySettings."""

    notifier_concurrency: int = pydantic.Field(default=8, ge=1, le=1024)
    """Callbacks one notifier process delivers at once."""

    notifier_slow_concurrency: int = pydantic.Field(default=256, ge=0, le=4096)
    """Callbacks still unanswered after a second step aside: they wait out their timeout
    without holding one of `notifier_concurrency`'s slots, up to this many at once, so slow
    or hostile receivers cannot starve the others (a waiting thread costs no CPU)."""

    notifier_cpus: str = ""
    """CPUs a notifier process runs on, as `worker_cpus` (`1`, `0,2-3`; "" the kernel chooses):
    one CPU measured 0.77x the notifier's CPU per callback on a 2-core VM, for the same reason."""

    callback_timeout_seconds: float = pydantic.Field(default=30.0, gt=0)
    """Whole-request timeout of one HTTP callback (the original's backends.http.timeout):
    connect, send, status and a capped body read, then the connection is closed."""

    kafka_bootstrap_servers: str = ""
    """Kafka brokers (`host:port,...`); setting it (or `kafka_config`) enables `callback_type: kafka`."""

    kafka_config: dict[str, str | int | float | bool] = pydantic.Field(default_factory=dict)
    """librdkafka producer settings, verbatim (JSON object; the original's `backends.kafka`).
    Ours win only where delivery depends on them: idempotence and `acks=all`."""

    kafka_username: str = ""
    """SASL user name and password (`sasl.username`/`sasl.password`), kept out of config files."""

    kafka_password: str = ""
    """The SASL password (see `kafka_username`); never shown in errors or logs."""

    sqs_region: str = ""
    """Region of `callback_type: sqs` queues (the original's `backends.sqs.region`); "" takes
    it from the queue URL."""

    sqs_endpoint_url: str = ""
    """For SQS-compatible services; "" means AWS itself."""


class LeaseAndRetrySettings(SettingsGroup):
    """What happens when an attempt fails or its process dies: the backoff and attempts of
    downloads and callbacks (DOWNLOADER_TEST_TIME shrinks both backoff units, as in the
    original), the leases that give a dead process's jobs back, and the grace on SIGTERM."""

    retry_backoff_seconds: float = pydantic.Field(default_factory=lambda: 0.2 if _test_time() else 120.0)
    """Unit of the linear download backoff: attempt N waits N units (the original: 2 min)."""

    max_retries: int = pydantic.Field(default=2, ge=0)
    """Retries after the first attempt for jobs that do not set max_retries."""

    callback_backoff_seconds: float = pydantic.Field(default_factory=lambda: 0.2 if _test_time() else 600.0)
    """Unit of the linear callback backoff (the original: 10 min)."""

    callback_max_attempts: int = pydantic.Field(default=2, ge=1)
    """Callback attempts before the callback is marked Failed (then POST /retry/<id>)."""

    lease_seconds: float = pydantic.Field(default=60.0, gt=0)
    """A claimed job's lease. The holder renews it every third of this; a process that dies
    gives its jobs back after at most this long."""

    crash_tolerance: int = pydantic.Field(default=2, ge=0)
    """Lost leases (killed processes) forgiven per job before each further one uses up an
    attempt, so a job that kills its worker cannot loop forever."""

    recovery_interval_seconds: float = pydantic.Field(default=0.0, ge=0)
    """How often each worker and notifier runs the fleet's lease recovery pass (it gives back
    the jobs of processes that died). 0: a sixth of the lease, at most 10 s."""

    @property
    def recovery_every(self) -> float:
        if self.recovery_interval_seconds > 0:
            return self.recovery_interval_seconds
        return min(10.0, self.lease_seconds / 6)

    shutdown_grace_seconds: float = pydantic.Field(default=25.0, ge=0)
    """On SIGTERM, in-flight downloads get this long to finish before their leases are given
    back; below Kubernetes' default terminationGracePeriodSeconds (30 s)."""


class QueueSettings(SettingsGroup):
    """How idle workers and notifiers find work. New work is announced on Redis pub/sub, so
    these are the pacing and the safety net, not the way work normally arrives."""

    scan_interval_seconds: float = pydantic.Field(default=30.0, gt=0)
    """How often an idle worker re-reads the registry of aggregations with work, and an idle
    notifier its callback and deletion queues. A safety net only: a queue that gets its first
    job, and a callback queue its first callback, are announced on Redis pub/sub, so idle
    processes start at once without polling."""

    adoption_interval_seconds: float = pydantic.Field(default=300.0, ge=0)
    """How often one process of the fleet SCANs for queues no registry knows of (written by
    the original's API, or by versions before the registry), paced to spare Redis. 0: never,
    for a Redis that only this service writes."""

    poll_interval_seconds: float = pydantic.Field(default=0.05, gt=0)
    """The shortest wait before a worker claims again from an aggregation whose next job is
    not yet due."""


class ObservabilitySettings(SettingsGroup):
    """What the processes tell about themselves: Prometheus metrics, the log format (the level,
    DOWNLOADER_LOG_LEVEL, is read by the CLI before the settings load), and the original's
    `stats:<component>` hashes."""

    stats_interval_seconds: float = pydantic.Field(default=5.0, gt=0)
    """How often workers and notifiers write `stats:<component>`."""

    metrics_port: int = pydantic.Field(default=0, ge=0, le=65535)
    """Port of `/metrics` (Prometheus) on worker, notifier and operator processes; 0 turns it
    off (the default, so several processes on one machine do not collide; the chart sets
    9100). The API serves `/metrics` on its own port."""

    metrics_aggregation_labels: bool = True
    """Label per-aggregation series with the aggregation id. Turn off with very many
    aggregations: series stay bounded either way (see downloader/observability/metrics.py)."""

    log_format: Literal["text", "json"] = "text"
    """`json`: one JSON object per line (time, level, logger, message, and job id,
    aggregation, event, duration where known), for log pipelines."""


class KubernetesSettings(SettingsGroup):
    """Cluster access of the API and the operator, the operator's own loop, and the worker
    pods it creates for each Aggregation: image, resources, environment, storage and placement."""

    kubeconfig: str = ""
    """Kubeconfig for the API and the operator outside a cluster; in a pod the in-cluster
    service account is used. With neither, the API does not create Aggregation resources."""

    kube_namespace: str = "default"
    """Namespace of the Aggregation resources and worker Deployments."""

    pod_name: str = ""
    """This process's pod (the worker Deployments set it from the downward API): the name the
    dashboard lists and the operator matches leases to when it picks the pods to remove on a
    scale-down. "" = the host name (a pod's own name, unless it runs on the host network)."""

    kube_create_aggregations: bool = True
    """Whether the API creates the Aggregation of an aggregation id it sees first (when it
    has cluster access)."""

    operator_interval_seconds: float = pydantic.Field(default=5.0, gt=0)
    """How often the operator refreshes each Aggregation's status and replicas from Redis."""

    operator_liveness_port: int = pydantic.Field(default=8080, ge=0, le=65535)
    """The operator's liveness endpoint (`/healthz`); 0 turns it off."""

    worker_image: str = "downloader-worker:0.2.0"
    """Image of the worker Deployments the operator creates."""

    worker_image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = "IfNotPresent"
    """imagePullPolicy of the worker container (`Never` for images loaded into the nodes)."""

    worker_resources: dict[str, dict[str, str]] = pydantic.Field(
        default_factory=lambda: {
            "requests": {"cpu": "250m", "memory": "256Mi"},
            "limits": {"memory": "512Mi"},
        }
    )
    """Container resources of a worker pod (JSON)."""

    worker_env_configmap: str = ""
    """ConfigMap with DOWNLOADER_* variables for worker pods (the chart's); "" for none."""

    worker_env_secret: str = ""
    """Secret with DOWNLOADER_* variables for worker pods (e.g. the Redis password)."""

    worker_service_account: str = ""
    """ServiceAccount of the worker pods; its token is not mounted, as workers never call the
    Kubernetes API. "" = the namespace's default account."""

    worker_storage_claim: str = ""
    """PersistentVolumeClaim mounted at the storage root of worker pods (filesystem storage
    shared with the notifier); "" gives each pod an emptyDir (fine with S3 storage)."""

    worker_metrics_port: int = pydantic.Field(default=9100, ge=0, le=65535)
    """Port of each worker pod's `/metrics` (its container port `metrics`, which the chart's
    PodMonitor scrapes); 0: none. Pods have addresses of their own, so one port fits all,
    except on the host network (`worker_host_network`), where two pods of a node collide."""

    worker_host_network: bool = False
    """Run worker pods in their node's network namespace (dnsPolicy ClusterFirstWithHostNet),
    for nodes without a pod network. NetworkPolicies do not apply to such pods."""

    worker_node_selector: dict[str, str] = pydantic.Field(default_factory=dict)
    """nodeSelector of the worker pods (JSON object); {} = any node."""

    worker_tolerations: list[dict[str, str | int]] = pydantic.Field(default_factory=list)
    """Tolerations of the worker pods (JSON list of Kubernetes Toleration objects, e.g.
    `[{"key": "dedicated", "operator": "Equal", "value": "downloads", "effect": "NoSchedule"}]`)."""

    worker_affinity: dict[str, Any] = pydantic.Field(default_factory=dict)
    """Affinity of the worker pods (JSON Kubernetes Affinity object); {} = none."""

    worker_pod_annotations: dict[str, str] = pydantic.Field(default_factory=dict)
    """Annotations of the worker pods (JSON object), beside the operator's own."""

    worker_pod_security_context: dict[str, Any] = pydantic.Field(
        default_factory=lambda: {
            "runAsNonRoot": True,
            "runAsUser": 10001,
            "runAsGroup": 10001,
            "fsGroup": 10001,
            "seccompProfile": {"type": "RuntimeDefault"},
        }
    )
    """securityContext of the worker pods (JSON PodSecurityContext; the chart's
    worker.podSecurityContext)."""

    worker_container_security_context: dict[str, Any] = pydantic.Field(
        default_factory=lambda: {
            "readOnlyRootFilesystem": True,
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
        }
    )
    """securityContext of the worker container (JSON SecurityContext; the chart's
    worker.containerSecurityContext)."""


#: The groups in reading order (this file's, and the README's settings table's).
GROUPS: tuple[type[SettingsGroup], ...] = (
    RedisSettings,
    ApiSettings,
    SecuritySettings,
    FetchSettings,
    StorageSettings,
    CallbackSettings,
    LeaseAndRetrySettings,
    QueueSettings,
    ObservabilitySettings,
    KubernetesSettings,
)


# pydantic collects fields from the last base to the first: the groups are listed in reverse,
# so that Settings.model_fields follows GROUPS.
class Settings(
    KubernetesSettings,
    ObservabilitySettings,
    QueueSettings,
    LeaseAndRetrySettings,
    CallbackSettings,
    StorageSettings,
    FetchSettings,
    SecuritySettings,
    ApiSettings,
    RedisSettings,
):
    """Every setting, flat: `settings.redis_url` is `DOWNLOADER_REDIS_URL`, the name users grep
    for. A Settings is each of its groups, so it goes wherever one group is asked for."""

    # Stated again, not only inherited: pydantic merges the bases' configs in base order, so
    # BaseSettings added as a last base (a common idiom) would bring back its own defaults, no
    # prefix and extra="forbid", and DOWNLOADER_* would silently stop being read.
    model_config = _GROUP_CONFIG


def load(config_file: str | os.PathLike[str] | None = None, **overrides: Any) -> Settings:
    """Settings from the environment over `config_file` (original format) over `overrides`."""
    values: dict[str, Any] = dict(overrides)
    if config_file is not None:
        values.update(config_values(read_config_file(Path(config_file))))
    # A variable replaces the file's value whole (pydantic-settings would merge two dicts).
    present = {name.upper() for name in os.environ}
    values = {k: v for k, v in values.items() if ENV_PREFIX + k.upper() not in present}
    for warning in unknown_variables(os.environ):
        log.warning("%s", warning)
    try:
        settings = Settings(**values)
    except pydantic.ValidationError as exc:
        raise ConfigurationError(_one_line(exc)) from exc
    except SettingsError as exc:  # a JSON field whose variable is not JSON
        raise ConfigurationError(_unparsable(exc)) from exc
    _check_parsed_later(settings)
    return settings


def known_variables() -> frozenset[str]:
    return frozenset(ENV_PREFIX + name.upper() for name in Settings.model_fields) | OTHER_VARIABLES


def unknown_variables(environ: Mapping[str, str]) -> list[str]:
    """A warning for each `DOWNLOADER_*` variable nothing reads, naming the closest real one."""
    known = known_variables()
    # Without the prefix every name shares, or every name would look close.
    suffixes = sorted(k.removeprefix(ENV_PREFIX) for k in known)
    warnings = []
    for name in sorted(environ):
        upper = name.upper()  # pydantic-settings matches names case-insensitively
        if not upper.startswith(ENV_PREFIX) or upper in known or _service_link(upper, environ[name]):
            continue
        close = difflib.get_close_matches(upper.removeprefix(ENV_PREFIX), suffixes, n=1, cutoff=0.6)
        hint = f"; did you mean {ENV_PREFIX}{close[0]}?" if close else " (no setting has a similar name)"
        warnings.append(f"{name} is not a setting and is ignored{hint}")
    return warnings


def _service_link(name: str, value: str) -> bool:
    if _SERVICE_LINK.search(name):
        return True
    return name.endswith("_PORT") and _SERVICE_LINK_URL.fullmatch(value) is not None


def _check_parsed_later(settings: Settings) -> None:
    """Parse now, for every command, the settings their users parse only when they start
    (`api` used to fail on them with a traceback from inside uvicorn's start-up)."""
    _check_sentinels(settings)
    _check_allowed_networks(settings)
    parsing.cpus(settings.worker_cpus, "DOWNLOADER_WORKER_CPUS")
    parsing.cpus(settings.notifier_cpus, "DOWNLOADER_NOTIFIER_CPUS")


# Each check asks only for the group it reads: a Settings is each of its groups.
def _check_sentinels(redis_settings: RedisSettings) -> None:
    parsing.sentinel_addresses(redis_settings.redis_sentinels)


def _check_allowed_networks(security: SecuritySettings) -> None:
    parsing.networks(security.allowed_networks)


def config_values(doc: dict[str, Any]) -> dict[str, Any]:
    """Map the original's config.json (reference 5.2) onto setting names."""
    out: dict[str, Any] = {}
    redis = _section(doc, "redis")
    if redis.get("addr"):
        out["redis_url"] = f"redis://{redis['addr']}/0"
    sentinels = redis.get("sentinel")
    if redis.get("master_name") and sentinels:
        # The original enables Sentinel only when both are set (reference 2.6).
        out["redis_master_name"] = redis["master_name"]
        out["redis_sentinels"] = ",".join(sentinels) if isinstance(sentinels, list) else str(sentinels)
    api = _section(doc, "api")
    if "heartbeat_path" in api:
        out["heartbeat_path"] = api["heartbeat_path"]
    out.update(_processor_values(_section(doc, "processor")))
    notifier = _section(doc, "notifier")
    if "concurrency" in notifier:
        out["notifier_concurrency"] = notifier["concurrency"]
    if "deletion_interval" in notifier:
        out["deletion_delay_seconds"] = (
            _number(notifier["deletion_interval"], "notifier.deletion_interval") * 60
        )
    if notifier.get("download_url") and "download_url" not in out:
        # config.json.sample put it here (bug 10.1.9); accept it rather than refuse to start.
        out["download_url"] = notifier["download_url"]
    backends = _section(doc, "backends")
    http = backends.get("http")
    if isinstance(http, dict) and "timeout" in http:
        out["callback_timeout_seconds"] = http["timeout"]
    kafka = backends.get("kafka")
    if isinstance(kafka, dict) and kafka:
        out["kafka_config"] = kafka
    sqs = backends.get("sqs")
    if isinstance(sqs, dict) and sqs.get("region"):
        out["sqs_region"] = sqs["region"]
    return out


def _processor_values(processor: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if processor.get("storage_dir"):
        out["tmp_dir"] = processor["storage_dir"]
        out["storage_root"] = processor["storage_dir"]
    storage = processor.get("filestorage")
    if isinstance(storage, dict):
        kind = storage.get("type", "filesystem")
        if kind not in ("filesystem", "s3"):
            raise ConfigurationError(f"Unknown filestorage type {kind}")
        out["storage_backend"] = kind
        if kind == "filesystem" and storage.get("rootdir"):
            out["storage_root"] = storage["rootdir"]
        if kind == "s3":
            out["s3_bucket"] = storage.get("bucket", "")
            out["s3_region"] = storage.get("region", "")
    if isinstance(processor.get("request_headers"), dict):
        out["default_request_headers"] = processor["request_headers"]
    interval = processor.get("stats_interval")
    if isinstance(interval, int | float) and interval > 0:
        out["stats_interval_seconds"] = interval / 1000
    if processor.get("download_url"):
        out["download_url"] = processor["download_url"]
    return out


def read_config_file(path: Path) -> dict[str, Any]:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigurationError(f"cannot read config file {path}: {exc.strerror}") from exc
    except ValueError as exc:
        raise ConfigurationError(f"config file {path} is not valid JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise ConfigurationError(f"config file {path} must hold a JSON object")
    return doc


def _section(doc: dict[str, Any], name: str) -> dict[str, Any]:
    value = doc.get(name) or {}
    if not isinstance(value, dict):
        raise ConfigurationError(f"config key {name!r} must be an object")
    return value


def _number(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigurationError(f"config key {name} must be a number")
    return float(value)


def _one_line(exc: pydantic.ValidationError) -> str:
    first = exc.errors()[0]
    message = first["msg"].removeprefix("Value error, ")
    more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
    if not first["loc"]:  # a check across fields: its message names them
        return f"invalid settings: {message}{more}"
    field, *inner = (str(part) for part in first["loc"])
    where = f" (key {'.'.join(inner)!r})" if inner else ""
    shown = _shown(field, first.get("input"))
    return f"invalid setting {ENV_PREFIX}{field.upper()}{where}: {message}{shown}{more}"


def _unparsable(exc: SettingsError) -> str:
    """pydantic-settings' error for a variable of a JSON field that does not parse."""
    found = re.search(r'field "(\w+)"', str(exc))
    if found is None:
        return f"invalid settings: {exc}"
    field = found.group(1)
    name = ENV_PREFIX + field.upper()
    value = next((v for k, v in os.environ.items() if k.upper() == name), None)
    why = f"not valid JSON ({exc.__cause__})" if isinstance(exc.__cause__, ValueError) else str(exc)
    return f"invalid setting {name}: {why}{_shown(field, value)}"


def _shown(field: str, value: object) -> str:
    if value is None or field in _SECRET_FIELDS:
        return ""
    if field == "redis_url" and isinstance(value, str):
        try:
            password = urllib.parse.urlsplit(value).password
        except ValueError:
            password = None
        if password:
            value = value.replace(password, "[redacted]")
    return f" (got {value!r})"
