"""What a mapping with a schema registry does to each record before the function sees it.

Lambda, for each attribute in SchemaValidationConfigs (KEY, VALUE), reads the
schema id from Confluent's header, fetches that schema from the registry and
deserializes with it. A schema it cannot find sends the record to the
on-failure destination as SCHEMA_NOT_FOUND, bytes that do not decode as
DESERIALIZATION_ERROR; the function never sees either. The others reach it
with `keySchemaMetadata` / `valueSchemaMetadata` (`dataFormat`, `schemaId`)
and, per EventRecordFormat, as JSON or as the source bytes without the header.

No registry runs here: devkit.registry's fixed local ids and bundled schemas
stand in for it, whatever SchemaRegistryURI says.
"""

from __future__ import annotations

import base64
from typing import Any

from cachesync.poison import PoisonRecord
from cachesync.values import DESERIALIZATION_ERROR, SCHEMA_NOT_FOUND, to_json
from devkit.esm.mapping import SchemaRegistry
from devkit.registry import registered

_FIELDS = {"KEY": ("key", "keySchemaMetadata"), "VALUE": ("value", "valueSchemaMetadata")}


def apply(registry: SchemaRegistry, body: dict[str, Any]) -> str | None:
    """Turns a Lambda record (`body`, as devkit.esm.payload builds it) into what the function
    gets with this registry, in place; or returns why Lambda keeps it from the function."""
    for attribute in registry.attributes:
        field, metadata_field = _FIELDS[attribute]
        encoded = body.get(field)
        if encoded is None:  # no key, or a tombstone: nothing to validate
            continue
        raw = base64.b64decode(encoded)
        if len(raw) < 5 or raw[0] != 0:
            return DESERIALIZATION_ERROR  # not written with a registry's serializer
        schema_id = int.from_bytes(raw[1:5], "big")
        entry = registered(schema_id)
        if entry is None:
            return SCHEMA_NOT_FOUND
        try:
            document = to_json(entry.value_format, encoded, raw, None)
        except PoisonRecord:
            return DESERIALIZATION_ERROR
        source = raw[5:]
        body[field] = base64.b64encode(document if registry.event_record_format == "JSON" else source).decode()
        body[metadata_field] = {"dataFormat": entry.data_format, "schemaId": str(schema_id)}
    return None
