"""Avro and Protobuf record values, decoded into the JSON document the projections read.

A topic's values are JSON unless `<KIND>_VALUE_FORMAT` says `avro` or `protobuf`.
JSON also covers a mapping with Confluent Schema Registry and
`EventRecordFormat: JSON`: Lambda has already turned the value into JSON.

For `avro` and `protobuf` the function decodes with the schema in
`<KIND>_VALUE_SCHEMA`, through Powertools' Kafka consumer deserializers:

- a record with `valueSchemaMetadata` came through a mapping with a schema
  registry and `EventRecordFormat: SOURCE`: Lambda removed the Confluent header
  (magic byte 0 and the 4-byte schema id) and names the schema id in the metadata;
- a record without it came straight from the producer: in Confluent's wire
  format (the default, `<KIND>_VALUE_WIRE_FORMAT=confluent`) the header is read
  here, or plain Avro / Protobuf bytes (`plain`).

A value that cannot be decoded is a poison record whose reason starts with
Lambda's own code for it: DESERIALIZATION_ERROR, or SCHEMA_NOT_FOUND for a
schema id the configuration does not know.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from decimal import Decimal
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import orjson

from cachesync.poison import PoisonRecord

FORMATS = ("json", "avro", "protobuf")
WIRE_FORMATS = ("confluent", "plain")
DESERIALIZATION_ERROR = "DESERIALIZATION_ERROR"
SCHEMA_NOT_FOUND = "SCHEMA_NOT_FOUND"
# the schemas shipped for the Datagen-like topics: a bare file name is looked up here
BUNDLED_SCHEMAS = Path(__file__).parent / "value_schemas"
_CONFLUENT_HEADER = 5  # magic byte 0 and a big-endian 4-byte schema id


class ValueFormatError(ValueError):
    """A value format setting that cannot work (unknown format, unreadable or invalid schema)."""


@dataclass(frozen=True)
class ValueSchema:
    schema_id: str | None  # the registry's id of this schema; None: whatever id a record names
    source: str  # where it was read from, for messages
    text: str = ""  # Avro: the schema's JSON
    descriptors: bytes = b""  # Protobuf: a serialized FileDescriptorSet
    message: str = ""  # Protobuf: the message's full name


@dataclass(frozen=True)
class ValueFormat:
    """How one topic's values are encoded; immutable and hashable, as the settings are."""

    kind: str  # avro | protobuf
    schemas: tuple[ValueSchema, ...]
    confluent: bool = True  # records without schema metadata start with Confluent's 5-byte header

    @property
    def data_format(self) -> str:
        return self.kind.upper()  # as Lambda names it in valueSchemaMetadata.dataFormat

    def schema(self, schema_id: str | None) -> ValueSchema | None:
        for schema in self.schemas:
            if schema.schema_id is None or schema.schema_id == schema_id:
                return schema
        return None


def load(kind: str, setting: str, wire_format: str = "confluent") -> ValueFormat | None:
    """The value format of `<KIND>_VALUE_FORMAT`, `<KIND>_VALUE_SCHEMA` and `<KIND>_VALUE_WIRE_FORMAT`.

    The schema setting is one or more comma-separated `[<schema id>=]<file>`: an Avro
    schema (`.avsc`, JSON) or a Protobuf FileDescriptorSet (`.binpb`, as `protoc
    --descriptor_set_out` writes it) with `#<message>` when it is not the file's first
    message. A bare file name is one of the bundled schemas (cachesync/value_schemas).
    Checked here, so a wrong setting stops the function at start-up, not each record.
    """
    kind = (kind or "json").strip().lower()
    if kind not in FORMATS:
        raise ValueFormatError(f"must be one of {', '.join(FORMATS)}, got {kind!r}")
    if kind == "json":
        return None
    wire = (wire_format or "confluent").strip().lower()
    if wire not in WIRE_FORMATS:
        raise ValueFormatError(f"wire format must be one of {', '.join(WIRE_FORMATS)}, got {wire!r}")
    entries = [entry.strip() for entry in (setting or "").split(",") if entry.strip()]
    if not entries:
        raise ValueFormatError(f"{kind} values need a schema file")
    schemas = tuple(_schema(kind, entry) for entry in entries)
    if len(schemas) > 1 and any(s.schema_id is None for s in schemas):
        raise ValueFormatError("several schemas need a schema id each (<id>=<file>)")
    if len({s.schema_id for s in schemas}) != len(schemas):
        raise ValueFormatError("a schema id is given twice")
    value_format = ValueFormat(kind, schemas, wire == "confluent")
    for schema in schemas:
        _schema_config(value_format.data_format, schema)  # parse now: an invalid schema fails the configuration
    return value_format


def to_json(value_format: ValueFormat, encoded: str, value: bytes, metadata: Any) -> bytes:
    """The record's value (base64 `encoded`, `value` its bytes) as the JSON document it holds."""
    from aws_lambda_powertools.utilities.kafka.consumer_records import ConsumerRecordRecords

    kind = value_format.data_format
    wire_format: Literal["CONFLUENT"] | None = None
    if metadata is not None:  # a registry mapping with EventRecordFormat SOURCE: no header left
        if not isinstance(metadata, dict):
            raise _undecodable("valueSchemaMetadata must be an object")
        data_format, schema_id = metadata.get("dataFormat"), metadata.get("schemaId")
        if data_format != kind:
            raise _undecodable(f"the value is {data_format}, the topic's values are {kind}")
        schema_id = None if schema_id is None else str(schema_id)
    elif value_format.confluent:
        if len(value) < _CONFLUENT_HEADER or value[0] != 0:
            raise _undecodable("the value is not in Confluent's wire format (magic byte 0 and a 4-byte schema id)")
        schema_id = str(int.from_bytes(value[1:_CONFLUENT_HEADER], "big"))
        if kind == "AVRO":
            wire_format = "CONFLUENT"  # Powertools reads the header itself
        else:
            # Powertools' Protobuf deserializer takes the bytes after the header, and reads
            # the message indexes that follow it when the metadata names a schema id
            encoded = base64.b64encode(value[_CONFLUENT_HEADER:]).decode()
            metadata = {"dataFormat": kind, "schemaId": schema_id}
    else:
        schema_id = None
    schema = value_format.schema(schema_id)
    if schema is None:
        known = ", ".join(str(s.schema_id) for s in value_format.schemas)
        raise PoisonRecord(f"{SCHEMA_NOT_FOUND}: schema id {schema_id} is not one of the topic's ({known})")
    record = {"value": encoded, "valueSchemaMetadata": metadata}
    try:
        document = ConsumerRecordRecords(record, _schema_config(kind, schema, wire_format)).value
    except Exception as error:  # Powertools' deserialization errors, and the format mismatch
        raise _undecodable(f"{kind.lower()} value does not decode with {schema.source}: {error}") from None
    try:
        return orjson.dumps(document, default=_json_default)
    except TypeError as error:
        raise _undecodable(f"the decoded value has no JSON form: {error}") from None


def registry_key(key: bytes) -> bytes:
    """A record key validated by the mapping's schema registry (SchemaValidationConfigs KEY):
    with EventRecordFormat JSON it arrives as JSON, a string key as a quoted string. Its text
    is the key the keying rule and tombstones read; other keys are left as they came."""
    try:
        decoded = orjson.loads(key)
    except orjson.JSONDecodeError:
        return key
    if type(decoded) is str:
        return decoded.encode()
    if type(decoded) is int:
        return str(decoded).encode()
    return key


def _undecodable(reason: str) -> PoisonRecord:
    return PoisonRecord(f"{DESERIALIZATION_ERROR}: {reason}")


def _json_default(value: Any) -> Any:
    # Avro's own JSON encoding: bytes as the code points 0-255; decimals as numbers
    if isinstance(value, bytes):
        return value.decode("latin-1")
    if isinstance(value, Decimal):
        return float(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _schema(kind: str, entry: str) -> ValueSchema:
    schema_id, separator, location = entry.partition("=")
    if not separator:
        schema_id, location = "", entry
    schema_id = schema_id.strip()
    if separator and not schema_id.isdigit():
        raise ValueFormatError(f"schema id must be a whole number, got {schema_id!r}")
    path_text, _, message = location.strip().partition("#")
    path = Path(path_text)
    if not path.exists() and path.name == path_text:
        path = BUNDLED_SCHEMAS / path_text
    try:
        data = path.read_bytes()
    except OSError as error:
        raise ValueFormatError(f"cannot be read from {path_text!r}: {error.strerror}") from None
    normalized_id = str(int(schema_id)) if schema_id else None
    if kind == "avro":
        try:
            text = data.decode()
        except UnicodeDecodeError:
            raise ValueFormatError(f"{path_text!r} is not an Avro schema (JSON text)") from None
        return ValueSchema(normalized_id, path.name, text=text)
    return ValueSchema(normalized_id, path.name, descriptors=data, message=message or _first_message(data, path.name))


def _first_message(descriptors: bytes, name: str) -> str:
    """The first message of the set's last file (the one compiled; imports come first):
    message index 0, which Confluent's serializers write as the default."""
    files = _descriptor_set(descriptors, name).file
    if not files or not files[-1].message_type:
        raise ValueFormatError(f"{name!r} holds no Protobuf message")
    last = files[-1]
    return f"{last.package}.{last.message_type[0].name}" if last.package else last.message_type[0].name


def _descriptor_set(data: bytes, name: str) -> Any:
    from google.protobuf import descriptor_pb2
    from google.protobuf.message import DecodeError

    descriptor_set = descriptor_pb2.FileDescriptorSet()
    try:
        descriptor_set.ParseFromString(data)
    except DecodeError:
        raise ValueFormatError(f"{name!r} is not a Protobuf FileDescriptorSet") from None
    return descriptor_set


@lru_cache(maxsize=64)
def _schema_config(kind: str, schema: ValueSchema, wire_format: Literal["CONFLUENT"] | None = None) -> Any:
    from aws_lambda_powertools.utilities.kafka import SchemaConfig

    if kind == "AVRO":
        from avro.schema import parse

        try:
            parse(schema.text)
        except Exception as error:  # avro raises several types for a bad schema
            raise ValueFormatError(f"{schema.source!r} is not a valid Avro schema: {error}") from None
        return SchemaConfig(value_schema_type="AVRO", value_schema=schema.text, value_schema_wire_format=wire_format)
    return SchemaConfig(value_schema_type="PROTOBUF", value_schema=message_class(schema))


@lru_cache(maxsize=64)
def message_class(schema: ValueSchema) -> Any:
    """The Protobuf message class of the schema, built from its descriptor set."""
    from google.protobuf import descriptor_pool, message_factory

    pool = descriptor_pool.DescriptorPool()  # a pool of its own: no clash with other schemas' names
    try:
        for file in _descriptor_set(schema.descriptors, schema.source).file:
            pool.Add(file)
        descriptor = pool.FindMessageTypeByName(schema.message)
    except KeyError:
        raise ValueFormatError(f"{schema.source!r} has no message {schema.message!r}") from None
    except TypeError as error:  # a set missing its imports, or names defined twice
        raise ValueFormatError(f"{schema.source!r} is not a complete FileDescriptorSet: {error}") from None
    return message_factory.GetMessageClass(descriptor)
