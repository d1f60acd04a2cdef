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

hash          a JSON object: its top-level fields become the hash's fields, strings as they are,
              anything else (numbers, booleans, nested objects and arrays) as compact JSON text;
              null means "no such field"
              replace -> DEL + HSET <prefix>:<id> <the non-null fields>  (exactly the new fields)
              merge   -> HSET the non-null fields, HDEL the null ones    (the others kept)
              tombstone -> DEL

json          a JSON object, as a RedisJSON document
              replace -> DEL + JSON.SET <prefix>:<id> $ <value>
              merge   -> JSON.MERGE <prefix>:<id> $ <value> (RFC 7396: null removes a member)
              tombstone -> DEL

stream        a JSON object appended as one entry of the stream <prefix>:<id>, its non-null
              top-level fields as the entry's fields (encoded as a hash's)
              -> XADD <prefix>:<id> [MAXLEN ~ max_length] * <fields>
              tombstones cannot take an entry back and are dead-lettered.

A document, hash or json topic may carry Debezium change events (`envelope = "debezium"`,
with or without the JSON converter's schema/payload wrapper): op c, r and u write the `after`
row as the kind writes a value; d deletes the key (named by `before` or the record key); the
tombstone that follows a delete deletes it again, harmlessly. A truncate (t) or another op is
dead-lettered with the reason: a truncate has no key and no order against the row events of
other partitions, so the cache cannot apply it exactly (README, Debezium change events).

A record header named by the topic's `ttl_header` sets its key's TTL in whole seconds, in place
of the topic's `ttl_seconds`; 0 sets none.

Keying rule (what keeps one Redis key's updates in one partition, so in order):
the Kafka record key is the document's id, and "<store>:<sku>" for a stock
ledger. `partition_key` gives it for a mutation.

A topic may also have a JSON Schema (`<NAME>_SCHEMA`, see cachesync.schemas).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any, NamedTuple

import orjson

from cachesync import keys, schemas
from cachesync.config import (
    DEBEZIUM,
    DOCUMENT,
    HASH,
    JSON,
    MAX_RECORD_FIELDS,
    MERGE,
    STOCK_LEDGER,
    STREAM,
    TopicConfig,
)
from cachesync.poison import PoisonRecord

# Mutation codes understood by the fence script (fence.lua, planned by cachesync.plan).
SET, DELETE, INCREMENT, ASSIGN, REMOVE = "S", "D", "I", "Z", "R"
HASH_REPLACE, HASH_MERGE, JSON_SET, JSON_MERGE, STREAM_ADD = "H", "M", "J", "N", "X"

# Field and value pairs of a hash write or a stream entry, flattened: f1, v1, f2, v2, ...
Fields = tuple[bytes, ...]


class Mutation(NamedTuple):
    # a NamedTuple, not a dataclass: one is built per record on the hot path,
    # and a tuple is built in a third of the time of a frozen dataclass
    key: str
    code: str
    member: str = ""  # sorted-set member, or "" for other keys
    # the value for SET, JSON_SET and JSON_MERGE; the score or delta for sorted sets;
    # the fields (Fields) of a hash write or a stream entry
    argument: bytes | str | Fields = b""
    ttl: int = 0
    removed: Fields = ()  # HASH_MERGE: the fields a null removes
    max_length: int = 0  # STREAM_ADD: trim the stream to about this many entries (0: never)


def project(config: TopicConfig, record_key: bytes | None, value: bytes | None, ttl: int | None = None) -> Mutation:
    """The mutation one record asks for; `PoisonRecord` if it cannot be applied.

    The record key is read for tombstones (it names the key to delete) and for Debezium
    events whose row does not name its key. `ttl`: the record's own (its `ttl_header`),
    else the topic's.
    """
    if ttl is None:
        ttl = config.ttl_seconds
    if config.envelope == DEBEZIUM:
        return _debezium(config, record_key, value, ttl)
    return _PROJECTIONS[config.kind](config, record_key, value, ttl)


_MISSING = object()
# a Mutation from all its fields at once, in half the time of its constructor (which fills in defaults)
_new_mutation = tuple.__new__


def _document(config: TopicConfig, record_key: bytes | None, value: bytes | None, ttl: int) -> Mutation:
    """orders and products: one JSON document per key, stored as received, deleted by a tombstone."""
    if value is None:
        identifier = _tombstone_identifier(record_key)
        return Mutation(keys.data_key(config.key_prefix, identifier), DELETE)
    # _json_object's work without its calls: most records of most topics are documents
    try:
        document = orjson.loads(value)
    except orjson.JSONDecodeError as error:
        document = _slow_json(value, error)
    if type(document) is not dict:
        raise PoisonRecord(f"value must be a JSON object, got {type(document).__name__}")
    if config.schema is not None:
        _check_schema(config, document)
    key = keys.data_key(config.key_prefix, _identifier(document, config.key_field, value))
    return _new_mutation(Mutation, (key, SET, "", value, ttl, (), 0))


def _row(config: TopicConfig, record_key: bytes | None, value: bytes | None, ttl: int) -> Mutation:
    """hash and json: one value per key, written as the topic's on_update says, deleted by a tombstone."""
    if value is None:
        return Mutation(keys.data_key(config.key_prefix, _tombstone_identifier(record_key)), DELETE)
    row = _json_object(value, config, exact=config.kind == HASH)
    key = keys.data_key(config.key_prefix, _identifier(row, config.key_field, value))
    return _write_row(config, key, row, value, ttl)


def _write_row(config: TopicConfig, key: str, row: dict[str, Any], raw: bytes | None, ttl: int) -> Mutation:
    """The write of one row to its key, by the topic's kind; `raw`: the row's JSON as received, if it was."""
    if config.kind == HASH:
        merge = config.on_update == MERGE
        fields, removed = _fields(row, merge)
        return Mutation(key, HASH_MERGE if merge else HASH_REPLACE, "", fields, ttl, removed)
    text = raw if raw is not None else _json_text(row)
    if config.kind == JSON:
        return Mutation(key, JSON_MERGE if config.on_update == MERGE else JSON_SET, "", text, ttl)
    return Mutation(key, SET, "", text, ttl)


def _stream(config: TopicConfig, record_key: bytes | None, value: bytes | None, ttl: int) -> Mutation:
    """One entry appended per record; the fence appends it once."""
    if value is None:
        raise PoisonRecord(f"{config.name} is a stream: a tombstone cannot take an entry back")
    row = _json_object(value, config, exact=True)
    key = keys.data_key(config.key_prefix, _identifier(row, config.key_field, value))
    fields, _ = _fields(row, merge=False)
    if not fields:
        raise PoisonRecord("a stream entry needs at least one field that is not null")
    return Mutation(key, STREAM_ADD, "", fields, ttl, max_length=config.max_length)


def _fields(row: dict[str, Any], merge: bool) -> tuple[Fields, Fields]:
    """The row's non-null fields as field, value pairs (strings as they are, the rest as compact
    JSON text), and the names of its null fields when merging (they remove the field)."""
    fields: list[bytes] = []
    removed: list[bytes] = []
    try:
        for name, item in row.items():
            if item is None:
                if merge:
                    removed.append(name.encode())
                continue
            fields.append(name.encode())
            fields.append(item.encode() if type(item) is str else _json_text(item))
    except UnicodeEncodeError:  # a lone surrogate escape (\ud800) that only the slow parser let through
        raise PoisonRecord("value holds a string that is not valid Unicode (a lone surrogate)") from None
    if len(fields) + len(removed) > 2 * MAX_RECORD_FIELDS:
        count = len(fields) // 2 + len(removed)
        raise PoisonRecord(
            f"value has {count} fields; at most {MAX_RECORD_FIELDS} fit one request "
            "(ElastiCache Serverless takes 3,999 arguments)"
        )
    return tuple(fields), tuple(removed)


def _json_text(item: Any) -> bytes:
    try:
        return orjson.dumps(item)
    except TypeError:  # an integer beyond 64 bits, which only the slow parser reads
        return json.dumps(item, separators=(",", ":"), ensure_ascii=False).encode()


# --- Debezium change events ----------------------------------------------------------------------
DEBEZIUM_WRITES = ("c", "r", "u")  # create, read (a snapshot), update: the row is `after`
DEBEZIUM_OPS = (*DEBEZIUM_WRITES, "d", "t")


def _debezium(config: TopicConfig, record_key: bytes | None, value: bytes | None, ttl: int) -> Mutation:
    """A Debezium change event: the row it leaves (c, r, u) or the key it deletes (d, the tombstone)."""
    if value is None:  # the tombstone after a delete: its key is the row's key
        return Mutation(keys.data_key(config.key_prefix, _debezium_key(config, record_key, None)), DELETE)
    event = _payload(_parse_json(value, exact=True))
    if type(event) is not dict:
        raise PoisonRecord(f"a Debezium change event is a JSON object, got {type(event).__name__}")
    op = event.get("op", _MISSING)
    if op is _MISSING:
        raise PoisonRecord("value is not a Debezium change event: it has no `op` (check the topic's envelope)")
    if op in DEBEZIUM_WRITES:
        row = event.get("after")
        if type(row) is not dict:
            raise PoisonRecord(f"Debezium op {op!r} needs the `after` row, got {_type_name(row)}")
        _check_schema(config, row)
        key = keys.data_key(config.key_prefix, _debezium_key(config, record_key, row))
        return _write_row(config, key, row, None, ttl)
    if op == "d":
        before = event.get("before")
        row = before if type(before) is dict else None
        return Mutation(keys.data_key(config.key_prefix, _debezium_key(config, record_key, row)), DELETE)
    if op == "t":
        source = event.get("source")
        table = _table_name(source) if type(source) is dict else "the table"
        raise PoisonRecord(
            f"Debezium truncate of {table} is not applied: a truncate names no key and has no order against "
            f"the row events of other partitions, so the cache keeps the rows it holds (README: Debezium change "
            f"events says how to clear them)"
        )
    raise PoisonRecord(f"Debezium op {op!r} is not one of {', '.join(DEBEZIUM_OPS)}")


def _payload(document: Any) -> Any:
    """The JSON converter's `{"schema": ..., "payload": ...}` wrapper taken off, when there is one."""
    if type(document) is dict and "payload" in document and "schema" in document and len(document) == 2:
        return document["payload"]
    return document


def _debezium_key(config: TopicConfig, record_key: bytes | None, row: dict[str, Any] | None) -> str:
    """The key's identifier: the row's key field, else the record key's (`{"id": 1001}`, with or
    without the schema/payload wrapper; a plain string key is the identifier itself)."""
    if row is not None and config.key_field in row:
        return _identifier(row, config.key_field)
    if record_key is None:
        raise PoisonRecord(f"neither the row nor a record key names field '{config.key_field}'")
    try:
        decoded = _payload(orjson.loads(record_key))
    except orjson.JSONDecodeError:
        return _tombstone_identifier(record_key)
    if type(decoded) is dict:
        if config.key_field not in decoded:
            raise PoisonRecord(f"the record key has no field '{config.key_field}': {record_key[:64]!r}")
        return _identifier(decoded, config.key_field)
    if type(decoded) in (int, str):
        return _identifier({config.key_field: decoded}, config.key_field)
    raise PoisonRecord(f"the record key must name field '{config.key_field}', got {record_key[:64]!r}")


def _table_name(source: dict[str, Any]) -> str:
    parts = [source.get(name) for name in ("db", "schema", "table")]
    return ".".join(str(part) for part in parts if isinstance(part, str) and part) or "the table"


def _type_name(item: Any) -> str:
    return "null" if item is None else type(item).__name__


def record_key_identifier(config: TopicConfig, record_key: bytes) -> str | None:
    """The identifier a Debezium record key names (None if it names none), for the keying check."""
    try:
        return _debezium_key(config, record_key, None)
    except PoisonRecord:
        return None


def record_ttl(config: TopicConfig, headers: Any) -> int | None:
    """The TTL the record's `ttl_header` sets, in seconds; None: the record has none (the topic's applies)."""
    name = config.ttl_header
    if name is None or not headers:
        return None
    found: Any = _MISSING
    if not isinstance(headers, list):
        raise PoisonRecord("record headers must be a list")
    for header in headers:  # Lambda's form: [{"name": [byte, ...]}, ...]; a repeated header: the last counts
        if isinstance(header, dict) and name in header:
            found = header[name]
    if found is _MISSING:
        return None
    try:
        text = bytes((b + 256) % 256 for b in found).decode("ascii").strip() if isinstance(found, list) else None
    except (TypeError, ValueError):
        text = None
    if text is None or not text.isdigit() or int(text) > MAX_TTL_SECONDS:
        raise PoisonRecord(
            f"header {name!r} must be a whole number of seconds from 0 to {MAX_TTL_SECONDS}, got {_header_text(found)}"
        )
    return int(text)


MAX_TTL_SECONDS = 2**31 - 1  # about 68 years


def _header_text(value: Any) -> str:
    if isinstance(value, list) and all(type(b) is int for b in value):
        return repr(bytes((b + 256) % 256 for b in value)[:32])
    return repr(value)[:32]


INVENTORY_TYPES = ("shipment", "purchase", "count", "remove")


def _stock_ledger(config: TopicConfig, record_key: bytes | None, value: bytes | None, ttl: int) -> Mutation:
    if value is None:
        raise PoisonRecord(f"{config.name} events cannot be tombstones; send a 'remove' or a 'count' event")
    event = _json_object(value, config)
    kind = event.get("type")
    if kind not in INVENTORY_TYPES:
        raise PoisonRecord(f"field 'type' must be one of {', '.join(INVENTORY_TYPES)}, got {kind!r}")
    key = keys.data_key(config.key_prefix, _identifier(event, config.key_field, value))
    member = keys.sku_member(_identifier(event, "sku", value))
    if kind == "remove":
        return Mutation(key, REMOVE, member, ttl=ttl)
    units = _units(event.get("units", _MISSING))
    if kind == "count":
        return Mutation(key, ASSIGN, member, units, ttl)
    return Mutation(key, INCREMENT, member, units if kind == "shipment" else "-" + units, ttl)


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


_PROJECTIONS: dict[str, Callable[[TopicConfig, bytes | None, bytes | None, int], Mutation]] = {
    DOCUMENT: _document,
    STOCK_LEDGER: _stock_ledger,
    HASH: _row,
    JSON: _row,
    STREAM: _stream,
}


def _json_object(value: bytes, config: TopicConfig, exact: bool = False) -> dict[str, Any]:
    document = _parse_json(value, exact)
    if type(document) is not dict:
        raise PoisonRecord(f"value must be a JSON object, got {type(document).__name__}")
    _check_schema(config, document)
    return document


# 19 digits in a row: maybe an integer beyond 64 bits, which orjson reads as a float
_LONG_DIGITS = re.compile(rb"[0-9]{19}")


def _parse_json(value: bytes, exact: bool = False) -> Any:
    """The value's JSON. `exact`: its numbers are written out again (a hash's fields, a change
    event's row), so an integer beyond 64 bits must keep its digits: read by the standard parser."""
    if exact and _LONG_DIGITS.search(value) is not None:
        return _slow_json(value, None)
    try:
        return orjson.loads(value)
    except orjson.JSONDecodeError as error:
        return _slow_json(value, error)


def _check_schema(config: TopicConfig, document: dict[str, Any]) -> None:
    if config.schema is not None:
        try:
            schemas.validate(config.schema, document)
        except schemas.SchemaMismatch as mismatch:
            raise PoisonRecord(f"value does not match the {config.name} schema: {mismatch}") from None


def _slow_json(value: bytes, error: orjson.JSONDecodeError | None) -> Any:
    """orjson refuses some valid JSON (integers beyond 64 bits, lone surrogate escapes):
    a cache stores what arrives, so those are read again with the standard parser."""
    try:
        return json.loads(value, parse_constant=_not_json)
    except (ValueError, RecursionError) as own:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise PoisonRecord(f"value is not valid JSON: {error or own}") from None


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
