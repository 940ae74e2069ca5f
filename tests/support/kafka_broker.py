"""A real single-node Apache Kafka broker (KRaft) for the Kafka tests, on 127.0.0.1.

The jars come from Maven Central through `pom.xml` beside this file and are cached outside
the repository in `~/.cache/downloader-kafka/<hash of pom.xml>/`, so only the first run pays
for them. The broker runs with the machine's `java` from a temporary folder that holds its
config, its data and its log (`broker.log`). Anything that keeps it from running fails the
test with the reason and the log's tail: these tests never skip.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from typing import NamedTuple

import confluent_kafka
import confluent_kafka.admin
import pytest

POM = Path(__file__).resolve().parents[1] / "kafka" / "pom.xml"
CACHE_ROOT = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "downloader-kafka"
READY_TIMEOUT = 60.0
STOP_TIMEOUT = 20.0
MVN_TIMEOUT = 600.0

#: The broker logs through log4j2 into a file of its own temporary folder.
LOG4J2_CONFIG = """\
<?xml version="1.0" encoding="UTF-8"?>
<Configuration status="WARN">
  <Appenders>
    <File name="file" fileName="{log}" append="true">
      <PatternLayout pattern="[%d] %p %m (%c)%n"/>
    </File>
  </Appenders>
  <Loggers>
    <Logger name="kafka" level="INFO"/>
    <Logger name="org.apache.kafka" level="INFO"/>
    <Logger name="state.change.logger" level="WARN"/>
    <Root level="WARN"><AppenderRef ref="file"/></Root>
  </Loggers>
</Configuration>
"""


class Record(NamedTuple):
    """One consumed message, as the broker holds it."""

    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def tail(path: Path, lines: int = 60) -> str:
    try:
        data = path.read_bytes()[-65536:]
    except OSError as exc:
        return f"<cannot read {path}: {exc}>"
    return "\n".join(data.decode("utf-8", "replace").splitlines()[-lines:])


def ensure_jars() -> Path:
    """The folder of broker jars, downloaded once per version of pom.xml.

    Maven writes into a temporary sibling that is renamed into place only when complete, so
    an interrupted download leaves nothing that looks like a cache.
    """
    digest = hashlib.sha256(POM.read_bytes()).hexdigest()[:12]
    jars = CACHE_ROOT / digest
    if jars.is_dir():
        return jars
    mvn = shutil.which("mvn")
    if mvn is None:
        pytest.fail("mvn is not on PATH: the Kafka tests fetch the broker's jars with Maven", pytrace=False)
    CACHE_ROOT.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=f".{digest}-", dir=CACHE_ROOT))
    try:
        _copy_dependencies(mvn, partial)
        try:
            partial.rename(jars)
        except OSError:
            if not jars.is_dir():  # not just another session that finished first
                raise
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return jars


def _copy_dependencies(mvn: str, into: Path) -> None:
    argv = [mvn, "-q", "-B", "-f", str(POM), "dependency:copy-dependencies", f"-DoutputDirectory={into}"]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=MVN_TIMEOUT, check=False)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{' '.join(argv)} took longer than {MVN_TIMEOUT:g}s", pytrace=False)
    if done.returncode != 0 or not any(into.glob("kafka_2.13-*.jar")):
        output = "\n".join((done.stdout + done.stderr).splitlines()[-40:])
        pytest.fail(
            f"cannot fetch the Kafka jars ({' '.join(argv)} exited {done.returncode}):\n{output}",
            pytrace=False,
        )


def _cluster_id() -> str:
    """A Kafka Uuid: 16 random bytes in URL-safe base64 without padding."""
    return base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")


class KafkaBroker:
    """One broker that is also its own controller. Its ports and data survive restart()."""

    def __init__(self, workdir: Path | None = None, *, auto_create_topics: bool = False) -> None:
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix="kafka-"))
        self.auto_create_topics = auto_create_topics
        self.port = free_port()
        self.controller_port = free_port()
        self.log = self.workdir / "broker.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self._jars: Path | None = None
        self._formatted = False

    @property
    def bootstrap_servers(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    # --- lifecycle -------------------------------------------------------------------

    def start(self) -> KafkaBroker:
        if self.running:
            return self
        java = shutil.which("java")
        if java is None:
            pytest.fail("java is not on PATH: the Kafka tests run the broker with it", pytrace=False)
        self._jars = self._jars or ensure_jars()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._write_config()
        if not self._formatted:
            self._format_storage(java)
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [*self._java(java), "kafka.Kafka", str(self.workdir / "server.properties")],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # the terminal's Ctrl-C goes to pytest, not to the broker
            )
        self._wait_ready()
        return self

    def stop(self) -> None:
        """A clean shutdown (SIGTERM), then SIGKILL if it takes longer than STOP_TIMEOUT."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.kill()
        self.proc = None

    def kill(self) -> None:
        """A crash: SIGKILL to the broker's whole session."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)
        self.proc = None

    def restart(self) -> None:
        """Same ports, same data: clients that knew the broker find it again."""
        self.stop()
        self.start()

    def log_tails(self, lines: int = 30) -> str:
        """What a failed test's report shows (the top conftest collects it)."""
        return self.log_tail(lines)

    def log_tail(self, lines: int = 60) -> str:
        return tail(self.log, lines)

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)

    # --- clients -----------------------------------------------------------------------

    def admin(self) -> confluent_kafka.admin.AdminClient:
        # Quiet: while the broker starts, every connection refused would be printed.
        return confluent_kafka.admin.AdminClient(
            {"bootstrap.servers": self.bootstrap_servers, "log_level": 2}
        )

    def create_topic(self, name: str, partitions: int = 1) -> None:
        admin = self.admin()  # kept referenced: a collected client cancels its futures
        futures = admin.create_topics(
            [confluent_kafka.admin.NewTopic(name, num_partitions=partitions, replication_factor=1)],
            operation_timeout=30,
            request_timeout=30,
        )
        futures[name].result(timeout=30)
        self._wait_for_leaders(name, partitions)

    def consume(self, topic: str, n: int, timeout: float = 30.0) -> list[Record]:
        """The first `n` messages of `topic` from its beginning (all partitions), waiting at most
        `timeout` seconds; fewer come back if fewer were there. Partitions are assigned directly,
        so there is no consumer group to join and nothing is committed."""
        consumer = confluent_kafka.Consumer(
            {
                "bootstrap.servers": self.bootstrap_servers,
                "group.id": f"tests-{uuid.uuid4().hex}",
                "enable.auto.commit": False,
                "enable.partition.eof": False,
            }
        )
        try:
            partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
            consumer.assign(
                [
                    confluent_kafka.TopicPartition(topic, p, confluent_kafka.OFFSET_BEGINNING)
                    for p in partitions
                ]
            )
            return self._read(consumer, n, timeout)
        finally:
            consumer.close()

    def message_count(self, topic: str) -> int:
        """How many messages `topic` holds (its partitions' high watermarks: the tests' producers
        are not transactional, so every offset is a message)."""
        consumer = confluent_kafka.Consumer(
            {"bootstrap.servers": self.bootstrap_servers, "group.id": f"tests-{uuid.uuid4().hex}"}
        )
        try:
            partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
            marks = [
                consumer.get_watermark_offsets(confluent_kafka.TopicPartition(topic, p), timeout=10)
                for p in partitions
            ]
            return sum(high - low for low, high in marks)
        finally:
            consumer.close()

    @staticmethod
    def _read(consumer: confluent_kafka.Consumer, n: int, timeout: float) -> list[Record]:
        records: list[Record] = []
        deadline = time.monotonic() + timeout
        while len(records) < n and (left := deadline - time.monotonic()) > 0:
            for msg in consumer.consume(num_messages=n - len(records), timeout=min(left, 1.0)):
                if msg.error() is not None:
                    raise AssertionError(f"consuming {msg.topic()}: {msg.error()}")
                headers = [(k, v or b"") for k, v in msg.headers() or []]
                records.append(Record(msg.key(), msg.value(), headers))
        return records

    # --- internals ---------------------------------------------------------------------

    def _java(self, java: str) -> list[str]:
        assert self._jars is not None
        return [
            java,
            "-Xms128m",
            "-Xmx512m",
            "-XX:+UseG1GC",
            # Short-lived test broker: C1 alone starts faster on two cores.
            "-XX:TieredStopAtLevel=1",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={self.workdir / 'log4j2.xml'}",
            f"-Dkafka.logs.dir={self.workdir}",
            "-cp",
            f"{self._jars}/*",
        ]

    def _write_config(self) -> None:
        (self.workdir / "log4j2.xml").write_text(LOG4J2_CONFIG.format(log=self.log))
        settings = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.bootstrap.servers": f"127.0.0.1:{self.controller_port}",
            "listeners": f"PLAINTEXT://127.0.0.1:{self.port},CONTROLLER://127.0.0.1:{self.controller_port}",
            "advertised.listeners": f"PLAINTEXT://127.0.0.1:{self.port}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
            "log.dirs": str(self.workdir / "data"),
            "num.partitions": "1",
            "auto.create.topics.enable": "true" if self.auto_create_topics else "false",
            # One broker: every internal topic has to live with a single replica.
            "offsets.topic.replication.factor": "1",
            "offsets.topic.num.partitions": "1",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "share.coordinator.state.topic.replication.factor": "1",
            "share.coordinator.state.topic.min.isr": "1",
            "min.insync.replicas": "1",
            "group.initial.rebalance.delay.ms": "0",
        }
        text = "".join(f"{key}={value}\n" for key, value in settings.items())
        (self.workdir / "server.properties").write_text(text)

    def _format_storage(self, java: str) -> None:
        argv = [
            *self._java(java),
            "kafka.tools.StorageTool",
            "format",
            "--config",
            str(self.workdir / "server.properties"),
            # One argument: an id drawn with a leading "-" (1 in 64) read as an option, and
            # the broker never started (seen once in CI: every Kafka test errored).
            f"--cluster-id={_cluster_id()}",
            "--standalone",
        ]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
        if done.returncode != 0:
            pytest.fail(
                f"formatting the Kafka storage failed ({done.returncode}):\n{done.stdout}{done.stderr}\n"
                f"broker log:\n{tail(self.log)}",
                pytrace=False,
            )
        self._formatted = True

    def _wait_ready(self) -> None:
        """Ready when an admin client gets metadata naming this broker."""
        deadline = time.monotonic() + READY_TIMEOUT
        admin = self.admin()
        while True:
            assert self.proc is not None
            if self.proc.poll() is not None:
                self._fail(f"the Kafka broker exited with {self.proc.returncode} while starting")
            try:
                if 1 in admin.list_topics(timeout=1).brokers:
                    return
            except confluent_kafka.KafkaException:
                pass
            if time.monotonic() > deadline:
                self.kill()
                self._fail(f"the Kafka broker was not ready within {READY_TIMEOUT:g}s")
            time.sleep(0.2)

    def _wait_for_leaders(self, topic: str, partitions: int) -> None:
        """create_topics returns before every partition has a leader; producing before that
        would see a transient error that has nothing to do with the test."""
        admin = self.admin()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            meta = admin.list_topics(topic, timeout=5).topics.get(topic)
            if (
                meta is not None
                and meta.error is None
                and len(meta.partitions) == partitions
                and all(p.leader >= 0 for p in meta.partitions.values())
            ):
                return
            time.sleep(0.1)
        self._fail(f"topic {topic} has no leader for all {partitions} partitions after 30s")

    def _fail(self, reason: str) -> None:
        pytest.fail(f"{reason}; broker log ({self.log}) ends with:\n{tail(self.log)}", pytrace=False)
