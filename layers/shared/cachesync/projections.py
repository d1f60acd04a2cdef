"""How one Kafka record becomes one Redis mutation, per topic.

Each projection checks only what it needs to apply the record and returns a
`Mutation`, or raises `PoisonRecord` with a reason a person can act on. Every
other field passes through: documents are stored byte for byte as produced.
Nothing here talks to Redis.

The kinds (each topic's kind is its entry in topics.toml; values are UTF-8 JSON, and a
null value is a tombstone):

document      a JSON object whose key field (orders: "orderid", products: "sku") names the key
              -> SET <prefix>:<id> <value bytes as received>
              tombstone (record key = the id) -> DEL <prefix>:<id>

stock_ledger  {"type": "shipment" | "purchase" | "count" | "remove",
               "store": "store1", "sku": "0123456789", "units": 6, ...}
              units: a whole, non-negative number (6 or 6.0; 6.5 is refused)
              shipment -> ZINCRBY <prefix>:<store> +units sku:<sku>
              purchase -> ZINCRBY <prefix>:<store> -units sku:<sku>
              count    -> ZADD    <prefix>:<store> units sku:<sku>   (a stock take)
              remove   -> ZREM    <prefix>:<store> sku:<sku>         (units not needed)
              tombstones have no meaning here and are dead-lettered.

Keying rule (what keeps one Redis key's updates in one partition, so in order):
the Kafka record key is the document's id, and "<store>:<sku>" for a stock
ledger. `partition_key` gives it for a mutation.

A topic may also have a JSON Schema (`<NAME>_SCHEMA`, see cachesync.schemas).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, NamedTuple

import orjson

from cachesync import keys, schemas
from cachesync.config import DOCUMENT, STOCK_LEDGER, TopicConfig
from cachesync.poison import PoisonRecord

# Mutation codes understood by the fence script (fence.lua, planned by cachesync.plan).
SET, DELETE, INCREMENT, ASSIGN, REMOVE = "S", "D", "I", "Z", "R"


class Mutation(NamedTuple):
    # a NamedTuple, not a dataclass: one is built per record on the hot path,
    # and a tuple is built in a third of the time of a frozen dataclass
    key: str
    code: str
    member: str = ""  # sorted-set member, or "" for string keys
    argument: bytes | str = b""  # the value for SET, the score or delta for sorted sets
    ttl: int = 0


def project(config: TopicConfig, record_key: bytes | None, value: bytes | None) -> Mutation:
    """The mutation one record asks for; `PoisonRecord` if it cannot be applied.

    The record key is only read for tombstones (it names the key to delete).
    """
    return _PROJECTIONS[config.kind](config, record_key, value)


_MISSING = object()


def _document(config: TopicConfig, record_key: bytes | None, value: bytes | None) -> Mutation:
    """orders and products: one JSON document per key, stored as received, deleted by a tombstone."""
    if value is None:
        identifier = _tombstone_identifier(record_key)
        return Mutation(keys.data_key(config.key_prefix, identifier), DELETE)
    document = _json_object(value, config)
    key = keys.data_key(config.key_prefix, _identifier(document, config.key_field, value))
    return Mutation(key, SET, "", value, config.ttl_seconds)


INVENTORY_TYPES = ("shipment", "purchase", "count", "remove")


def _stock_ledger(config: TopicConfig, record_key: bytes | None, value: bytes | None) -> Mutation:
    if value is None:
        raise PoisonRecord(f"{config.name} events cannot be tombstones; send a 'remove' or a 'count' event")
    event = _json_object(value, config)
    kind = event.get("type")
    if kind not in INVENTORY_TYPES:
        raise PoisonRecord(f"field 'type' must be one of {', '.join(INVENTORY_TYPES)}, got {kind!r}")
    key = keys.data_key(config.key_prefix, _identifier(event, config.key_field, value))
    member = keys.sku_member(_identifier(event, "sku", value))
    if kind == "remove":
        return Mutation(key, REMOVE, member, ttl=config.ttl_seconds)
    units = _units(event.get("units", _MISSING))
    if kind == "count":
        return Mutation(key, ASSIGN, member, units, config.ttl_seconds)
    return Mutation(key, INCREMENT, member, units if kind == "shipment" else "-" + units, config.ttl_seconds)


def _units(units: Any) -> str:
    """A whole, non-negative number of units as text: 6 and 6.0 give "6"; 6.5 is poison."""
    if type(units) is int:
        if units < 0:
            raise PoisonRecord("field 'units' must not be negative")
        return str(units)
    if type(units) is float:
        if not units.is_integer():
            raise PoisonRecord(f"field 'units' must be a whole number, got {units!r}")
        return _units(int(units))
    if units is _MISSING:
        raise PoisonRecord("field 'units' is missing")
    raise PoisonRecord(f"field 'units' must be a whole number, got {type(units).__name__}")


def partition_key(config: TopicConfig, mutation: Mutation) -> str:
    """The Kafka record key the keying rule asks producers to use for this mutation's record."""
    identifier = mutation.key[len(config.key_prefix) + 1 :]
    if config.kind == STOCK_LEDGER:
        return f"{identifier}:{keys.sku_from_member(mutation.member)}"
    return identifier


_PROJECTIONS: dict[str, Callable[[TopicConfig, bytes | None, bytes | None], Mutation]] = {
    DOCUMENT: _document,
    STOCK_LEDGER: _stock_ledger,
}


def _json_object(value: bytes, config: TopicConfig) -> dict[str, Any]:
    try:
        document = orjson.loads(value)
    except orjson.JSONDecodeError as error:
        document = _slow_json(value, error)
    if type(document) is not dict:
        raise PoisonRecord(f"value must be a JSON object, got {type(document).__name__}")
    if config.schema is not None:
        try:
            schemas.validate(config.schema, document)
        except schemas.SchemaMismatch as mismatch:
            raise PoisonRecord(f"value does not match the {config.name} schema: {mismatch}") from None
    return document


def _slow_json(value: bytes, error: orjson.JSONDecodeError | None) -> Any:
    """orjson refuses some valid JSON (integers beyond 64 bits, lone surrogate escapes):
    a cache stores what arrives, so those are read again with the standard parser."""
    try:
        return json.loads(value, parse_constant=_not_json)
    except (ValueError, RecursionError):  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise PoisonRecord(f"value is not valid JSON: {error}") from None


def _not_json(constant: str) -> Any:
    raise ValueError(f"{constant} is not JSON")


def _identifier(document: dict[str, Any], name: str, value: bytes | None = None) -> str:
    raw = document.get(name, _MISSING)
    if type(raw) is int and raw >= 0:
        return str(raw)  # a non-negative integer is always a valid identifier
    if type(raw) is str and keys.IDENTIFIER.fullmatch(raw):
        return raw
    if raw is _MISSING:
        raise PoisonRecord(f"field '{name}' is missing")
    if type(raw) is float and value is not None:
        # orjson reads an integer beyond 64 bits as a float: read the exact one again
        return _identifier(_slow_json(value, None), name)
    if type(raw) not in (int, str):
        raise PoisonRecord(f"field '{name}' must be a string or an integer, got {type(raw).__name__}")
    try:
        return keys.check_identifier(str(raw), f"field '{name}'")
    except keys.InvalidIdentifier as error:
        raise PoisonRecord(str(error)) from None


def _tombstone_identifier(record_key: bytes | None) -> str:
    if record_key is None:
        raise PoisonRecord("tombstone without a record key: nothing to delete")
    try:
        text = record_key.decode("utf-8")
    except UnicodeDecodeError:
        raise PoisonRecord("tombstone record key is not UTF-8") from None
    try:
        return keys.check_identifier(text, "tombstone record key")
    except keys.InvalidIdentifier as error:
        raise PoisonRecord(str(error)) from None
