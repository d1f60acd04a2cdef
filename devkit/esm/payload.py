"""The invocation payload Lambda builds from Kafka records, byte for byte.

    {"eventSource": "SelfManagedKafka", "bootstrapServers": "host:9092,host2:9092",
     "records": {"<topic>-<partition>": [{"topic", "partition", "offset", "timestamp",
                 "timestampType", "key", "value", "headers"}, ...]}}

- `key` and `value` are base64; a record without a key has no `key` field,
  and a tombstone's `value` is null;
- `headers` is a list of one-entry objects, name to the value's bytes as
  signed ints (Java bytes, -128..127): "ë" is [-61, -85];
- `timestampType` is CREATE_TIME or LOG_APPEND_TIME;
- with a schema registry, `keySchemaMetadata` and `valueSchemaMetadata`
  (`{"dataFormat": "AVRO", "schemaId": "1"}`) name what the key and value were
  written with (devkit.esm.registry).
"""

from __future__ import annotations

import binascii
import json
from collections.abc import Iterable, Sequence
from functools import lru_cache
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from devkit.esm.mapping import SchemaRegistry

EVENT_SOURCE = "SelfManagedKafka"
MAX_PAYLOAD_BYTES = 6 * 1024 * 1024  # Lambda's synchronous invocation payload limit
TIMESTAMP_TYPES = {1: "CREATE_TIME", 2: "LOG_APPEND_TIME"}
# the bytes an event spends around its records and bootstrap servers:
# {"eventSource":"SelfManagedKafka","bootstrapServers":"","records":{}}
_EVENT_OVERHEAD = 69


class Record:
    """One Kafka record as Lambda delivers it, with its encoded size in the payload.

    A plain class with slots, its partition's name made once: the poller makes one for every
    record it fetches and reads the name several times over (a frozen dataclass's __init__
    and a property cost as much as the rest of the record's way to the function)."""

    __slots__ = ("body", "offset", "partition", "partition_key", "rejected", "size", "timestamp", "topic")

    def __init__(
        self,
        topic: str,
        partition: int,
        offset: int,
        timestamp: int,  # epoch ms
        body: dict[str, Any],  # the record's JSON object in the payload
        size: int,  # bytes of that object in the payload, separator included
        # why Lambda keeps it from the function (a schema registry's DESERIALIZATION_ERROR or
        # SCHEMA_NOT_FOUND): it goes to the on-failure destination instead
        rejected: str | None = None,
    ):
        self.topic = topic
        self.partition = partition
        self.offset = offset
        self.timestamp = timestamp
        self.body = body
        self.size = size
        self.rejected = rejected
        self.partition_key = f"{topic}-{partition}"  # the payload's name for its partition

    def __repr__(self) -> str:
        return f"Record({self.partition_key}@{self.offset}, {self.size} bytes)"


def lambda_record(
    topic: str,
    partition: int,
    offset: int,
    timestamp: int,
    key: bytes | None,
    value: bytes | None,
    headers: Sequence[tuple[str, bytes | None]] | None = None,
    timestamp_type: str = "CREATE_TIME",
) -> dict[str, Any]:
    record: dict[str, Any] = {
        "topic": topic,
        "partition": partition,
        "offset": offset,
        "timestamp": timestamp,
        "timestampType": timestamp_type,
    }
    if key is not None:
        record["key"] = _base64(key, newline=False).decode()
    record["value"] = None if value is None else _base64(value, newline=False).decode()
    record["headers"] = [{name: signed_bytes(data or b"")} for name, data in headers] if headers else []
    return record


_base64 = binascii.b2a_base64  # base64.b64encode's own encoder, without its checks


def signed_bytes(data: bytes) -> list[int]:
    return [b - 256 if b > 127 else b for b in data]


def from_message(message: Any, registry: SchemaRegistry | None = None) -> Record:
    """A confluent_kafka.Message as Lambda's payload carries it (through the mapping's schema registry)."""
    kind, timestamp = message.timestamp()
    topic, partition, offset = message.topic(), message.partition(), message.offset()
    headers = message.headers()
    timestamp_type = TIMESTAMP_TYPES.get(kind, "CREATE_TIME")
    body = lambda_record(topic, partition, offset, timestamp, message.key(), message.value(), headers, timestamp_type)
    if registry is not None:
        from devkit.esm import registry as schema_registry

        rejected = schema_registry.apply(registry, body)
        return Record(topic, partition, offset, timestamp, body, encoded_size(body), rejected)
    if headers:
        return Record(topic, partition, offset, timestamp, body, encoded_size(body))
    # most records: no headers, no schema registry. encoded_size's sum from the encoded strings,
    # without serialising the body, the poller's share of every record's cost
    size = _fixed_size(topic, timestamp_type) + len(str(partition)) + len(str(offset)) + len(str(timestamp))
    value = body["value"]
    size += 4 if value is None else 2 + len(value)
    if "key" in body:
        size += 9 + len(body["key"])
    return Record(topic, partition, offset, timestamp, body, size)


@lru_cache(maxsize=256)
def _fixed_size(topic: str, timestamp_type: str) -> int:
    """What encoded_size counts for a record's names and empty headers, whatever its numbers and bytes."""
    return 94 + len(json.dumps(topic)) + len(timestamp_type)


def encoded_size(body: dict[str, Any]) -> int:
    """Bytes of the record's compact JSON in the payload, separator included, never fewer, without
    encoding the values: base64 and numbers are ASCII; only the names go through JSON."""
    size = _fixed_size(body["topic"], body["timestampType"])
    size += len(str(body["partition"])) + len(str(body["offset"])) + len(str(body["timestamp"]))
    if "key" in body:
        size += 9 + len(body["key"])
    value = body["value"]
    size += 4 if value is None else 2 + len(value)
    for header in body["headers"]:
        for name, data in header.items():
            size += 5 + len(json.dumps(name)) + sum(len(str(b)) + 1 for b in data)
    for name in ("keySchemaMetadata", "valueSchemaMetadata"):
        if name in body:
            size += len(json.dumps({name: body[name]}, separators=(",", ":")))
    return size


def event(records: Iterable[Record], bootstrap_servers: Sequence[str]) -> dict[str, Any]:
    """The event of a batch: records grouped by topic-partition, each in offset order."""
    grouped: dict[str, list[dict[str, Any]]] = {}
    for record in records:
        grouped.setdefault(record.partition_key, []).append(record.body)
    return {"eventSource": EVENT_SOURCE, "bootstrapServers": ",".join(bootstrap_servers), "records": grouped}


def payload_size(records: Sequence[Record], bootstrap_servers: Sequence[str]) -> int:
    partitions = {record.partition_key for record in records}
    overhead = _servers_bytes(tuple(bootstrap_servers)) + sum(partition_bytes(p) for p in partitions)
    return overhead + sum(record.size for record in records)


@lru_cache(maxsize=1024)
def partition_bytes(partition_key: str) -> int:
    """What a partition's list costs an event around its records: "<topic>-<n>":[...],"""
    return len(json.dumps(partition_key)) + 4


@lru_cache(maxsize=64)
def _servers_bytes(bootstrap_servers: tuple[str, ...]) -> int:
    return _EVENT_OVERHEAD + len(json.dumps(",".join(bootstrap_servers))) - 2
