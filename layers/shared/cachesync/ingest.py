"""One Kafka batch in, Redis writes and dead letters out.

The handler stays thin: it hands the event to `Ingestor.process` and reports
the returned `BatchOutcome` as logs and metrics.
"""

from __future__ import annotations

import binascii
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from aws_lambda_powertools.utilities.data_classes.kafka_event import KafkaEvent

from cachesync import values
from cachesync.config import Settings
from cachesync.connection import get_client
from cachesync.deadletter import DeadLetter, DeadLetterSink, FallbackSink, RedisStreamSink, SqsSink
from cachesync.maintenance import check_source
from cachesync.plan import Pending
from cachesync.poison import PoisonRecord
from cachesync.projections import partition_key, project, record_key_identifier, record_ttl
from cachesync.writer import BatchWriter

# Lambda's self-managed Kafka events say "SelfManagedKafka"; older ones and
# some tooling say "aws:SelfManagedKafka". MSK batches have the same shape.
KAFKA_EVENT_SOURCES = frozenset({"SelfManagedKafka", "aws:SelfManagedKafka", "aws:kafka"})


# One record as Lambda delivers it: topic, partition, offset, timestamp, base64 key and value, headers.
Record = dict[str, Any]


# Kafka partitions are 32-bit; offsets are compared as Lua numbers, exact up to 2^53.
MAX_PARTITION = 2**31 - 1
MAX_OFFSET = 2**53


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
    # records whose Kafka key is not the one the keying rule asks for (README, data contracts)
    key_mismatches: int = 0
    mismatch_examples: list[str] = field(default_factory=list)  # the first few, for the log

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
        check_source: Callable[[str, str], None] | None = None,
    ):
        self._settings, self._writer, self._dead_letters, self._clock = settings, writer, dead_letters, clock
        self._check_source = check_source
        self._sources: dict[str, str] = {}  # topic -> the bootstrap servers checked in this process
        self._topics = settings.topics_by_name  # looked up once per record: no method call
        # (topic, partition, offset, record key, expected key) of records that break the keying rule
        self._mismatches: list[tuple[str, int, int, bytes | None, str]] = []

    def process(self, event: dict[str, Any], deadline: float | None = None) -> BatchOutcome:
        """Apply one batch. `deadline` (time.monotonic()) bounds how long the cache may keep turning
        writes away (slots moving, a failover) before the invocation fails."""
        self._verify_sources(event)
        outcome = BatchOutcome()
        self._mismatches = []
        sources: list[Record] = []  # the record behind each mutation, in the order written
        letters: list[DeadLetter] = []
        oldest: dict[str, int] = {}  # partition -> oldest record timestamp, for the freshness lag

        def mutations() -> Iterator[Pending]:
            for name, records in _partitions(event):
                outcome.records += len(records)
                first, last, count, earliest = -1, -1, 0, None
                for record in records:
                    try:
                        item = self._pending(record)
                    except PoisonRecord as poison:
                        letters.append(_dead_letter(record, str(poison)))
                        continue
                    sources.append(record)
                    last = item[3]  # its offset: records are in offset order
                    if not count:
                        first = last
                    count += 1
                    timestamp = record.get("timestamp")
                    if type(timestamp) is int and (earliest is None or timestamp < earliest):
                        earliest = timestamp
                    yield item
                if count:
                    outcome.partitions[name] = PartitionRange(first, last, count)
                    if earliest is not None:
                        oldest[name] = earliest

        written = self._writer.apply(mutations(), partial=True, deadline=deadline)
        outcome.applied, outcome.duplicates = written.applied, written.skipped
        for index, error in written.refused:
            letters.append(_dead_letter(sources[index], f"Redis refused the write: {error}"))

        # Dead letters go after the writes, and also when a call failed: a refused
        # write's offset has moved on, so the retry skips it as applied and would
        # never report it again. Poison records are found again by the retry.
        try:
            self._dead_letters.send(letters)
        except Exception as error:
            if written.error is not None:
                written.error.add_note(f"and {len(letters)} dead letters could not be sent: {error!r}")
                raise written.error from None
            raise
        if written.error is not None:
            raise written.error
        outcome.dead_lettered = len(letters)
        outcome.reasons = [letter.reason for letter in letters[:5]]
        outcome.key_mismatches = len(self._mismatches)
        outcome.mismatch_examples = [
            f"{topic}/{partition}@{offset}: record key "
            f"{'none' if key is None else repr(key.decode('utf-8', 'replace')[:64])}, expected {expected!r}"
            for topic, partition, offset, key, expected in self._mismatches[:5]
        ]
        now_ms = int(self._clock() * 1000)
        for name, timestamp in oldest.items():
            outcome.partitions[name].max_lag_ms = now_ms - timestamp
        return outcome

    def _verify_sources(self, event: Any) -> None:
        """Each topic's batches come from the Kafka cluster it was first applied from (once per process)."""
        if self._check_source is None or not isinstance(event, dict):
            return
        servers, partitions = event.get("bootstrapServers"), event.get("records")
        if not isinstance(servers, str) or not servers or not isinstance(partitions, dict):
            return
        for records in partitions.values():
            first = records[0] if isinstance(records, list) and records else None
            topic = first.get("topic") if isinstance(first, dict) else None
            if isinstance(topic, str) and topic in self._topics and self._sources.get(topic) != servers:
                self._check_source(topic, servers)
                self._sources[topic] = servers

    def _pending(self, record: Record) -> Pending:
        if type(record) is not dict:
            raise PoisonRecord("record must be a JSON object")
        topic, partition, offset = record.get("topic"), record.get("partition"), record.get("offset")
        if topic is None or partition is None or offset is None:
            raise PoisonRecord("record lacks topic, partition or offset")
        if type(topic) is not str or type(partition) is not int or type(offset) is not int:
            raise PoisonRecord("record topic must be a string, partition and offset non-negative integers")
        if not (0 <= partition <= MAX_PARTITION and 0 <= offset <= MAX_OFFSET):
            raise PoisonRecord(f"record partition must be 0 to {MAX_PARTITION} and offset 0 to {MAX_OFFSET}")
        config = self._topics.get(topic)
        if config is None:
            raise PoisonRecord(f"no projection is configured for topic {topic!r}")
        raw = record.get("value")
        if type(raw) is str:  # _decode's usual case, without its call
            try:
                value: bytes | None = binascii.a2b_base64(raw, strict_mode=True)
            except (binascii.Error, ValueError):
                raise PoisonRecord("record value is not valid base64") from None
        else:
            value = _decode(raw, "value")
        if value is not None and len(value) > self._settings.max_value_bytes:
            raise PoisonRecord(f"value of {len(value)} bytes is over the limit of {self._settings.max_value_bytes}")
        if value is not None and config.value_format is not None:  # Avro or Protobuf: decoded to JSON
            value = values.to_json(config.value_format, record["value"], value, record.get("valueSchemaMetadata"))
        try:
            key = _decode(record.get("key"), "key")
        except PoisonRecord:
            if value is None:
                raise  # a tombstone's key names what to delete
            key = None  # a value names its own key; the keying check below reports it
        if key is not None and record.get("keySchemaMetadata") is not None:
            key = values.registry_key(key)
        ttl = record_ttl(config, record.get("headers")) if config.ttl_header is not None else None
        mutation = project(config, key, value, ttl)
        if value is not None:
            expected = partition_key(config, mutation)
            if key is None or (
                key != expected.encode()
                # a Debezium record key is the row's key as JSON ({"id": 1001}): the same key
                and (config.envelope is None or record_key_identifier(config, key) != expected)
            ):
                # the producer's partitioner did not see this Redis key's name: its updates may
                # spread over partitions and lose their order. Reported, never reordered.
                self._mismatches.append((topic, partition, offset, key, expected))
        return (mutation, topic, partition, offset)


def deadline_after(remaining_ms: int) -> float:
    """The time.monotonic() by which a batch stops resending what the cache turns away, from the
    invocation's remaining time: what is left after it still sends the dead letters and reports."""
    remaining = remaining_ms / 1000
    return time.monotonic() + max(0.5, remaining - min(5.0, remaining / 5))


def build_ingestor(settings: Settings) -> Ingestor:
    """The ingestor the settings describe: their Redis, and SQS or a Redis stream for dead letters."""
    client = get_client(settings)
    stream = RedisStreamSink(client, settings.dlq_stream_key, settings.dlq_stream_maxlen)
    # SQS when configured, and the stream when SQS stays down, rather than failing every batch
    sink: DeadLetterSink = FallbackSink(SqsSink(settings.dlq_queue_url), stream) if settings.dlq_queue_url else stream
    writer = BatchWriter(
        client, settings.script_batch_size, settings.retries, settings.wait_replicas, settings.wait_timeout_ms
    )
    return Ingestor(settings, writer, sink, check_source=lambda topic, servers: check_source(client, topic, servers))


def _partitions(event: Any) -> Iterable[tuple[str, list[Record]]]:
    """Each topic-partition's records, in offset order.

    Powertools' KafkaEvent reads the event; the records are read as plain dicts:
    KafkaEventRecord.decoded_value drops invalid base64 characters silently,
    where a corrupted record must be dead-lettered, and every field read
    through the wrapper is a property call, for each record of every batch.
    """
    if not isinstance(event, dict):
        raise InvalidEvent("the event must be a JSON object")
    batch = KafkaEvent(event)
    source = batch.get("eventSource")
    if not isinstance(source, str) or source not in KAFKA_EVENT_SOURCES:  # a list or object is unhashable
        raise InvalidEvent(
            f"eventSource {source!r} is not a Kafka event source ({', '.join(sorted(KAFKA_EVENT_SOURCES))})"
        )
    partitions = batch.get("records")
    if not isinstance(partitions, dict):
        raise InvalidEvent("'records' must be an object of topic-partition to record lists")
    for name, records in partitions.items():
        if not isinstance(records, list):
            raise InvalidEvent(f"records[{name!r}] must be a list")
    for name, records in partitions.items():
        # Lambda delivers each partition in offset order; sort anyway (cheap when
        # already sorted) because per-key order is what makes replays exact.
        try:
            offsets = [record["offset"] for record in records]
            in_order = offsets == sorted(offsets)
        except (TypeError, KeyError):  # a malformed record: sort by what can be read
            in_order = False
        yield name, records if in_order else sorted(records, key=_offset)


def _decode(raw: Any, what: str) -> bytes | None:
    # Strict base64: Powertools' decoded_value silently drops invalid characters,
    # which would apply a corrupted value instead of dead-lettering it.
    if raw is None:
        return None
    if not isinstance(raw, str):
        raise PoisonRecord(f"record {what} must be a base64 string or null")
    try:
        return binascii.a2b_base64(raw, strict_mode=True)
    except (binascii.Error, ValueError):
        raise PoisonRecord(f"record {what} is not valid base64") from None


def _dead_letter(record: Record, reason: str) -> DeadLetter:
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


def _field(record: Record, name: str) -> Any:
    return record.get(name) if isinstance(record, dict) else None


def _int_field(record: Record, name: str) -> int | None:
    value = _field(record, name)
    return value if _is_int(value) else None


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _offset(record: Record) -> int:
    offset = _int_field(record, "offset")
    return -1 if offset is None else offset
