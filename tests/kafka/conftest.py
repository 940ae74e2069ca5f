"""Fixtures of the Kafka tests: one real broker for the session, a fresh topic per test, and
for the end-to-end tests a `stack` whose processes know the broker (the file and callback
servers come from the top conftest).

The broker (tests/support/kafka_broker.py) starts on first use. A test that stops it restarts it before it ends;
the `kafka` fixture also starts it again should one have failed half-way.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.kafka_broker import KafkaBroker
from support.procs import Stack


@pytest.fixture(scope="session")
def kafka_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaBroker]:
    broker = KafkaBroker(tmp_path_factory.mktemp("kafka"), auto_create_topics=False)
    broker.start()
    yield broker
    broker.stop()


@pytest.fixture
def kafka(kafka_broker: KafkaBroker) -> KafkaBroker:
    """The session's broker, running."""
    return kafka_broker.start()


@pytest.fixture
def topic(kafka: KafkaBroker) -> str:
    """A new topic of one partition, so consumed order is produced order."""
    name = f"callbacks-{uuid.uuid4().hex[:12]}"
    kafka.create_topic(name)
    return name


@pytest.fixture
def stack(tmp_path: Path, redis_url: str, kafka: KafkaBroker) -> Iterator[Stack]:
    """Nothing runs yet; the processes it starts know the broker."""
    s = Stack(tmp_path, redis_url, kafka_bootstrap_servers=kafka.bootstrap_servers)
    yield s
    s.stop_all()
