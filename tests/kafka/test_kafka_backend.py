"""KafkaBackend against a real broker: what lands on the topic, and how failures surface.

Delivered messages are read back with a consumer from the topic's beginning, so the tests see
what a client would. The configuration tests need no broker.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator

import pytest
from support.kafka_broker import KafkaBroker

from downloader.config.settings import Settings
from downloader.delivery.kafka_backend import KafkaBackend, producer_config
from downloader.delivery.notifying import Message
from downloader.errors import ConfigurationError, NotificationError, UnknownDestination

CALLBACK_TIMEOUT = 4.0


def settings(**fields: object) -> Settings:
    return Settings(**fields)  # type: ignore[arg-type]


def message(topic: str, job_id: str | None = None, **payload: object) -> Message:
    job_id = job_id or uuid.uuid4().hex[:14]
    body = json.dumps({"job_id": job_id, **payload}, separators=(",", ":")).encode()
    return Message(job_id=job_id, destination=topic, body=body, headers={"X-Job": job_id})


@pytest.fixture
def backend(kafka: KafkaBroker) -> Iterator[KafkaBackend]:
    b = KafkaBackend.from_settings(
        settings(kafka_bootstrap_servers=kafka.bootstrap_servers, callback_timeout_seconds=CALLBACK_TIMEOUT)
    )
    yield b
    b.close()


# --- configuration (no broker) -------------------------------------------------------------


def test_the_originals_sample_config_loses_go_keys_and_gets_delivery_guarantees() -> None:
    sample = {
        "bootstrap.servers": "localhost:9092",
        "api.version.request": True,
        "log.connection.close": False,
        "go.delivery.reports": True,
        "message.send.max.retries": 3,
        "request.required.acks": -1,
    }
    config = producer_config(settings(kafka_config=sample, callback_timeout_seconds=7))
    assert config == {
        "bootstrap.servers": "localhost:9092",
        "api.version.request": True,
        "log.connection.close": False,
        "message.send.max.retries": 3,
        "enable.idempotence": True,
        "acks": "all",
        "message.timeout.ms": 7000,
        "topic.metadata.propagation.max.ms": 3500,
    }


def test_weaker_delivery_settings_are_overridden_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    given = {"enable.idempotence": False, "acks": 1, "delivery.timeout.ms": 300000}
    config = producer_config(settings(kafka_config=given, callback_timeout_seconds=2.5))
    assert config["enable.idempotence"] is True
    assert config["acks"] == "all"
    assert config["message.timeout.ms"] == 2500
    assert "delivery.timeout.ms" not in config
    warned = caplog.text
    assert "enable.idempotence=False overridden" in warned
    assert "acks=1 overridden" in warned


def test_brokers_and_sasl_credentials_come_from_their_own_settings() -> None:
    config = producer_config(
        settings(
            kafka_config={"bootstrap.servers": "old:9092", "security.protocol": "SASL_SSL"},
            kafka_bootstrap_servers="a:9092,b:9092",
            kafka_username="user",
            kafka_password="secret",
        )
    )
    assert config["bootstrap.servers"] == "a:9092,b:9092"
    assert config["sasl.username"] == "user"
    assert config["sasl.password"] == "secret"
    assert config["security.protocol"] == "SASL_SSL"


def test_a_configured_propagation_time_is_kept() -> None:
    config = producer_config(settings(kafka_config={"topic.metadata.propagation.max.ms": 100}))
    assert config["topic.metadata.propagation.max.ms"] == 100


def test_the_sample_config_builds_a_producer() -> None:
    """librdkafka itself accepts what producer_config makes of the original's sample."""
    sample = {"api.version.request": True, "go.delivery.reports": True, "request.required.acks": -1}
    KafkaBackend.from_settings(settings(kafka_config=sample, kafka_bootstrap_servers="127.0.0.1:1")).close()


def test_a_setting_librdkafka_does_not_know_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="No such configuration property"):
        KafkaBackend.from_settings(settings(kafka_config={"no.such.setting": 1}))


# --- against the broker -------------------------------------------------------------------


@pytest.mark.kafka
def test_a_delivered_message_is_keyed_by_job_id_with_the_exact_body_and_headers(
    kafka: KafkaBroker, backend: KafkaBackend, topic: str
) -> None:
    msg = Message(
        job_id="6QEywYsd0jrKAg",
        destination=topic,
        body='{"success":true,"extra":"καλημέρα"}'.encode(),
        headers={"X-Signature": "sha256=abc", "X-Job": "6QEywYsd0jrKAg"},
    )
    backend.deliver(msg)
    [record] = kafka.consume(topic, 1, timeout=10)
    assert record.key == b"6QEywYsd0jrKAg"
    assert record.value == msg.body
    assert record.headers == [("X-Signature", b"sha256=abc"), ("X-Job", b"6QEywYsd0jrKAg")]


@pytest.mark.kafka
def test_an_unknown_topic_raises_unknown_destination_within_the_timeout(backend: KafkaBackend) -> None:
    started = time.monotonic()
    with pytest.raises(UnknownDestination, match="Unknown topic"):
        backend.deliver(message(f"missing-{uuid.uuid4().hex}"))
    assert time.monotonic() - started < CALLBACK_TIMEOUT + 1


@pytest.mark.kafka
def test_a_topic_created_after_a_failure_receives_the_next_attempt(
    kafka: KafkaBroker, backend: KafkaBackend
) -> None:
    name = f"late-{uuid.uuid4().hex}"
    with pytest.raises(UnknownDestination):
        backend.deliver(message(name, job_id="first"))
    kafka.create_topic(name)
    backend.deliver(message(name, job_id="second"))
    assert kafka.message_count(name) == 1
    assert [r.key for r in kafka.consume(name, 1, timeout=5)] == [b"second"]


@pytest.mark.kafka
def test_eight_threads_deliver_200_messages_each_exactly_once(
    kafka: KafkaBroker, backend: KafkaBackend, topic: str
) -> None:
    jobs = [f"job-{i:03d}" for i in range(200)]
    failures: list[BaseException] = []
    lock = threading.Lock()

    def send(share: list[str]) -> None:
        for job_id in share:
            try:
                backend.deliver(message(topic, job_id=job_id))
            except BaseException as exc:
                with lock:
                    failures.append(exc)

    threads = [threading.Thread(target=send, args=(jobs[i::8],)) for i in range(8)]
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    elapsed = time.monotonic() - started
    assert failures == []
    assert kafka.message_count(topic) == len(jobs)  # none duplicated by a retry
    records = kafka.consume(topic, len(jobs), timeout=10)
    assert sorted(r.key or b"" for r in records) == [j.encode() for j in jobs]
    assert all(json.loads(r.value or b"")["job_id"] == (r.key or b"").decode() for r in records)
    # Each deliver waits for its own report; threads wait side by side, not one after another
    # (200 serial round trips with acks=all would take several seconds on this host).
    assert elapsed < 10, f"200 deliveries from 8 threads took {elapsed:.1f}s"


@pytest.mark.kafka
def test_a_stopped_broker_fails_delivery_within_the_timeout_and_a_restart_heals_it(
    kafka: KafkaBroker, backend: KafkaBackend, topic: str
) -> None:
    backend.deliver(message(topic, job_id="before"))
    kafka.stop()
    try:
        started = time.monotonic()
        with pytest.raises(NotificationError) as failed:
            backend.deliver(message(topic, job_id="during"))
        elapsed = time.monotonic() - started
        assert not isinstance(failed.value, UnknownDestination)
        assert "timed out" in str(failed.value)
        assert CALLBACK_TIMEOUT - 0.5 < elapsed < CALLBACK_TIMEOUT + 3
    finally:
        kafka.start()
    backend.deliver(message(topic, job_id="after"))
    # "during" timed out before any broker could take it: it must not appear later.
    assert kafka.message_count(topic) == 2
    assert [r.key for r in kafka.consume(topic, 2, timeout=10)] == [b"before", b"after"]


@pytest.mark.kafka
def test_deliver_after_close_fails_without_producing(kafka: KafkaBroker, topic: str) -> None:
    backend = KafkaBackend.from_settings(settings(kafka_bootstrap_servers=kafka.bootstrap_servers))
    backend.deliver(message(topic, job_id="one"))
    backend.close()
    with pytest.raises(NotificationError, match="closed"):
        backend.deliver(message(topic, job_id="two"))
    assert kafka.message_count(topic) == 1
    assert [r.key for r in kafka.consume(topic, 1, timeout=10)] == [b"one"]


@pytest.mark.kafka
def test_an_invalid_topic_name_is_a_notification_error(backend: KafkaBackend) -> None:
    with pytest.raises(NotificationError):
        backend.deliver(message("not a valid topic!"))
