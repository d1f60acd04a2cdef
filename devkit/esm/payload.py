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

import base64
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from devkit.esm.mapping import SchemaRegistry

EVENT_SOURCE = "SelfManagedKafka"
MAX_PAYLOAD_BYTES = 6 * 1024 * 1024  # Lambda's synchronous invocation payload limit
TIMESTAMP_TYPES = {1: "CREATE_TIME", 2: "LOG_APPEND_TIME"}
# the bytes an event spends around its records and bootstrap servers:
# {"eventSource":"SelfManagedKafka","bootstrapServers":"","records":{}}
_EVENT_OVERHEAD = 69


@dataclass(frozen=True)
class Record:
    """One Kafka record as Lambda delivers it, with its encoded size in the payload."""

    topic: str
    partition: int
    offset: int
    timestamp: int  # epoch ms
    body: dict[str, Any]  # the record's JSON object in the payload
    size: int  # bytes of that object in the payload, separator included
    # why Lambda keeps it from the function (a schema registry's DESERIALIZATION_ERROR or
    # SCHEMA_NOT_FOUND): it goes to the on-failure destination instead
    rejected: str | None = None

    @property
    def partition_key(self) -> str:
        return f"{self.topic}-{self.partition}"


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
        record["key"] = base64.b64encode(key).decode()
    record["value"] = None if value is None else base64.b64encode(value).decode()
    record["headers"] = [{name: signed_bytes(data or b"")} for name, data in headers or ()]
    return record


def signed_bytes(data: bytes) -> list[int]:
    return [b - 256 if b > 127 else b for b in data]


def from_message(message: Any, registry: SchemaRegistry | None = None) -> Record:
    """A confluent_kafka.Message as Lambda's payload carries it (through the mapping's schema registry)."""
    kind, timestamp = message.timestamp()
    body = lambda_record(
        topic=message.topic(),
        partition=message.partition(),
        offset=message.offset(),
        timestamp=timestamp,
        key=message.key(),
        value=message.value(),
        headers=message.headers(),
        timestamp_type=TIMESTAMP_TYPES.get(kind, "CREATE_TIME"),
    )
    rejected = None
    if registry is not None:
        from devkit.esm import registry as schema_registry

        rejected = schema_registry.apply(registry, body)
    return Record(body["topic"], body["partition"], body["offset"], timestamp, body, encoded_size(body), rejected)


def encoded_size(body: dict[str, Any]) -> int:
    """Bytes of the record's compact JSON in the payload, separator included, never fewer, without
    encoding the values: base64 and numbers are ASCII; only the names go through JSON."""
    size = 94 + len(json.dumps(body["topic"])) + len(str(body["partition"])) + len(str(body["offset"]))
    size += len(str(body["timestamp"])) + len(body["timestampType"])
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
    overhead = _EVENT_OVERHEAD + len(json.dumps(",".join(bootstrap_servers))) - 2
    overhead += sum(len(json.dumps(p)) + 4 for p in partitions)  # "<topic>-<n>":[...],
    return overhead + sum(record.size for record in records)
