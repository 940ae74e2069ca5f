"""Kafka callbacks: the payload as one message on the job's topic (`callback_dst`), keyed by job id.

One idempotent librdkafka producer is shared by all of a notifier's threads. `deliver` blocks
its caller until that message's delivery report arrives (a background thread serves reports),
so many callbacks wait at once without queueing behind each other. confluent_kafka errors never
leave this module: they become NotificationError, or UnknownDestination for a missing topic.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import confluent_kafka

from downloader.errors import ConfigurationError, NotificationError, UnknownDestination

if TYPE_CHECKING:
    from downloader.config.settings import Settings
    from downloader.delivery.notifying import Message

log = logging.getLogger(__name__)

#: Both ways librdkafka says a topic does not exist: the broker's answer, and its own verdict
#: once the topic stayed missing for `topic.metadata.propagation.max.ms`.
UNKNOWN_TOPIC_CODES = frozenset(
    {confluent_kafka.KafkaError.UNKNOWN_TOPIC_OR_PART, confluent_kafka.KafkaError._UNKNOWN_TOPIC}
)

#: The original flushed for 5000 ms on shutdown.
CLOSE_FLUSH_SECONDS = 5.0

#: librdkafka fails a message shortly after `message.timeout.ms` (its timeout scan runs about
#: once a second); waiting this much longer than that means the report is really lost.
REPORT_GRACE_SECONDS = 5.0

#: Longest wait for the brokers' answer about one topic.
METADATA_TIMEOUT_SECONDS = 5.0

#: How long the report thread blocks in poll(); also how fast close() stops it.
POLL_SECONDS = 0.2

#: Keys of the Go client (confluent-kafka-go) that librdkafka itself does not know; the
#: original's sample config has `go.delivery.reports`. The Python client refuses them.
GO_ONLY_PREFIX = "go."

#: Names librdkafka accepts for the same setting; ours replaces all of them.
ACKS_KEYS = ("acks", "request.required.acks")
IDEMPOTENCE_KEYS = ("enable.idempotence",)
DELIVERY_TIMEOUT_KEYS = ("message.timeout.ms", "delivery.timeout.ms")
PROPAGATION_KEY = "topic.metadata.propagation.max.ms"


def producer_config(settings: Settings) -> dict[str, Any]:
    """librdkafka producer settings: `kafka_config` verbatim, less the Go client's keys, with
    brokers and SASL credentials from their own settings, and what delivery depends on forced:
    idempotence (retries never duplicate or reorder), acks from all in-sync replicas, and a
    delivery timeout of `callback_timeout_seconds` (librdkafka's default is 5 minutes)."""
    config: dict[str, Any] = {}
    for key, value in settings.kafka_config.items():
        if key.startswith(GO_ONLY_PREFIX):
            log.info("kafka: ignoring %s=%r, a setting of the Go client only", key, value)
        else:
            config[key] = value
    if settings.kafka_bootstrap_servers:
        config["bootstrap.servers"] = settings.kafka_bootstrap_servers
    if settings.kafka_username:
        config["sasl.username"] = settings.kafka_username
    if settings.kafka_password:
        config["sasl.password"] = settings.kafka_password
    _force(config, IDEMPOTENCE_KEYS, True, accepted={"true", "1"})
    _force(config, ACKS_KEYS, "all", accepted={"all", "-1"})
    timeout_ms = max(1, round(settings.callback_timeout_seconds * 1000))
    _force(config, DELIVERY_TIMEOUT_KEYS, timeout_ms, accepted={str(timeout_ms)})
    # A topic that does not exist fails as "unknown topic" only after this long; it has to be
    # shorter than the delivery timeout, or every such message would just time out.
    config.setdefault(PROPAGATION_KEY, min(30_000, max(1, timeout_ms // 2)))
    return config


def _force(config: dict[str, Any], keys: tuple[str, ...], value: Any, *, accepted: set[str]) -> None:
    """Set `keys[0]` to `value`, dropping its aliases; warn when the configuration said otherwise."""
    for key in keys:
        if key in config:
            given = config.pop(key)
            if str(given).lower() not in accepted:
                log.warning("kafka: %s=%r overridden by %s=%r", key, given, keys[0], value)
    config[keys[0]] = value


class KafkaBackend:
    """Delivers each message to the topic named by its destination; delivered means the
    delivery report for that message came back without an error."""

    def __init__(self, config: Mapping[str, Any]) -> None:
        self._config = {**config, "error_cb": self._on_client_error, "logger": log}
        timeout_ms = float(self._config.get("message.timeout.ms", 300_000))
        self._report_timeout = timeout_ms / 1000 + REPORT_GRACE_SECONDS
        self._lock = threading.Lock()
        self._fatal = False
        self._closed = threading.Event()
        self._producer = self._new_producer()
        self._reporter = threading.Thread(target=self._serve_reports, name="kafka-reports", daemon=True)
        self._reporter.start()

    @classmethod
    def from_settings(cls, settings: Settings) -> KafkaBackend:
        return cls(producer_config(settings))

    def deliver(self, message: Message) -> None:
        if self._closed.is_set():
            raise NotificationError("Kafka producer is closed")
        report = _Report()
        producer = self._usable_producer()
        try:
            self._produce(producer, message, report)
        except confluent_kafka.KafkaException as exc:
            error = _kafka_error(exc)
            if error.code() not in UNKNOWN_TOPIC_CODES or not _topic_exists_now(
                producer, message.destination
            ):
                raise _translate(error) from exc
            # Created since librdkafka last looked: the lookup refreshed its metadata.
            self._produce_once_more(producer, message, report)
        if not report.done.wait(self._report_timeout):
            raise NotificationError(f"no Kafka delivery report within {self._report_timeout:g}s")
        if report.error is not None:
            raise _translate(report.error)

    def close(self) -> None:
        """Wait up to CLOSE_FLUSH_SECONDS for messages still in flight, then stop."""
        self._closed.set()
        self._reporter.join()
        left = self._producer.flush(CLOSE_FLUSH_SECONDS)
        if left:
            log.error("kafka: %d message(s) left undelivered at shutdown", left)
        else:
            log.info("kafka: producer flushed and closed")

    # --- internals ------------------------------------------------------------------------

    @staticmethod
    def _produce(producer: confluent_kafka.Producer, message: Message, report: _Report) -> None:
        try:
            producer.produce(
                topic=message.destination,
                value=message.body,
                key=message.job_id,
                headers=list(message.headers.items()),
                on_delivery=report.arrived,
            )
        except BufferError as exc:
            raise NotificationError(f"Kafka producer queue is full: {exc}") from exc

    def _produce_once_more(
        self, producer: confluent_kafka.Producer, message: Message, report: _Report
    ) -> None:
        try:
            self._produce(producer, message, report)
        except confluent_kafka.KafkaException as exc:
            raise _translate(_kafka_error(exc)) from exc

    def _new_producer(self) -> confluent_kafka.Producer:
        try:
            return confluent_kafka.Producer(self._config)
        except confluent_kafka.KafkaException as exc:
            raise ConfigurationError(f"DOWNLOADER_KAFKA_CONFIG: {_kafka_error(exc).str()}") from exc

    def _usable_producer(self) -> confluent_kafka.Producer:
        """The producer, replaced first if librdkafka declared it dead (a fatal error: every
        later produce would fail the same way)."""
        with self._lock:
            if self._fatal:
                old, self._producer, self._fatal = self._producer, self._new_producer(), False
                # Serves the old one's reports, failing the messages it still held.
                old.flush(0)
                log.warning("kafka: producer replaced after a fatal error")
            return self._producer

    def _serve_reports(self) -> None:
        """Delivery reports, logs and errors are served by poll(); until close()."""
        while not self._closed.is_set():
            self._producer.poll(POLL_SECONDS)

    def _on_client_error(self, error: confluent_kafka.KafkaError) -> None:
        """librdkafka retries by itself; its log (through `logger`) already has each connection
        failure, so only what needs action is logged here once more."""
        if error.fatal():
            log.error("kafka: fatal producer error: %s", error.str())
            self._fatal = True
        elif error.code() == confluent_kafka.KafkaError._ALL_BROKERS_DOWN:
            log.warning("kafka: %s", error.str())
        else:
            log.debug("kafka: %s", error.str())


class _Report:
    """One message's delivery report, set by the report thread and awaited by the sender."""

    def __init__(self) -> None:
        self.done = threading.Event()
        self.error: confluent_kafka.KafkaError | None = None

    def arrived(self, error: confluent_kafka.KafkaError | None, _message: Any) -> None:
        self.error = error
        self.done.set()


def _topic_exists_now(producer: confluent_kafka.Producer, topic: str) -> bool:
    """Ask the brokers. librdkafka remembers a missing topic until its next periodic metadata
    refresh (5 minutes by default) and refuses to produce to it meanwhile; this lookup also
    refreshes what it remembers."""
    try:
        found = producer.list_topics(topic, timeout=METADATA_TIMEOUT_SECONDS).topics.get(topic)
    except confluent_kafka.KafkaException:
        return False
    return found is not None and found.error is None


def _kafka_error(exc: confluent_kafka.KafkaException) -> confluent_kafka.KafkaError:
    error = exc.args[0] if exc.args else None
    if isinstance(error, confluent_kafka.KafkaError):
        return error
    return confluent_kafka.KafkaError(confluent_kafka.KafkaError._FAIL, str(exc))


def _translate(error: confluent_kafka.KafkaError) -> NotificationError:
    """librdkafka's own text, as the original stored it (e.g. `Broker: Unknown topic or partition`)."""
    if error.code() in UNKNOWN_TOPIC_CODES:
        return UnknownDestination(error.str())
    return NotificationError(error.str())
