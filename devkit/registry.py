"""Avro and Protobuf values for the local tools, with a fixed local schema registry.

No schema registry runs here, so the bundled schemas (cachesync/value_schemas)
stand in for one, each under a fixed schema id. The producer writes with them
(Confluent's wire format: magic byte 0, the 4-byte schema id, for Protobuf the
message indexes, then the body), the local event source mapping reads them as
Lambda reads a registry's schemas, and `function_environment` configures
IngestFunction to decode them itself when the mapping has no registry.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache, lru_cache
from typing import Any

from cachesync.values import ValueFormat, ValueSchema, message_class
from cachesync.values import load as load_value_format

VALUE_FORMATS = ("json", "avro", "protobuf")
KINDS = ("orders", "inventory", "products")
SCHEMA_FILES = {"avro": ".avsc", "protobuf": ".binpb"}
# the local registry: one id per topic and format, as a registry gives one per subject version
SCHEMA_IDS = {
    ("orders", "avro"): 1,
    ("inventory", "avro"): 2,
    ("products", "avro"): 3,
    ("orders", "protobuf"): 4,
    ("inventory", "protobuf"): 5,
    ("products", "protobuf"): 6,
}


@dataclass(frozen=True)
class RegisteredSchema:
    schema_id: int
    kind: str  # orders | inventory | products
    value_format: ValueFormat  # avro or protobuf, with this one schema

    @property
    def data_format(self) -> str:
        return self.value_format.data_format

    @property
    def schema(self) -> ValueSchema:
        return self.value_format.schemas[0]


@cache
def registered(schema_id: int) -> RegisteredSchema | None:
    """The local registry's schema of this id, or None (Lambda's SCHEMA_NOT_FOUND)."""
    for (kind, fmt), known in SCHEMA_IDS.items():
        if known == schema_id:
            loaded = load_value_format(fmt, f"{schema_id}={kind}{SCHEMA_FILES[fmt]}")
            assert loaded is not None
            return RegisteredSchema(schema_id, kind, loaded)
    return None


def function_environment(value_format: str, wire_format: str = "confluent") -> dict[str, str]:
    """IngestFunction's settings to decode these values itself (no registry integration)."""
    if value_format == "json":
        return {}
    env = {}
    for kind in KINDS:
        upper = kind.upper()
        env[f"{upper}_VALUE_FORMAT"] = value_format
        env[f"{upper}_VALUE_SCHEMA"] = f"{SCHEMA_IDS[(kind, value_format)]}={kind}{SCHEMA_FILES[value_format]}"
        env[f"{upper}_VALUE_WIRE_FORMAT"] = wire_format
    return env


class ValueEncoder:
    """Encodes generated documents as a producer with the registry's serializer would."""

    def __init__(self, value_format: str, confluent: bool = True):
        if value_format not in ("avro", "protobuf"):
            raise ValueError(f"value format must be avro or protobuf, got {value_format!r}")
        self.value_format, self.confluent = value_format, confluent

    def encode(self, kind: str, document: Mapping[str, Any]) -> bytes:
        schema_id = SCHEMA_IDS[(kind, self.value_format)]
        entry = registered(schema_id)
        assert entry is not None
        body: bytes
        if self.value_format == "avro":
            body = _avro_writer(entry.schema.text)(document)
            indexes = b""
        else:
            from google.protobuf import json_format

            message = json_format.ParseDict(document, message_class(entry.schema)())
            body = message.SerializeToString()
            indexes = b"\x00"  # Confluent's message indexes: the file's first message
        if not self.confluent:
            return body
        return b"\x00" + schema_id.to_bytes(4, "big") + indexes + body


@lru_cache(maxsize=8)
def _avro_writer(schema_text: str) -> Any:
    from avro.io import BinaryEncoder, DatumWriter
    from avro.schema import parse

    writer = DatumWriter(parse(schema_text))

    def write(document: Mapping[str, Any]) -> bytes:
        buffer = io.BytesIO()
        writer.write(document, BinaryEncoder(buffer))
        return buffer.getvalue()

    return write
