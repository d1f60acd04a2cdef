"""Event parsing, poison handling and configuration, with the Redis writer replaced at the edge."""

from __future__ import annotations

import base64
import copy
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest

from cachesync.config import ConfigError, Settings
from cachesync.deadletter import DeadLetter
from cachesync.ingest import Ingestor, InvalidEvent
from cachesync.plan import Pending
from cachesync.writer import WriteResult
from devkit.generator import EventGenerator, RawRecord, kafka_record

EVENTS = Path(__file__).resolve().parents[2] / "events"


class RecordingWriter:
    def __init__(self) -> None:
        self.pending: list[Pending] = []

    def apply(self, pending: Iterable[Pending], *, partial: bool = False, deadline: float | None = None) -> WriteResult:
        batch = list(pending)
        self.pending += batch
        return WriteResult(applied=len(batch))


class ListSink:
    def __init__(self) -> None:
        self.letters: list[DeadLetter] = []

    def send(self, letters: list[DeadLetter]) -> None:
        self.letters += letters


def run(event: Any, **env: str) -> tuple[RecordingWriter, ListSink]:
    writer, sink = RecordingWriter(), ListSink()
    Ingestor(Settings.from_env(env), writer, sink, clock=lambda: 2e9).process(event)  # type: ignore[arg-type]
    return writer, sink


def one_record(**fields: Any) -> dict[str, Any]:
    record = kafka_record("orders", 0, 5, RawRecord("orders", b"18", b"{}"), 1)
    record.update(fields)
    return {"eventSource": "SelfManagedKafka", "records": {"orders-0": [record]}}


@pytest.mark.parametrize("source", ["SelfManagedKafka", "aws:SelfManagedKafka"])
def test_both_event_source_names_are_accepted(source: str) -> None:
    event = json.loads((EVENTS / "kafka-orders.json").read_text())
    event["eventSource"] = source
    writer, sink = run(event)
    assert len(writer.pending) == 9 and not sink.letters


@pytest.mark.parametrize(
    ("event", "message"),
    [
        ([], "must be a JSON object"),
        ({"eventSource": "aws:sqs", "records": {}}, "not a Kafka event source"),
        ({"eventSource": "SelfManagedKafka", "records": []}, "'records' must be an object"),
        ({"eventSource": "SelfManagedKafka", "records": {"orders-0": {}}}, "must be a list"),
    ],
)
def test_events_that_are_not_kafka_batches_fail_the_invocation(event: Any, message: str) -> None:
    with pytest.raises(InvalidEvent, match=message):
        run(event)


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"value": "%%%not-base64%%%"}, "value is not valid base64"),
        ({"value": "eyJhIjo"}, "value is not valid base64"),  # truncated
        ({"key": 12, "value": None}, "key must be a base64 string or null"),  # a tombstone reads its key
        ({"offset": "5"}, "partition and offset non-negative integers"),
        ({"offset": None}, "lacks topic, partition or offset"),
        ({"topic": "payments"}, "no projection is configured for topic 'payments'"),
        ({"value": base64.b64encode(b"x" * 2000).decode()}, "2000 bytes is over the limit of 1000"),
    ],
)
def test_poison_records_are_dead_lettered_with_coordinates_and_reason(fields: dict[str, Any], reason: str) -> None:
    event = one_record(**fields)
    raw = copy.deepcopy(event["records"]["orders-0"][0])
    writer, sink = run(event, MAX_VALUE_BYTES="1000")
    assert writer.pending == []
    [letter] = sink.letters
    assert reason in letter.reason
    assert letter.value == (raw["value"] if isinstance(raw["value"], str) else None)
    assert letter.headers == raw["headers"]
    if isinstance(raw["offset"], int):
        assert (letter.partition, letter.offset) == (0, 5)


def test_a_record_that_is_not_an_object_is_dead_lettered() -> None:
    event = {"eventSource": "SelfManagedKafka", "records": {"orders-0": ["oops"]}}
    _, sink = run(event)
    assert [letter.reason for letter in sink.letters] == ["record must be a JSON object"]


def test_null_keys_null_values_and_non_ascii_headers() -> None:
    gen = EventGenerator(seed=1)
    order = gen.order()
    event = gen.event(
        [
            RawRecord("orders", None, order.value, (("h\u00e9", bytes([0xFF, 0xC3, 0xA9])),)),  # null key
            RawRecord("orders", order.key, None),  # tombstone, null value
        ]
    )
    writer, sink = run(event)
    assert [p[0].code for p in writer.pending] == ["S", "D"]
    assert not sink.letters


def test_records_are_applied_in_partition_order_even_when_delivered_out_of_order() -> None:
    gen = EventGenerator(seed=2, partitions=1)
    event = gen.event([gen.order() for _ in range(5)])
    event["records"]["orders-0"].reverse()
    writer, _ = run(event)
    assert [p[3] for p in writer.pending] == [0, 1, 2, 3, 4]


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"REDIS_URL": "http://cache:6379"}, "must start with redis:// or rediss://"),
        ({"REDIS_CLUSTER": "maybe"}, "REDIS_CLUSTER must be true or false"),
        ({"ORDERS_TTL_SECONDS": "soon"}, "ORDERS_TTL_SECONDS must be a int"),
        ({"SCRIPT_BATCH_SIZE": "0"}, "SCRIPT_BATCH_SIZE must be at least 1"),
        ({"SCRIPT_BATCH_SIZE": "1998"}, "SCRIPT_BATCH_SIZE must be at most 1997, got 1998: .* 3999 arguments"),
        ({"INVENTORY_KEY_PREFIX": "{inv}"}, "must not contain braces"),
        ({"REDIS_WAIT_REPLICAS": "-1"}, "REDIS_WAIT_REPLICAS must be at least 0"),
        ({"REDIS_WAIT_TIMEOUT_MS": "0"}, "REDIS_WAIT_TIMEOUT_MS must be at least 1"),
        ({"ORDER_OWNER_FIELD": "customer..id"}, "ORDER_OWNER_FIELD must be a field name or a dotted path"),
        ({"ORDER_OWNER_FIELD": "customer id"}, "ORDER_OWNER_FIELD must be a field name or a dotted path"),
        ({"ORDER_OWNER_CLAIM": "custom: id"}, "ORDER_OWNER_CLAIM must be one word"),
        ({"STAFF_SCOPE": "a b"}, "STAFF_SCOPE must be one word"),
    ],
)
def test_bad_configuration_is_refused_with_a_clear_message(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Settings.from_env(env)


def test_configuration_defaults_and_tls() -> None:
    settings = Settings.from_env({"REDIS_URL": "rediss://cache.example:6379", "REDIS_CLUSTER": "true"})
    assert settings.tls and settings.cluster
    assert [t.topic for t in settings.topics] == ["orders", "inventory", "products"]
