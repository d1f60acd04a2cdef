"""One Kafka batch in, Redis writes and dead letters out.

The handler stays thin: it hands the event to `Ingestor.process` and reports
the returned `BatchOutcome` as logs and metrics.
"""

from __future__ import annotations

import base64
import binascii
import itertools
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from aws_lambda_powertools.utilities.data_classes.kafka_event import KafkaEvent, KafkaEventRecord

from cachesync.config import Settings
from cachesync.connection import get_client
from cachesync.deadletter import DeadLetter, DeadLetterSink, RedisStreamSink, SqsSink
from cachesync.projections import PoisonRecord, project
from cachesync.writer import BatchWriter, Pending

# Lambda's self-managed Kafka events say "SelfManagedKafka"; older ones and
# some tooling say "aws:SelfManagedKafka". MSK batches have the same shape.
KAFKA_EVENT_SOURCES = frozenset({"SelfManagedKafka", "aws:SelfManagedKafka", "aws:kafka"})


class InvalidEvent(ValueError):
    """The invocation payload is not a Kafka batch at all (a wiring mistake, not a poison record)."""


@dataclass
class PartitionRange:
    first: int
    last: int
    records: int = 0
    max_lag_ms: int | None = None


@dataclass
class BatchOutcome:
    records: int = 0
    applied: int = 0
    duplicates: int = 0
    dead_lettered: int = 0
    partitions: dict[str, PartitionRange] = field(default_factory=dict)
    reasons: list[str] = field(default_factory=list)  # first few dead-letter reasons, for the log

    def summary(self) -> dict[str, Any]:
        return {
            "records": self.records,
            "applied": self.applied,
            "duplicates": self.duplicates,
            "deadLettered": self.dead_lettered,
        }


class Ingestor:
    def __init__(
        self,
        settings: Settings,
        writer: BatchWriter,
        dead_letters: DeadLetterSink,
        clock: Callable[[], float] = time.time,
    ):
        self._settings, self._writer, self._dead_letters, self._clock = settings, writer, dead_letters, clock

    def process(self, event: dict[str, Any]) -> BatchOutcome:
        outcome = BatchOutcome()
        pending: list[Pending] = []
        sources: list[KafkaEventRecord] = []  # the record behind each pending mutation
        letters: list[DeadLetter] = []

        for record in _records(event):
            outcome.records += 1
            try:
                pending.append(self._pending(record))
                sources.append(record)
            except PoisonRecord as poison:
                letters.append(_dead_letter(record, str(poison)))

        written = self._writer.apply(pending)
        outcome.applied, outcome.duplicates = written.applied, written.skipped
        for index, error in written.refused:
            letters.append(_dead_letter(sources[index], f"Redis refused the write: {error}"))

        # Dead letters go last: if sending them fails, the invocation fails and
        # the retry re-sends them while the writes already made are skipped.
        self._dead_letters.send(letters)
        outcome.dead_lettered = len(letters)
        outcome.reasons = [letter.reason for letter in letters[:5]]
        self._track_partitions(outcome, sources)
        return outcome

    def _pending(self, record: KafkaEventRecord) -> Pending:
        if not isinstance(record.raw_event, dict):
            raise PoisonRecord("record must be a JSON object")
        topic, partition, offset = record.get("topic"), record.get("partition"), record.get("offset")
        if topic is None or partition is None or offset is None:
            raise PoisonRecord("record lacks topic, partition or offset")
        if not isinstance(topic, str) or not _is_int(partition) or not _is_int(offset) or offset < 0:
            raise PoisonRecord("record topic must be a string, partition and offset non-negative integers")
        config = self._settings.topic(topic)
        if config is None:
            raise PoisonRecord(f"no projection is configured for topic {topic!r}")
        value = _decode(record.get("value"), "value")
        if value is not None and len(value) > self._settings.max_value_bytes:
            raise PoisonRecord(f"value of {len(value)} bytes is over the limit of {self._settings.max_value_bytes}")
        mutation = project(config, _decode(record.get("key"), "key"), value)
        return Pending(mutation, topic, partition, offset)

    def _track_partitions(self, outcome: BatchOutcome, records: Iterable[KafkaEventRecord]) -> None:
        now_ms = int(self._clock() * 1000)
        for record in records:
            name = f"{record['topic']}-{record['partition']}"
            offset = record["offset"]
            span = outcome.partitions.get(name)
            if span is None:
                span = outcome.partitions[name] = PartitionRange(offset, offset)
            span.first, span.last = min(span.first, offset), max(span.last, offset)
            span.records += 1
            timestamp = _int_field(record, "timestamp")
            if timestamp is not None:
                lag = now_ms - timestamp
                span.max_lag_ms = lag if span.max_lag_ms is None else max(span.max_lag_ms, lag)


def build_ingestor(settings: Settings) -> Ingestor:
    """The ingestor the settings describe: their Redis, and SQS or a Redis stream for dead letters."""
    client = get_client(settings)
    sink: DeadLetterSink = (
        SqsSink(settings.dlq_queue_url)
        if settings.dlq_queue_url
        else RedisStreamSink(client, settings.dlq_stream_key, settings.dlq_stream_maxlen)
    )
    writer = BatchWriter(client, settings.script_batch_size, settings.tombstone_retention_seconds)
    return Ingestor(settings, writer, sink)


def _records(event: Any) -> Iterable[KafkaEventRecord]:
    """The batch's records, partition by partition in offset order."""
    if not isinstance(event, dict):
        raise InvalidEvent("the event must be a JSON object")
    source = event.get("eventSource")
    if source not in KAFKA_EVENT_SOURCES:
        raise InvalidEvent(
            f"eventSource {source!r} is not a Kafka event source ({', '.join(sorted(KAFKA_EVENT_SOURCES))})"
        )
    if not isinstance(event.get("records"), dict):
        raise InvalidEvent("'records' must be an object of topic-partition to record lists")
    for name, chunk in event["records"].items():
        if not isinstance(chunk, list):
            raise InvalidEvent(f"records[{name!r}] must be a list")
    batch = KafkaEvent(event)
    # Lambda delivers each partition in offset order; sort anyway (stable, cheap)
    # because per-key order is what makes replays exact.
    records = list(batch.records)
    ordered = all(_offset(a) <= _offset(b) for a, b in itertools.pairwise(records) if _same_partition(a, b))
    return records if ordered else sorted(records, key=lambda r: (_partition_of(r), _offset(r)))


def _decode(raw: Any, what: str) -> bytes | None:
    # Strict base64: Powertools' decoded_value silently drops invalid characters,
    # which would apply a corrupted value instead of dead-lettering it.
    if raw is None:
        return None
    if not isinstance(raw, str):
        raise PoisonRecord(f"record {what} must be a base64 string or null")
    try:
        return base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError):
        raise PoisonRecord(f"record {what} is not valid base64") from None


def _dead_letter(record: KafkaEventRecord, reason: str) -> DeadLetter:
    def text(name: str) -> str | None:
        value = _field(record, name)
        return value if isinstance(value, str) else None

    return DeadLetter(
        topic=text("topic") or "",
        partition=_int_field(record, "partition"),
        offset=_int_field(record, "offset"),
        timestamp=_int_field(record, "timestamp"),
        key=text("key"),
        value=text("value"),
        headers=_field(record, "headers"),
        reason=reason,
    )


def _field(record: KafkaEventRecord, name: str) -> Any:
    return record.raw_event.get(name) if isinstance(record.raw_event, dict) else None


def _int_field(record: KafkaEventRecord, name: str) -> int | None:
    value = _field(record, name)
    return value if _is_int(value) else None


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _offset(record: KafkaEventRecord) -> int:
    offset = _int_field(record, "offset")
    return -1 if offset is None else offset


def _partition_of(record: KafkaEventRecord) -> tuple[str, int]:
    partition = _int_field(record, "partition")
    return (str(_field(record, "topic")), -1 if partition is None else partition)


def _same_partition(a: KafkaEventRecord, b: KafkaEventRecord) -> bool:
    return _partition_of(a) == _partition_of(b)
