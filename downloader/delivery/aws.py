"""AWS backends: S3 file storage (configured bucket and per-job buckets) and SQS callbacks.

boto3 and botocore errors never leave this module: they become StorageError or
NotificationError naming the bucket/key or queue and the AWS error code. `s3_metadata` turns a
job's `extra` into S3 user metadata that S3 accepts (ASCII, within its 2 KB limit).
"""

from __future__ import annotations

import collections
import json
import math
import re
import threading
import urllib.parse
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import boto3
import boto3.exceptions
import boto3.s3.transfer
import boto3.session
import botocore.config
import botocore.exceptions

from downloader.errors import NotificationError, StorageError, UnknownDestination

if TYPE_CHECKING:
    from downloader.config.settings import Settings
    from downloader.delivery.notifying import Message

#: boto3 sessions and clients are used from many threads, but creating them is not thread-safe.
_CLIENT_CREATION = threading.Lock()

#: What boto3 raises: AWS answers (ClientError is no BotoCoreError), transport and transfer errors.
_AWS_ERRORS = (
    botocore.exceptions.BotoCoreError,
    botocore.exceptions.ClientError,
    boto3.exceptions.Boto3Error,
)

# --- S3 user metadata from a job's `extra` ---------------------------------------------

#: S3 limits user metadata to 2 KB: the UTF-8 bytes of every key and value, summed.
METADATA_LIMIT_BYTES = 2048

#: The key a non-object `extra` is stored under.
EXTRA_KEY = "extra"

#: Metadata keys travel as `x-amz-meta-<key>` HTTP headers, so they must be header tokens.
_HEADER_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")

#: Characters a metadata value keeps as they are: printable ASCII, except `%`, which
#: would make percent-encoded values ambiguous.
_PLAIN_VALUE_CHARS = "".join(chr(c) for c in range(0x20, 0x7F) if chr(c) != "%")


def s3_metadata(extra: str) -> dict[str, str]:
    """The job's `extra` as S3 user metadata (original 3.9, made lenient).

    A JSON object gives one entry per key: strings as-is, numbers (not booleans) truncated to
    integers, other values dropped. Any other non-empty `extra` (text, array, invalid JSON) is
    kept whole under the key `extra` instead of failing the job as the original did.

    What S3 would refuse is adapted, not sent: keys are lower-cased (S3 returns them so) and
    keys that are not HTTP header tokens are dropped, the first of keys equal but for case
    wins; values with characters outside printable ASCII are percent-encoded as UTF-8
    (`urllib.parse.unquote` restores them; `%` is then encoded too, plain ASCII values are
    unchanged). Entries beyond the 2 KB limit are dropped, in order; a lone `extra` value is
    truncated to fit instead.
    """
    if not extra:
        return {}
    decoded = _json_object(extra)
    if decoded is None:
        return {EXTRA_KEY: _truncated_value(extra, METADATA_LIMIT_BYTES - len(EXTRA_KEY))}
    return _within_limit(_entries(decoded))


def _json_object(text: str) -> dict[str, Any] | None:
    try:
        # NaN and Infinity are not JSON (the original's parser refuses them): not an object.
        value = json.loads(text, parse_constant=_refuse_constant)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _entries(decoded: Mapping[str, Any]) -> list[tuple[str, str]]:
    entries: list[tuple[str, str]] = []
    seen: set[str] = set()
    for raw_key, raw_value in decoded.items():
        key = raw_key.lower()
        value = _scalar_text(raw_value)
        if value is None or not _HEADER_TOKEN.fullmatch(key) or key in seen:
            continue
        seen.add(key)
        entries.append((key, _metadata_value(value)))
    return entries


def _scalar_text(value: Any) -> str | None:
    """Strings as they are, numbers truncated to integers; anything else has no text."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float) and math.isfinite(value):
        return str(math.trunc(value))
    return None


def _metadata_value(value: str) -> str:
    if value.isascii() and value.isprintable():
        return value
    # "replace": a lone surrogate (from a JSON \ud800 escape) has no UTF-8 form.
    return urllib.parse.quote(value, safe=_PLAIN_VALUE_CHARS, errors="replace")


def _within_limit(entries: list[tuple[str, str]]) -> dict[str, str]:
    kept: dict[str, str] = {}
    room = METADATA_LIMIT_BYTES
    for key, value in entries:
        size = len(key) + len(value)  # both ASCII by now: one byte a character
        if size <= room:
            kept[key] = value
            room -= size
    return kept


def _truncated_value(text: str, limit: int) -> str:
    """`text` as a metadata value of at most `limit` characters, cut between characters so
    that an encoded one is never split."""
    value = _metadata_value(text)
    if len(value) <= limit:
        return value
    pieces: list[str] = []
    used = 0
    for char in text:
        piece = _metadata_value(char)
        used += len(piece)
        if used > limit:
            break
        pieces.append(piece)
    return "".join(pieces)


# --- S3 storage ------------------------------------------------------------------------


class S3Storage:
    """FileStorage in one S3 bucket (or an S3-compatible store at `endpoint_url`).

    Files at least `multipart_threshold` bytes go up in parts of that size (boto3's managed
    transfer). The temporary file is left where it is: the worker removes it.
    """

    def __init__(
        self, bucket: str, region: str, endpoint_url: str = "", multipart_threshold: int = 8 << 20
    ) -> None:
        self.bucket = bucket
        self.region = region
        self.endpoint_url = endpoint_url
        self.transfer_config = boto3.s3.transfer.TransferConfig(
            multipart_threshold=multipart_threshold,
            multipart_chunksize=multipart_threshold,
            # Workers upload many files at once already; a few parts each keep the pool shared.
            max_concurrency=4,
        )
        self._client: Any = None
        self._client_lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: Settings) -> S3Storage:
        return cls(
            settings.s3_bucket,
            settings.s3_region,
            settings.s3_endpoint_url,
            settings.s3_multipart_threshold_bytes,
        )

    @property
    def client(self) -> Any:
        with self._client_lock:
            if self._client is None:
                self._client = _client("s3", self.region, self.endpoint_url, read_timeout=60.0)
            return self._client

    def store(
        self, tmp_path: Path, key: str, *, content_type: str = "", metadata: Mapping[str, str] | None = None
    ) -> None:
        extra_args: dict[str, Any] = {}
        if content_type:
            extra_args["ContentType"] = content_type
        if metadata:
            extra_args["Metadata"] = dict(metadata)
        try:
            self.client.upload_file(
                str(tmp_path), self.bucket, key, ExtraArgs=extra_args, Config=self.transfer_config
            )
        except (*_AWS_ERRORS, OSError) as exc:
            raise StorageError(f"uploading s3://{self.bucket}/{key}: {_describe(exc)}") from exc

    def delete(self, key: str) -> None:
        """S3 answers a missing key with success, which is what the protocol wants."""
        try:
            self.client.delete_object(Bucket=self.bucket, Key=key)
        except _AWS_ERRORS as exc:
            raise StorageError(f"deleting s3://{self.bucket}/{key}: {_describe(exc)}") from exc

    def check_writable(self) -> None:
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except _AWS_ERRORS as exc:
            why = _describe(exc)
            if _error_code(exc) in ("404", "NoSuchBucket"):
                why = "the bucket does not exist"
            raise StorageError(f"Error verifying S3 bucket {self.bucket!r} is usable: {why}") from exc


class S3Storages:
    """The S3Storage of each per-job (bucket, region), kept for reuse: the least recently
    used of more than `capacity` is forgotten. All share the configured endpoint."""

    def __init__(
        self, endpoint_url: str = "", multipart_threshold: int = 8 << 20, capacity: int = 64
    ) -> None:
        self.endpoint_url = endpoint_url
        self.multipart_threshold = multipart_threshold
        self.capacity = capacity
        self._storages: collections.OrderedDict[tuple[str, str], S3Storage] = collections.OrderedDict()
        self._lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: Settings) -> S3Storages:
        return cls(settings.s3_endpoint_url, settings.s3_multipart_threshold_bytes)

    def get(self, bucket: str, region: str) -> S3Storage:
        with self._lock:
            key = (bucket, region)
            storage = self._storages.get(key)
            if storage is None:
                storage = S3Storage(bucket, region, self.endpoint_url, self.multipart_threshold)
                self._storages[key] = storage
                if len(self._storages) > self.capacity:
                    # Not closed: another thread may still be uploading with it.
                    self._storages.popitem(last=False)
            else:
                self._storages.move_to_end(key)
            return storage


# --- SQS callbacks ---------------------------------------------------------------------

#: SQS accepts at most 10 message attributes.
MAX_MESSAGE_ATTRIBUTES = 10

DEFAULT_SQS_REGION = "us-east-1"

_SQS_HOSTS = (
    # sqs.<region>.amazonaws.com, also -fips, China, and VPC endpoints (vpce-<id>.sqs.<region>.vpce…)
    re.compile(r"(?:^|\.)sqs(?:-fips)?\.([a-z0-9-]+)\.(?:vpce\.)?amazonaws\.com(?:\.cn)?$"),
    # the legacy <region>.queue.amazonaws.com
    re.compile(r"^([a-z0-9-]+)\.queue\.amazonaws\.com(?:\.cn)?$"),
)

#: Attribute names: letters, digits, `_`, `-`, `.`; no leading, trailing or doubled `.`.
_ATTRIBUTE_NAME = re.compile(r"[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]+)*")

_MISSING_QUEUE_CODES = frozenset({"AWS.SimpleQueueService.NonExistentQueue", "QueueDoesNotExist"})


def queue_region(queue_url: str) -> str:
    """The region in an AWS queue URL's host, or "" for other hosts (local or compatible services)."""
    host = (urllib.parse.urlsplit(queue_url).hostname or "").lower()
    for pattern in _SQS_HOSTS:
        match = pattern.search(host)
        if match:
            return match.group(1)
    return ""


def message_attributes(headers: Mapping[str, str]) -> dict[str, dict[str, str]]:
    """Headers as String message attributes: the first 10 that SQS accepts (empty names or
    values, and names it would refuse, are skipped rather than failing the callback)."""
    attributes: dict[str, dict[str, str]] = {}
    for name, value in headers.items():
        if len(attributes) == MAX_MESSAGE_ATTRIBUTES:
            break
        if not value or not _valid_attribute_name(name):
            continue
        attributes[name] = {"DataType": "String", "StringValue": value}
    return attributes


def _valid_attribute_name(name: str) -> bool:
    reserved = name.lower().startswith(("aws.", "amazon."))
    return len(name) <= 256 and not reserved and _ATTRIBUTE_NAME.fullmatch(name) is not None


class SqsBackend:
    """Callbacks as SQS messages: the destination is the queue URL, the body the payload.

    The region is the configured one, else the queue URL's, else us-east-1; one client per
    region. Delivered means SQS answered with a message id.
    """

    def __init__(self, region: str = "", endpoint_url: str = "") -> None:
        self.region = region
        self.endpoint_url = endpoint_url
        self._clients: dict[str, Any] = {}
        self._lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: Settings) -> SqsBackend:
        return cls(settings.sqs_region, settings.sqs_endpoint_url)

    def region_of(self, queue_url: str) -> str:
        return self.region or queue_region(queue_url) or DEFAULT_SQS_REGION

    def client_for(self, region: str) -> Any:
        with self._lock:
            client = self._clients.get(region)
            if client is None:
                client = self._clients[region] = _client("sqs", region, self.endpoint_url, read_timeout=20.0)
            return client

    def deliver(self, message: Message) -> None:
        queue_url = message.destination
        client = self.client_for(self.region_of(queue_url))
        try:
            answer = client.send_message(
                QueueUrl=queue_url,
                MessageBody=message.body.decode("utf-8"),
                MessageAttributes=message_attributes(message.headers),
            )
        except (*_AWS_ERRORS, UnicodeDecodeError) as exc:
            error = UnknownDestination if _error_code(exc) in _MISSING_QUEUE_CODES else NotificationError
            raise error(f"SendMessage to {queue_url}: {_describe(exc)}") from exc
        if not answer.get("MessageId"):
            raise NotificationError(f"SendMessage to {queue_url}: no message id in the answer")

    def close(self) -> None:
        with self._lock:
            clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            client.close()


# --- shared ----------------------------------------------------------------------------


def _client(service: str, region: str, endpoint_url: str, *, read_timeout: float) -> Any:
    config = botocore.config.Config(
        retries={"mode": "standard"},
        connect_timeout=10.0,
        read_timeout=read_timeout,
        max_pool_connections=32,
        # A custom endpoint (MinIO, moto, an IP) rarely has a DNS name per bucket.
        s3={"addressing_style": "path"} if endpoint_url and service == "s3" else None,
    )
    with _CLIENT_CREATION:
        session = boto3.session.Session()
        return session.client(
            service, region_name=region or None, endpoint_url=endpoint_url or None, config=config
        )


def _client_error(exc: BaseException) -> botocore.exceptions.ClientError | None:
    """The AWS error answer behind `exc`: boto3's transfer wraps it in an error of its own."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, botocore.exceptions.ClientError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def _error_code(exc: BaseException) -> str:
    client_error = _client_error(exc)
    if client_error is None:
        return ""
    return str(client_error.response.get("Error", {}).get("Code", ""))


def _describe(exc: BaseException) -> str:
    """`<AWS code>: <AWS message>` for an AWS answer, else the error's own text."""
    client_error = _client_error(exc)
    if client_error is None:
        return str(exc) or type(exc).__name__
    error = client_error.response.get("Error", {})
    code = error.get("Code") or "Unknown"
    text = error.get("Message") or ""
    return f"{code}: {text}" if text else str(code)
