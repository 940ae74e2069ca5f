"""Settings grouped by concern: each group documented and usable alone, `Settings` all of them,
flat, with the same `DOWNLOADER_*` variables as before the split."""

from __future__ import annotations

import ast
import os
from pathlib import Path

import pydantic
import pytest

from downloader.config import settings
from downloader.config.settings import (
    GROUPS,
    KubernetesSettings,
    LeaseAndRetrySettings,
    RedisSettings,
    Settings,
    SettingsGroup,
    StorageSettings,
)

#: Every variable Settings read before it was split into groups (captured from that code):
#: grouping moves declarations, it must not add, drop or rename a variable users set.
VARIABLES_BEFORE_GROUPS = frozenset(
    {
        "DOWNLOADER_ADOPTION_INTERVAL_SECONDS",
        "DOWNLOADER_ALLOWED_NETWORKS",
        "DOWNLOADER_ALLOW_PRIVATE_NETWORKS",
        "DOWNLOADER_API_KEYS",
        "DOWNLOADER_CALLBACK_BACKOFF_SECONDS",
        "DOWNLOADER_CALLBACK_MAX_ATTEMPTS",
        "DOWNLOADER_CALLBACK_SIGNING_KEYS",
        "DOWNLOADER_CALLBACK_TIMEOUT_SECONDS",
        "DOWNLOADER_CONNECT_TIMEOUT_SECONDS",
        "DOWNLOADER_CRASH_TOLERANCE",
        "DOWNLOADER_DEFAULT_REQUEST_HEADERS",
        "DOWNLOADER_DELETION_DELAY_SECONDS",
        "DOWNLOADER_DISK_CHECK_INTERVAL_SECONDS",
        "DOWNLOADER_DISK_HIGH_WATERMARK_PERCENT",
        "DOWNLOADER_DISK_LOW_WATERMARK_PERCENT",
        "DOWNLOADER_DOWNLOAD_TIMEOUT_SECONDS",
        "DOWNLOADER_DOWNLOAD_URL",
        "DOWNLOADER_HEARTBEAT_PATH",
        "DOWNLOADER_JOB_RETENTION_SECONDS",
        "DOWNLOADER_KAFKA_BOOTSTRAP_SERVERS",
        "DOWNLOADER_KAFKA_CONFIG",
        "DOWNLOADER_KAFKA_PASSWORD",
        "DOWNLOADER_KAFKA_USERNAME",
        "DOWNLOADER_KUBECONFIG",
        "DOWNLOADER_KUBE_CREATE_AGGREGATIONS",
        "DOWNLOADER_KUBE_NAMESPACE",
        "DOWNLOADER_LEASE_SECONDS",
        "DOWNLOADER_LOG_FORMAT",
        "DOWNLOADER_MAX_DOWNLOAD_BYTES",
        "DOWNLOADER_MAX_REDIRECTS",
        "DOWNLOADER_MAX_REQUEST_BYTES",
        "DOWNLOADER_MAX_RETRIES",
        "DOWNLOADER_METRICS_AGGREGATION_LABELS",
        "DOWNLOADER_METRICS_PORT",
        "DOWNLOADER_NOTIFIER_CONCURRENCY",
        "DOWNLOADER_NOTIFIER_SLOW_CONCURRENCY",
        "DOWNLOADER_OPERATOR_INTERVAL_SECONDS",
        "DOWNLOADER_OPERATOR_LIVENESS_PORT",
        "DOWNLOADER_POD_NAME",
        "DOWNLOADER_POLL_INTERVAL_SECONDS",
        "DOWNLOADER_RECOVERY_INTERVAL_SECONDS",
        "DOWNLOADER_REDIS_MASTER_NAME",
        "DOWNLOADER_REDIS_SENTINELS",
        "DOWNLOADER_REDIS_SENTINEL_PASSWORD",
        "DOWNLOADER_REDIS_URL",
        "DOWNLOADER_REDIS_WAIT_REPLICAS",
        "DOWNLOADER_REDIS_WAIT_TIMEOUT_MS",
        "DOWNLOADER_RETRY_BACKOFF_SECONDS",
        "DOWNLOADER_S3_BUCKET",
        "DOWNLOADER_S3_ENDPOINT_URL",
        "DOWNLOADER_S3_MULTIPART_THRESHOLD_BYTES",
        "DOWNLOADER_S3_REGION",
        "DOWNLOADER_SCAN_INTERVAL_SECONDS",
        "DOWNLOADER_SHUTDOWN_GRACE_SECONDS",
        "DOWNLOADER_SQS_ENDPOINT_URL",
        "DOWNLOADER_SQS_REGION",
        "DOWNLOADER_STATS_INTERVAL_SECONDS",
        "DOWNLOADER_STORAGE_BACKEND",
        "DOWNLOADER_STORAGE_ROOT",
        "DOWNLOADER_TMP_DIR",
        "DOWNLOADER_WORKER_CONCURRENCY",
        "DOWNLOADER_WORKER_ENV_CONFIGMAP",
        "DOWNLOADER_WORKER_ENV_SECRET",
        "DOWNLOADER_WORKER_HOST_NETWORK",
        "DOWNLOADER_WORKER_IMAGE",
        "DOWNLOADER_WORKER_IMAGE_PULL_POLICY",
        "DOWNLOADER_WORKER_METRICS_PORT",
        "DOWNLOADER_WORKER_NODE_SELECTOR",
        "DOWNLOADER_WORKER_RESOURCES",
        "DOWNLOADER_WORKER_SERVICE_ACCOUNT",
        "DOWNLOADER_WORKER_STORAGE_CLAIM",
        "DOWNLOADER_WORKER_TOLERATIONS",
    }
)
#: Worker pod settings added while the groups were made (issue 14), in KubernetesSettings.
VARIABLES_ADDED_WITH_GROUPS = frozenset(
    {
        "DOWNLOADER_WORKER_AFFINITY",
        "DOWNLOADER_WORKER_POD_ANNOTATIONS",
        "DOWNLOADER_WORKER_POD_SECURITY_CONTEXT",
        "DOWNLOADER_WORKER_CONTAINER_SECURITY_CONTEXT",
    }
)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.upper().startswith(settings.ENV_PREFIX):
            monkeypatch.delenv(name)


#: The groups, Settings made of them, and the base they share.
EVERY_CLASS: tuple[type[SettingsGroup], ...] = (*GROUPS, Settings, SettingsGroup)


def own_fields(group: type[SettingsGroup]) -> list[str]:
    return list(group.model_fields)


def variable(field: str) -> str:
    return settings.ENV_PREFIX + field.upper()


def test_no_variable_from_before_the_groups_is_lost() -> None:
    """Later settings may add names; none that users set before may stop being read."""
    expected = VARIABLES_BEFORE_GROUPS | VARIABLES_ADDED_WITH_GROUPS
    assert expected <= {variable(name) for name in Settings.model_fields}
    assert expected <= settings.known_variables() - settings.OTHER_VARIABLES
    assert {variable(name) for name in KubernetesSettings.model_fields} >= VARIABLES_ADDED_WITH_GROUPS


def test_every_field_belongs_to_exactly_one_group() -> None:
    assert SettingsGroup.model_fields == {}  # the base holds configuration, no setting
    owners: dict[str, list[str]] = {}
    for group in GROUPS:
        for name in own_fields(group):
            owners.setdefault(name, []).append(group.__name__)
    assert {name: groups for name, groups in owners.items() if len(groups) != 1} == {}
    assert set(owners) == set(Settings.model_fields)


def test_settings_is_every_group_and_nothing_else() -> None:
    assert all(issubclass(Settings, group) for group in GROUPS)
    # A group declared but left out of GROUPS (and so of Settings) would be read by nothing.
    declared = {cls for cls in SettingsGroup.__subclasses__() if cls.__module__ == settings.__name__}
    assert declared == set(GROUPS)
    assert set(Settings.__bases__) == set(GROUPS)


def test_fields_are_listed_group_by_group_in_reading_order() -> None:
    """Docs (the README's table) walk Settings.model_fields or GROUPS: both give one order."""
    assert list(Settings.model_fields) == [name for group in GROUPS for name in own_fields(group)]


def field_docstrings() -> dict[str, dict[str, str]]:
    """Class name -> field -> the string right below the field in settings.py ("" for none),
    as pydantic's `use_attribute_docstrings` would read it (too slow to turn on there)."""
    tree = ast.parse(Path(settings.__file__).read_text(encoding="utf-8"))
    found: dict[str, dict[str, str]] = {}
    for node in tree.body:
        if not isinstance(node, ast.ClassDef):
            continue
        fields = found.setdefault(node.name, {})
        for statement, following in zip(node.body, [*node.body[1:], None], strict=True):
            if isinstance(statement, ast.AnnAssign) and isinstance(statement.target, ast.Name):
                doc = ""
                if isinstance(following, ast.Expr) and isinstance(following.value, ast.Constant):
                    doc = str(following.value.value)
                fields[statement.target.id] = doc
    return found


def test_every_group_and_field_is_documented() -> None:
    for group in EVERY_CLASS:
        # Its own docstring, not one inherited from pydantic.
        assert (group.__dict__.get("__doc__") or "").strip(), f"{group.__name__} has no docstring"
    docs = field_docstrings()
    for group in GROUPS:
        assert set(docs[group.__name__]) == set(group.model_fields), group.__name__
        undocumented = [name for name, doc in docs[group.__name__].items() if not doc.strip()]
        assert undocumented == [], group.__name__


def test_every_group_reads_the_same_way_as_settings() -> None:
    for group in EVERY_CLASS:
        config = group.model_config
        assert (config.get("env_prefix"), config.get("extra"), config.get("frozen")) == (
            settings.ENV_PREFIX,
            "ignore",
            True,
        ), group.__name__


def test_a_group_alone_loads_its_fields_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOWNLOADER_REDIS_URL", "redis://10.0.0.9:6380/3")
    monkeypatch.setenv("DOWNLOADER_REDIS_WAIT_REPLICAS", "1")
    monkeypatch.setenv("DOWNLOADER_LEASE_SECONDS", "30")  # another group's: ignored, not refused
    redis_only = RedisSettings(redis_wait_replicas=2)  # the environment wins, as for Settings
    assert (redis_only.redis_url, redis_only.redis_wait_replicas) == ("redis://10.0.0.9:6380/3", 1)
    assert not hasattr(redis_only, "lease_seconds")
    with pytest.raises(pydantic.ValidationError):
        redis_only.redis_url = "redis://elsewhere:6379/0"
    # Derived values and checks live with their group and work there alone.
    assert LeaseAndRetrySettings().recovery_every == 5.0
    monkeypatch.setenv("DOWNLOADER_REDIS_URL", "redis://h:6379/zero")
    with pytest.raises(pydantic.ValidationError, match="the database number"):
        RedisSettings()
    monkeypatch.setenv("DOWNLOADER_DISK_LOW_WATERMARK_PERCENT", "99")
    with pytest.raises(pydantic.ValidationError, match="must not exceed"):
        StorageSettings()


def test_settings_go_wherever_a_group_is_asked_for(monkeypatch: pytest.MonkeyPatch) -> None:
    def sentinel_count(redis_settings: RedisSettings) -> int:
        return len([s for s in redis_settings.redis_sentinels.split(",") if s])

    monkeypatch.setenv("DOWNLOADER_REDIS_SENTINELS", "s1:26379,s2:26379")
    assert sentinel_count(settings.load()) == sentinel_count(RedisSettings()) == 2


def test_the_names_the_module_keeps_apart_are_fields() -> None:
    """The secrets never echoed, and the targets of the original's config.json, name fields
    of the groups (a field moved and renamed would otherwise leak or be dropped silently)."""
    assert settings._SECRET_FIELDS - set(Settings.model_fields) == set()
    every_key = {
        "redis": {"addr": "r:6379", "master_name": "m", "sentinel": ["s:26379"]},
        "api": {"heartbeat_path": "/hb"},
        "processor": {
            "storage_dir": "/d",
            "filestorage": {"type": "s3", "bucket": "b", "region": "r"},
            "request_headers": {},
            "stats_interval": 100,
            "download_url": "http://x/",
        },
        "notifier": {"concurrency": 2, "deletion_interval": 3},
        "backends": {"http": {"timeout": 4}, "kafka": {"a": 1}, "sqs": {"region": "q"}},
    }
    assert set(settings.config_values(every_key)) - set(Settings.model_fields) == set()
