"""Real Kafka brokers for the Kafka suites: the embedded one (noida-db) always, and Apache Kafka
in KRaft mode wherever Java and Maven are present (required in CI).

A broker starts once per session; each test gets topics of its own.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import pytest
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from cachesync import config
from devkit import brokers
from devkit.datagen import KafkaFeed
from devkit.esm.kafka import retrying
from devkit.esm.runner import LocalMappings
from tests.unavailable import unavailable

SASL_USERS = {"storefront": "s3cret-Pa55word"}  # Apache Kafka's SASL_PLAINTEXT listener takes these


@pytest.fixture(scope="session")
def embedded_broker() -> Iterator[brokers.Broker]:
    broker = brokers.start_broker("embedded")
    yield broker
    broker.remove()


@pytest.fixture(scope="session")
def apache_broker() -> Iterator[brokers.Broker]:
    why = brokers.available("apache")
    if why is not None:
        unavailable(why)
    broker = brokers.start_broker("apache", timeout=180, sasl_users=SASL_USERS)
    yield broker
    broker.remove()


@dataclass
class Kafka:
    """A broker under test and helpers to make topics and records on it."""

    broker: brokers.Broker
    created: list[str] = field(default_factory=list)

    @property
    def bootstrap(self) -> str:
        return self.broker.bootstrap

    def topic(self, partitions: int = 3, name: str | None = None) -> str:
        name = name or f"t-{uuid.uuid4().hex[:10]}"
        admin = AdminClient({"bootstrap.servers": self.bootstrap})
        for future in admin.create_topics([NewTopic(name, partitions, 1)]).values():
            try:
                future.result(30)
            except KafkaException as error:
                # a named topic another test of the session created on this broker: use it
                if error.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                    raise
        self.created.append(name)
        _wait_for_leaders(admin, name, partitions)
        return name

    def producer(self, **settings: Any) -> Producer:
        return Producer({"bootstrap.servers": self.bootstrap, "partitioner": "murmur2_random", **settings})

    def produce(
        self,
        topic: str,
        records: list[tuple[bytes | None, bytes | None]],
        partition: int | None = None,
        headers: list[tuple[str, bytes]] | None = None,
        timestamp: int | None = None,
    ) -> list[tuple[int, int]]:
        """Produces (key, value) pairs in order; returns each one's (partition, offset)."""
        producer = self.producer(**({"linger.ms": 0}))
        placed: list[tuple[int, int]] = []

        def delivered(error: Any, message: Any) -> None:
            assert error is None, error
            placed.append((message.partition(), message.offset()))

        for key, value in records:
            extra: dict[str, Any] = {}
            if partition is not None:
                extra["partition"] = partition
            if headers is not None:
                extra["headers"] = headers
            if timestamp is not None:
                extra["timestamp"] = timestamp
            producer.produce(topic, key=key, value=value, on_delivery=delivered, **extra)
            producer.flush(30)  # one at a time: offsets in the order given
        return placed

    def end_offsets(self, topic: str, partitions: int, timeout: float = 30.0) -> dict[int, int]:
        """Each partition's end offset; a new topic's leaders may need a moment before they answer."""
        settling = (
            KafkaError.NOT_LEADER_FOR_PARTITION,
            KafkaError.LEADER_NOT_AVAILABLE,
            KafkaError.UNKNOWN_TOPIC_OR_PART,
        )
        consumer = Consumer({"bootstrap.servers": self.bootstrap, "group.id": f"probe-{uuid.uuid4().hex}"})
        deadline = time.monotonic() + timeout
        try:
            return {
                p: retrying(
                    lambda p=p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1],
                    settling,
                    deadline,
                    pause=0.1,
                )
                for p in range(partitions)
            }
        finally:
            consumer.close()

    def read_all(self, topic: str, expected: int, timeout: float = 30.0) -> list[Any]:
        """Every message of a topic from the start (at least `expected` of them); assigned rather
        than subscribed, so no group has to form first."""
        from confluent_kafka import OFFSET_BEGINNING

        consumer = Consumer({"bootstrap.servers": self.bootstrap, "group.id": f"reader-{uuid.uuid4().hex}"})
        messages: list[Any] = []
        deadline = time.monotonic() + timeout
        try:
            partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
            consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
            while len(messages) < expected and time.monotonic() < deadline:
                messages += [m for m in consumer.consume(500, 0.2) if m.error() is None]
        finally:
            consumer.close()
        return messages


def _wait_for_leaders(admin: AdminClient, topic: str, partitions: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = admin.list_topics(topic, timeout=5).topics.get(topic)
        ready = found is not None and found.error is None and len(found.partitions) == partitions
        if ready and all(p.leader >= 0 for p in found.partitions.values()):
            return
        time.sleep(0.1)
    raise AssertionError(f"topic {topic} has no leaders after {timeout}s")


@pytest.fixture(params=["embedded", "apache"])
def kafka(request: pytest.FixtureRequest) -> Kafka:
    """Each test using this runs against the embedded broker and against Apache Kafka."""
    return Kafka(request.getfixturevalue(f"{request.param}_broker"))


def wait_until(condition: Callable[[], bool], timeout: float = 180.0, what: str = "condition") -> None:
    """Polls `condition` until it holds. The deadline only ends a test that is failing anyway: generous,
    so a busy machine (brokers, retries and backoffs all slower) does not turn into a failure."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


class Recorder:
    """A function for the mapping to invoke: keeps every event, and fails or answers as told."""

    def __init__(self, respond: Callable[[dict[str, Any], int], Any] | None = None):
        self.events: list[dict[str, Any]] = []
        self.respond = respond
        self._lock = threading.Lock()

    def __call__(self, event: dict[str, Any]) -> Any:
        with self._lock:
            self.events.append(event)
            calls = len(self.events)
        return self.respond(event, calls) if self.respond else None

    def records(self) -> list[dict[str, Any]]:
        return [r for e in self.events for rs in e["records"].values() for r in rs]

    def coordinates(self) -> list[tuple[int, int]]:
        return [(r["partition"], r["offset"]) for r in self.records()]


@pytest.fixture
def local_mappings() -> Iterator[Callable[..., LocalMappings]]:
    """Builds the template's mappings (LocalMappings' options) with their functions' environment
    in this process, plus `env`; stops them and restores the environment afterwards."""
    saved = dict(os.environ)
    built: list[LocalMappings] = []

    def build(env: Mapping[str, str] | None = None, **options: Any) -> LocalMappings:
        mappings = LocalMappings(**options)
        mappings.apply_environment(
            {"POWERTOOLS_METRICS_DISABLED": "true", "POWERTOOLS_LOG_LEVEL": "CRITICAL", **(env or {})}
        )
        built.append(mappings)
        return mappings

    yield build
    for mappings in built:
        mappings.stop()
    for mappings in built:  # invocations abandoned after a timeout or a rebalance write nothing into the next test
        mappings.wait_idle(60)
    os.environ.clear()
    os.environ.update(saved)
    config.settings.cache_clear()


@pytest.fixture(autouse=True)
def feeds_closed(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Every KafkaFeed a test opens is closed when the test ends, before any broker stops: a producer
    left open keeps reconnecting to a stopped broker and logs each refusal."""
    opened: list[KafkaFeed] = []
    original = KafkaFeed.__init__

    def opening(feed: KafkaFeed, *args: Any, **kwargs: Any) -> None:
        original(feed, *args, **kwargs)
        opened.append(feed)

    monkeypatch.setattr(KafkaFeed, "__init__", opening)
    yield
    for feed in opened:
        feed.close()
