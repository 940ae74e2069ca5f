"""downloader.observability.logs: JSON lines with the structured fields, text lines, and secrets redacted
from messages, arguments, extra fields and exception text (settings and environment)."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator

import pytest

from downloader.config.settings import Settings
from downloader.observability import logs

RFC3339_UTC = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    """configure() replaces the root handler; give the test runner its own back."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def lines(err: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in err.splitlines() if line.strip()]


def test_json_lines_carry_time_level_logger_message_and_fields(capsys: pytest.CaptureFixture[str]) -> None:
    logs.configure("INFO", "json")
    extra = {"event": "download_succeeded", "job_id": "J1", "aggr_id": "A1", "duration": 0.1234567}
    logging.getLogger("downloader.worker").info("job %s done", "J1", extra={**extra, "response_code": 200})
    logging.getLogger("downloader.worker").debug("not at INFO")
    [line] = lines(capsys.readouterr().err)
    assert RFC3339_UTC.match(str(line["time"]))
    assert line["level"] == "INFO" and line["logger"] == "downloader.worker"
    assert line["message"] == "job J1 done"
    assert line["event"] == "download_succeeded" and line["job_id"] == "J1" and line["aggr_id"] == "A1"
    assert line["duration"] == 0.123457 and line["response_code"] == 200


def test_fields_not_given_are_left_out(capsys: pytest.CaptureFixture[str]) -> None:
    logs.configure("INFO", "json")
    logging.getLogger("x").warning("plain", extra={"duration": None})
    [line] = lines(capsys.readouterr().err)
    assert set(line) == {"time", "level", "logger", "message"}


def test_exceptions_are_one_json_line_with_their_traceback(capsys: pytest.CaptureFixture[str]) -> None:
    logs.configure("INFO", "json")
    try:
        raise ValueError("boom")
    except ValueError:
        logging.getLogger("x").exception("it failed")
    [line] = lines(capsys.readouterr().err)
    assert line["level"] == "ERROR" and "ValueError: boom" in str(line["exception"])
    assert "Traceback" in str(line["exception"])


def test_text_format_is_readable_lines(capsys: pytest.CaptureFixture[str]) -> None:
    logs.configure("DEBUG", "text")
    logging.getLogger("downloader.notifier").debug("hello %d", 3, extra={"event": "x"})
    err = capsys.readouterr().err
    assert re.match(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} DEBUG downloader.notifier: hello 3\n$", err)


def test_uvicorn_records_reach_our_handler(capsys: pytest.CaptureFixture[str]) -> None:
    noisy = logging.getLogger("uvicorn.error")
    noisy.addHandler(logging.StreamHandler())
    noisy.propagate = False
    logs.configure("INFO", "json")
    noisy.warning("Invalid HTTP request received.")
    [line] = lines(capsys.readouterr().err)
    assert line["logger"] == "uvicorn.error"


def test_environment_secrets_are_redacted_everywhere(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DOWNLOADER_CALLBACK_SIGNING_KEYS", "old-key-1234, new-key-5678")
    monkeypatch.setenv("DOWNLOADER_API_KEYS", "tok-aaaa1111=shop-|img-,tok-bbbb2222")
    monkeypatch.setenv("DOWNLOADER_REDIS_URL", "redis://user:p%40ss-word9@127.0.0.1:6379/0")
    monkeypatch.setenv("DOWNLOADER_KAFKA_PASSWORD", "kafka-secret-77")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "aws-secret-99")
    logs.configure("INFO", "json")
    log = logging.getLogger("x")
    log.info("keys %s and %s", "old-key-1234", "new-key-5678", extra={"job_id": "tok-aaaa1111"})
    log.info("url redis://user:p@ss-word9@host and p%40ss-word9; kafka-secret-77 aws-secret-99")
    try:
        raise RuntimeError("token tok-bbbb2222 refused")
    except RuntimeError:
        log.exception("failed")
    out = capsys.readouterr().err
    for secret in ("old-key-1234", "new-key-5678", "tok-aaaa1111", "tok-bbbb2222", "p@ss-word9",
                   "p%40ss-word9", "kafka-secret-77", "aws-secret-99"):  # fmt: skip
        assert secret not in out
    first, second, third = lines(out)
    assert first["message"] == "keys [redacted] and [redacted]" and first["job_id"] == "[redacted]"
    assert "user:[redacted]@host" in str(second["message"])
    assert "token [redacted] refused" in str(third["exception"])


def test_settings_secrets_include_config_file_values() -> None:
    settings = Settings(
        api_keys="tok-one1=shop-|img-, tok-two2",
        callback_signing_keys="k-aaaa,k-bbbb",
        redis_url="redis://:pw%2Fslash1@r:6379/0",
        kafka_password="kp-1234",
        redis_sentinel_password="sp-1234",
        kafka_config={"sasl.password": "sasl-pw-1", "ssl.key.password": "key-pw-1", "acks": "all"},
    )
    found = logs.settings_secrets(settings)
    assert {"tok-one1", "tok-two2", "k-aaaa", "k-bbbb", "pw%2Fslash1", "pw/slash1", "kp-1234",
            "sp-1234", "sasl-pw-1", "key-pw-1"} <= found  # fmt: skip
    assert "shop-" not in found and "all" not in found


def test_protect_redacts_loaded_settings(capsys: pytest.CaptureFixture[str]) -> None:
    logs.configure("INFO", "text")
    logs.protect(Settings(kafka_password="from-config-file-1"))
    logging.getLogger("x").warning("password=%s", "from-config-file-1")
    assert capsys.readouterr().err.endswith("x: password=[redacted]\n")


def test_short_values_are_not_treated_as_secrets() -> None:
    redactor = logs.Redactor(["abc", "long-secret"])
    assert redactor.redact("abc long-secret") == "abc [redacted]"


def test_a_secret_containing_another_is_redacted_whole() -> None:
    redactor = logs.Redactor(["secret-1", "secret-1-longer"])
    assert redactor.redact("secret-1-longer/secret-1") == "[redacted]/[redacted]"
