"""Settings: environment over the original's config.json, one clear line for a bad value."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from downloader.config import settings
from downloader.errors import ConfigurationError
from downloader.fetching.diskcheck import DiskMonitor
from downloader.observability.stats import Stats

CONFIG = {
    "redis": {"addr": "10.0.0.1:6380"},
    "api": {"heartbeat_path": "/tmp/disable"},
    "processor": {
        "storage_dir": "/var/tmp/dl",
        "filestorage": {"type": "filesystem", "rootdir": "/srv/files"},
        "request_headers": {"User-Agent": "Downloader-Agent"},
        "stats_interval": 300,
        "download_url": "http://localhost/foo",
    },
    "notifier": {"concurrency": 3, "deletion_interval": 2, "stats_interval": 300},
    "backends": {
        "http": {"timeout": 7},
        "kafka": {"bootstrap.servers": "k:9092", "message.send.max.retries": 3},
        "sqs": {"region": "eu-central-1"},
    },
}


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("DOWNLOADER_"):
            monkeypatch.delenv(name)


def write(tmp_path: Path, doc: object) -> Path:
    path = tmp_path / "config.json"
    path.write_text(json.dumps(doc))
    return path


def test_the_originals_config_json_maps_onto_settings(tmp_path: Path) -> None:
    s = settings.load(write(tmp_path, CONFIG))
    assert s.redis_url == "redis://10.0.0.1:6380/0"
    assert s.heartbeat_path == "/tmp/disable"
    assert s.tmp_dir == Path("/var/tmp/dl") and s.storage_root == Path("/srv/files")
    assert s.default_request_headers == {"User-Agent": "Downloader-Agent"}
    assert s.stats_interval_seconds == 0.3
    assert s.download_url == "http://localhost/foo"
    assert s.notifier_concurrency == 3 and s.deletion_delay_seconds == 120
    assert s.callback_timeout_seconds == 7
    assert s.kafka_config == {"bootstrap.servers": "k:9092", "message.send.max.retries": 3}
    assert s.sqs_region == "eu-central-1"


def test_sentinel_needs_both_the_master_name_and_sentinels_as_in_the_original(tmp_path: Path) -> None:
    both = {"redis": {"addr": "r:6379", "master_name": "mymaster", "sentinel": ["s1:26379", "s2:26379"]}}
    s = settings.load(write(tmp_path, both))
    assert (s.redis_master_name, s.redis_sentinels) == ("mymaster", "s1:26379,s2:26379")
    only_name = {"redis": {"addr": "r:6379", "master_name": "mymaster", "sentinel": []}}
    s = settings.load(write(tmp_path, only_name))
    assert (s.redis_master_name, s.redis_sentinels) == ("", "")


def test_the_environment_wins_over_the_config_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOWNLOADER_REDIS_URL", "redis://127.0.0.1:1/2")
    monkeypatch.setenv("DOWNLOADER_DEFAULT_REQUEST_HEADERS", '{"Accept":"*/*"}')
    s = settings.load(write(tmp_path, CONFIG))
    assert s.redis_url == "redis://127.0.0.1:1/2"
    assert s.default_request_headers == {"Accept": "*/*"}


def test_the_samples_misplaced_download_url_is_accepted(tmp_path: Path) -> None:
    doc = {"notifier": {"download_url": "http://cdn/x", "concurrency": 1, "deletion_interval": 1}}
    assert settings.load(write(tmp_path, doc)).download_url == "http://cdn/x"


@pytest.mark.parametrize(
    "env,message",
    [
        ({"DOWNLOADER_WORKER_CONCURRENCY": "zero"}, "DOWNLOADER_WORKER_CONCURRENCY"),
        ({"DOWNLOADER_STORAGE_BACKEND": "ftp"}, "DOWNLOADER_STORAGE_BACKEND"),
        ({"DOWNLOADER_CALLBACK_MAX_ATTEMPTS": "0"}, "DOWNLOADER_CALLBACK_MAX_ATTEMPTS"),
        ({"DOWNLOADER_DISK_LOW_WATERMARK_PERCENT": "99"}, "DOWNLOADER_DISK_LOW_WATERMARK_PERCENT"),
        # Not JSON: pydantic-settings raised its own error, a 48-line traceback.
        (
            {"DOWNLOADER_DEFAULT_REQUEST_HEADERS": "{bad"},
            "DOWNLOADER_DEFAULT_REQUEST_HEADERS: not valid JSON",
        ),
        ({"DOWNLOADER_KAFKA_CONFIG": "{bad"}, "DOWNLOADER_KAFKA_CONFIG: not valid JSON"),
        ({"DOWNLOADER_WORKER_RESOURCES": "[1,"}, "DOWNLOADER_WORKER_RESOURCES: not valid JSON"),
        (
            {"DOWNLOADER_DEFAULT_REQUEST_HEADERS": '{"X-A": 1}'},
            "DOWNLOADER_DEFAULT_REQUEST_HEADERS (key 'X-A')",
        ),
        # redis-py only parsed these when the first client connected.
        ({"DOWNLOADER_REDIS_URL": "notaurl"}, "DOWNLOADER_REDIS_URL: not a Redis URL"),
        ({"DOWNLOADER_REDIS_URL": "redis://h:sixthousand/0"}, "DOWNLOADER_REDIS_URL: not a Redis URL"),
        ({"DOWNLOADER_REDIS_URL": "redis://h:6379/zero"}, "DOWNLOADER_REDIS_URL: the database number"),
        # Parsed by their users at start-up, inside uvicorn's for `api` (a traceback).
        ({"DOWNLOADER_REDIS_SENTINELS": "s1:port"}, "DOWNLOADER_REDIS_SENTINELS"),
        ({"DOWNLOADER_ALLOWED_NETWORKS": "10.0.0.0/99"}, "DOWNLOADER_ALLOWED_NETWORKS"),
        ({"DOWNLOADER_WORKER_CPUS": "one"}, "DOWNLOADER_WORKER_CPUS='one': 'one' is not a CPU number"),
        ({"DOWNLOADER_WORKER_CPUS": "3-1"}, "DOWNLOADER_WORKER_CPUS='3-1': bad range '3-1'"),
        ({"DOWNLOADER_NOTIFIER_CPUS": "1-"}, "DOWNLOADER_NOTIFIER_CPUS='1-': '1-' is not a CPU number"),
    ],
)
def test_a_bad_setting_is_one_line_naming_it(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], message: str
) -> None:
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(ConfigurationError) as info:
        settings.load()
    assert message in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize(
    "doc,message",
    [
        ([1, 2], "must hold a JSON object"),
        ({"processor": {"filestorage": {"type": "gcs"}}}, "Unknown filestorage type gcs"),
        ({"notifier": {"deletion_interval": 0}}, "DOWNLOADER_DELETION_DELAY_SECONDS"),
    ],
)
def test_bad_config_files_are_refused(tmp_path: Path, doc: object, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        settings.load(write(tmp_path, doc))


def test_unreadable_config_files_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="cannot read config file"):
        settings.load(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(ConfigurationError, match="not valid JSON"):
        settings.load(tmp_path / "bad.json")


def test_a_bad_redis_url_does_not_show_its_password(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOWNLOADER_REDIS_URL", "redis://:hunter2-secret@h:port/0")
    with pytest.raises(ConfigurationError) as info:
        settings.load()
    assert "hunter2-secret" not in str(info.value) and "[redacted]" in str(info.value)


def test_a_bad_secret_is_named_but_not_shown(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOWNLOADER_KAFKA_CONFIG", '{"sasl.password": ["hunter2-secret"]}')
    with pytest.raises(ConfigurationError) as info:
        settings.load()
    assert "DOWNLOADER_KAFKA_CONFIG" in str(info.value) and "hunter2-secret" not in str(info.value)


# A typo is built, not written: tests/unit/test_settings.py is itself scanned for names below.
P = settings.ENV_PREFIX
LEASE_TYPO = P + "LEASE_SECOND"


def test_a_variable_no_setting_reads_is_a_warning_naming_the_closest_one(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv(LEASE_TYPO, "5")
    monkeypatch.setenv(settings.ENV_PREFIX + "XYZZY", "1")
    with caplog.at_level("WARNING", logger="downloader.config.settings"):
        loaded = settings.load()
    assert loaded.lease_seconds == 60  # the typo did nothing, but now it says so
    assert [r.getMessage() for r in caplog.records] == [
        f"{LEASE_TYPO} is not a setting and is ignored; did you mean DOWNLOADER_LEASE_SECONDS?",
        f"{settings.ENV_PREFIX}XYZZY is not a setting and is ignored (no setting has a similar name)",
    ]


def test_variables_read_elsewhere_are_no_typos() -> None:
    environ = {
        "DOWNLOADER_LOG_LEVEL": "DEBUG",  # the CLI, before the settings load
        "DOWNLOADER_TEST_TIME": "1",  # the original's switch
        "DOWNLOADER_API_KEY": "token",  # `enqueue --api`
        "DOWNLOADER_HELM_CACHE": "/tmp/h",  # the test tooling
        "downloader_lease_seconds": "5",  # names are case-insensitive
        # What Kubernetes gives every pod for the Services of a release named "downloader"
        # (built, not written: the scan below would read them as names of ours).
        P + "API_SERVICE_HOST": "10.96.0.7",
        P + "API_SERVICE_PORT": "80",
        P + "API_SERVICE_PORT_HTTP": "80",
        P + "API_PORT": "tcp://10.96.0.7:80",
        P + "API_PORT_80_TCP": "tcp://10.96.0.7:80",
        P + "API_PORT_80_TCP_PROTO": "tcp",
        P + "API_PORT_80_TCP_PORT": "80",
        P + "API_PORT_80_TCP_ADDR": "10.96.0.7",
        P + "REDIS_PORT": "tcp://10.96.0.8:6379",
    }
    assert settings.unknown_variables(environ) == []
    # A name Kubernetes could have given, with a value it would not: a typo after all.
    assert settings.unknown_variables({settings.ENV_PREFIX + "METRIC_PORT": "9100"}) == [
        f"{settings.ENV_PREFIX}METRIC_PORT is not a setting and is ignored; did you mean DOWNLOADER_METRICS_PORT?"
    ]


#: Directories whose files are not ours (environments, caches, build output).
SKIPPED_DIRS = {".git", ".venv", "build", "node_modules", "__pycache__", ".hypothesis", ".pytest_cache"}


def test_every_downloader_variable_the_repository_names_is_read() -> None:
    """The chart, the operator, the docs and the tools name only variables something reads
    (the chart once put the signing key in a variable one letter short of the setting's, which
    nothing read: callbacks went unsigned). One read outside the settings goes in
    OTHER_VARIABLES."""
    root = Path(__file__).resolve().parents[2]
    pattern = re.compile(r"DOWNLOADER_[A-Z0-9_]*[A-Z0-9]")
    known = settings.known_variables()
    unknown: dict[str, str] = {}
    for directory, dirs, names in os.walk(root):
        dirs[:] = [d for d in dirs if d not in SKIPPED_DIRS and not d.endswith(".egg-info")]
        for name in names:
            path = Path(directory) / name
            try:
                text = path.read_text(encoding="utf-8")
            except (UnicodeDecodeError, OSError):
                continue  # images and other binaries
            for found in pattern.findall(text):
                if found not in known:
                    unknown.setdefault(found, str(path.relative_to(root)))
    assert unknown == {}, "read by something other than Settings? add it to settings.OTHER_VARIABLES"


def test_test_time_shrinks_backoff_units(monkeypatch: pytest.MonkeyPatch) -> None:
    assert settings.load().retry_backoff_seconds == 120
    monkeypatch.setenv("DOWNLOADER_TEST_TIME", "1")
    s = settings.load()
    assert s.retry_backoff_seconds == 0.2 and s.callback_backoff_seconds == 0.2


# --- disk monitor (the original's diskcheck tests: high 90 / low 60) ---------------------


def test_an_empty_disk_stays_healthy() -> None:
    monitor = DiskMonitor(high_percent=90, low_percent=60)
    assert [monitor.observe(0) for _ in range(3)] == [None, None, None]


def test_a_full_disk_turns_sick_once() -> None:
    monitor = DiskMonitor(high_percent=90, low_percent=60)
    assert [monitor.observe(100) for _ in range(3)] == [False, None, None]


def test_a_flaky_disk_recovers_only_below_the_low_watermark() -> None:
    monitor = DiskMonitor(high_percent=90, low_percent=60)
    assert [monitor.observe(p) for p in (95, 70, 60, 91)] == [False, None, True, False]


def test_stats_track_high_water_marks() -> None:
    stats = Stats()
    stats.gauge_add("workers", 2, "maxWorkers")
    stats.gauge_add("workers", -1, "maxWorkers")
    stats.incr("download.response.200")
    assert stats.snapshot() == {"alive": 1, "workers": 1, "maxWorkers": 2, "download.response.200": 1}
    assert json.loads(stats.to_json()) == stats.snapshot()
    assert list(json.loads(stats.to_json())) == sorted(stats.snapshot())


@pytest.mark.parametrize(
    "text,cpus",
    [("", set()), ("1", {1}), ("0,2-3", {0, 2, 3}), (" 4 , 4-5 ,", {4, 5})],
)
def test_worker_cpus_are_listed_as_taskset_lists_them(text: str, cpus: set[int]) -> None:
    from downloader.config import parsing

    assert parsing.cpus(text, "DOWNLOADER_WORKER_CPUS") == cpus
