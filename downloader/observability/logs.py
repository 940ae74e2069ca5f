"""Logging of every process: readable text lines, or one JSON object per line for log pipelines.

`configure` puts one stderr handler on the root logger (uvicorn's and the libraries' loggers
propagate to it). Its `Redactor` filter replaces secret values with "[redacted]" in the
message, the exception text and the structured fields (`extra={...}`) of every record.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import re
import sys
import urllib.parse
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from downloader.config.settings import Settings

REDACTED = "[redacted]"
#: Structured fields a log call may pass with `extra=`; JSON lines carry them when present.
FIELDS = ("job_id", "aggr_id", "event", "duration", "response_code", "attempt")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
#: Shorter values protect nothing, and replacing them everywhere would garble every line.
MIN_SECRET_LENGTH = 4
#: Variables holding secrets, read before the settings load (logging starts first).
SECRET_VARIABLES = (
    "DOWNLOADER_CALLBACK_SIGNING_KEYS",
    "DOWNLOADER_API_KEYS",
    "DOWNLOADER_API_KEY",  # the client token of `downloader enqueue --api`
    "DOWNLOADER_KAFKA_PASSWORD",
    "DOWNLOADER_REDIS_SENTINEL_PASSWORD",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
)
#: librdkafka settings whose values are secrets (sasl.password, ssl.key.password, ...).
_SECRET_KEY_WORDS = ("password", "secret")
#: Attributes every LogRecord has; anything else on a record came from `extra=`.
_RECORD_ATTRIBUTES = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}


class Redactor(logging.Filter):
    """Replaces every known secret value in a record; never drops a record."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        self._secrets: set[str] = set()
        self._pattern: re.Pattern[str] | None = None
        self.add(secrets)

    def add(self, secrets: Iterable[str]) -> None:
        self._secrets.update(s for s in secrets if len(s) >= MIN_SECRET_LENGTH)
        # Longest first: a secret containing another is replaced whole.
        ordered = sorted(self._secrets, key=len, reverse=True)
        self._pattern = re.compile("|".join(map(re.escape, ordered))) if ordered else None

    def redact(self, text: str) -> str:
        return text if self._pattern is None else self._pattern.sub(REDACTED, text)

    def filter(self, record: logging.LogRecord) -> bool:
        if self._pattern is None:
            return True
        record.msg = self.redact(record.getMessage())
        record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self.redact(record.exc_text)
        if record.stack_info:
            record.stack_info = self.redact(record.stack_info)
        for name, value in list(vars(record).items()):
            if name not in _RECORD_ATTRIBUTES and isinstance(value, str):
                setattr(record, name, self.redact(value))
        return True


class JsonFormatter(logging.Formatter):
    """time (RFC 3339, UTC), level, logger, message, the structured fields, exception."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": _rfc3339(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                line[name] = round(value, 6) if name == "duration" else value
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            line["exception"] = record.exc_text
        if record.stack_info:
            line["stack"] = record.stack_info
        return json.dumps(line, ensure_ascii=False, default=str)


def _rfc3339(timestamp: float) -> str:
    moment = datetime.datetime.fromtimestamp(timestamp, datetime.UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


_redactor = Redactor()


def configure(settings_or_level: Settings | str | int = "INFO", fmt: str | None = None) -> None:
    """Log to stderr at a level, as `fmt` ("json" or "text"), with secrets redacted.

    Given `Settings`, their format and secrets are used and the level is
    DOWNLOADER_LOG_LEVEL's. The secrets of the environment are always redacted.
    """
    if isinstance(settings_or_level, str | int):
        level: str | int = settings_or_level
    else:
        level = os.environ.get("DOWNLOADER_LOG_LEVEL", "INFO")
        fmt = fmt or settings_or_level.log_format
        protect(settings_or_level)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    handler.addFilter(_redactor)
    _redactor.add(environment_secrets(os.environ))
    root = logging.getLogger()
    for old in root.handlers[:]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(_level(level))
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        # Ours win over whatever uvicorn set up: its records reach the root handler.
        logging.getLogger(name).handlers.clear()
        logging.getLogger(name).propagate = True


def protect(settings: Settings) -> None:
    """Redact the secrets of loaded settings too (some come from a config file)."""
    _redactor.add(settings_secrets(settings))


def add_secrets(values: Iterable[str]) -> None:
    """Redact these values too (a token given on the command line)."""
    _redactor.add(values)


def _level(level: str | int) -> int:
    if isinstance(level, int):
        return level
    value = logging.getLevelName(level.strip().upper())
    return value if isinstance(value, int) else logging.INFO


def environment_secrets(environ: Any) -> set[str]:
    found: set[str] = set()
    for name in SECRET_VARIABLES:
        found |= _split_secret(name, environ.get(name, ""))
    found |= url_secrets(environ.get("DOWNLOADER_REDIS_URL", ""))
    return found


def settings_secrets(settings: Settings) -> set[str]:
    found = _split_secret("DOWNLOADER_CALLBACK_SIGNING_KEYS", settings.callback_signing_keys)
    found |= _split_secret("DOWNLOADER_API_KEYS", settings.api_keys)
    found |= {settings.kafka_password, settings.redis_sentinel_password}
    found |= url_secrets(settings.redis_url)
    for key, value in settings.kafka_config.items():
        if any(word in key.lower() for word in _SECRET_KEY_WORDS):
            found.add(str(value))
    return {s for s in found if s}


def _split_secret(name: str, value: str) -> set[str]:
    """The secret values of one setting: each comma-separated key, each API token."""
    value = value.strip()
    if not value:
        return set()
    if name == "DOWNLOADER_CALLBACK_SIGNING_KEYS":
        return {value} | {k.strip() for k in value.split(",") if k.strip()}
    if name == "DOWNLOADER_API_KEYS":
        # `token=prefix1|prefix2`: the token is the secret, the prefixes are not.
        return {value} | {e.partition("=")[0].strip() for e in value.split(",") if e.strip()}
    return {value}


def url_secrets(url: str) -> set[str]:
    """The password of a URL, as written and decoded (`%40` and `@` both)."""
    try:
        password = urllib.parse.urlsplit(url).password
    except ValueError:
        return set()
    if not password:
        return set()
    return {password, urllib.parse.unquote(password)}
