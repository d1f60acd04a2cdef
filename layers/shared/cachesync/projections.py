"""How one Kafka record becomes one Redis mutation, per topic.

Each projection validates the record and returns a `Mutation`, or raises
`PoisonRecord` with a reason a person can act on. Nothing here talks to Redis.

Event contracts (values are UTF-8 JSON; a null value is a tombstone):

orders     Confluent Datagen ORDERS:
           {"ordertime": 1497014222380, "orderid": 18, "itemid": "Item_184",
            "orderunits": 2.5, "address": {"city": "Mountain View", "state": "CA", "zipcode": 94041}}
           -> SET orders:<orderid> <value bytes as received>
           tombstone (record key = orderid) -> DEL orders:<orderid>

products   {"sku": "0123456789", "name": "Espresso cup", "price": 12.5,
            "description": "...", "currency": "USD", ...any further fields}
           -> SET products:<sku> <value bytes as received>
           tombstone (record key = sku) -> DEL products:<sku>

inventory  {"type": "shipment" | "purchase" | "count" | "remove",
            "store": "store1", "sku": "0123456789", "units": 6, "eventtime": 1497014222380}
           shipment -> ZINCRBY inventory:<store> +units sku:<sku>
           purchase -> ZINCRBY inventory:<store> -units sku:<sku>
           count    -> ZADD    inventory:<store> units sku:<sku>   (a stock take)
           remove   -> ZREM    inventory:<store> sku:<sku>         (units not needed)
           tombstones have no meaning here and are dead-lettered.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson

from cachesync import keys
from cachesync.config import TopicConfig

# Mutation codes understood by the apply script (see writer.py).
SET, DELETE, INCREMENT, ASSIGN, REMOVE = "S", "D", "I", "Z", "R"


class PoisonRecord(ValueError):
    """A record that can never be applied; it goes to the dead-letter sink."""


@dataclass(frozen=True, slots=True)
class Mutation:
    key: str
    code: str
    member: str = ""  # sorted-set member, or "" for string keys
    argument: bytes | str = b""  # the value for SET, the score or delta for sorted sets
    ttl: int = 0


def project(config: TopicConfig, record_key: bytes | None, value: bytes | None) -> Mutation:
    """The mutation one record asks for; `PoisonRecord` if it cannot be applied."""
    return _PROJECTIONS[config.kind](config, record_key, value)


def _document(config: TopicConfig, record_key: bytes | None, value: bytes | None, check: _Check) -> Mutation:
    """orders and products: one JSON document per key, deleted by a tombstone."""
    if value is None:
        identifier = _tombstone_identifier(record_key)
        return Mutation(keys.data_key(config.key_prefix, identifier), DELETE)
    document = _json_object(value)
    check(document)
    identifier = _identifier(document, config.key_field)
    return Mutation(keys.data_key(config.key_prefix, identifier), SET, argument=value, ttl=config.ttl_seconds)


_Check = Callable[[dict[str, Any]], None]


def _check_order(order: dict[str, Any]) -> None:
    _require(order, "ordertime", int)
    _require(order, "itemid", str)
    _require(order, "orderunits", (int, float))
    address = _require(order, "address", dict)
    for name in ("city", "state"):
        if not isinstance(address.get(name), str):
            raise PoisonRecord(f"field 'address.{name}' must be a string")
    if not _is_a(address.get("zipcode"), (int, str)):
        raise PoisonRecord("field 'address.zipcode' must be an integer or a string")


def _check_product(product: dict[str, Any]) -> None:
    _require(product, "name", str)
    price = _require(product, "price", (int, float))
    if price < 0:
        raise PoisonRecord("field 'price' must not be negative")
    if "description" in product and not isinstance(product["description"], str):
        raise PoisonRecord("field 'description' must be a string")


INVENTORY_TYPES = ("shipment", "purchase", "count", "remove")


def _inventory(config: TopicConfig, record_key: bytes | None, value: bytes | None) -> Mutation:
    if value is None:
        raise PoisonRecord("inventory events cannot be tombstones; send a 'remove' or a 'count' event")
    event = _json_object(value)
    kind = event.get("type")
    if kind not in INVENTORY_TYPES:
        raise PoisonRecord(f"field 'type' must be one of {', '.join(INVENTORY_TYPES)}, got {kind!r}")
    key = keys.data_key(config.key_prefix, _identifier(event, config.key_field))
    member = keys.sku_member(_identifier(event, "sku"))
    if kind == "remove":
        return Mutation(key, REMOVE, member, ttl=config.ttl_seconds)
    units = _require(event, "units", int)
    if units < 0:
        raise PoisonRecord("field 'units' must not be negative")
    if kind == "count":
        return Mutation(key, ASSIGN, member, str(units), config.ttl_seconds)
    delta = units if kind == "shipment" else -units
    return Mutation(key, INCREMENT, member, str(delta), config.ttl_seconds)


_PROJECTIONS: dict[str, Callable[[TopicConfig, bytes | None, bytes | None], Mutation]] = {
    "orders": lambda c, k, v: _document(c, k, v, _check_order),
    "products": lambda c, k, v: _document(c, k, v, _check_product),
    "inventory": _inventory,
}


def _json_object(value: bytes) -> dict[str, Any]:
    try:
        document = orjson.loads(value)
    except orjson.JSONDecodeError as error:
        raise PoisonRecord(f"value is not valid JSON: {error}") from None
    if not isinstance(document, dict):
        raise PoisonRecord(f"value must be a JSON object, got {type(document).__name__}")
    return document


def _is_a(value: Any, kinds: type | tuple[type, ...]) -> bool:
    # bool is an int in Python, never a count, a price or an id in these events
    return isinstance(value, kinds) and not isinstance(value, bool)


def _require(document: dict[str, Any], name: str, kinds: type | tuple[type, ...]) -> Any:
    if name not in document:
        raise PoisonRecord(f"field '{name}' is missing")
    value = document[name]
    if not _is_a(value, kinds):
        expected = kinds.__name__ if isinstance(kinds, type) else " or ".join(k.__name__ for k in kinds)
        raise PoisonRecord(f"field '{name}' must be {expected}, got {type(value).__name__}")
    return value


def _identifier(document: dict[str, Any], name: str) -> str:
    if name not in document:
        raise PoisonRecord(f"field '{name}' is missing")
    raw = document[name]
    if _is_a(raw, int):
        raw = str(raw)
    if not isinstance(raw, str):
        raise PoisonRecord(f"field '{name}' must be a string or an integer, got {type(raw).__name__}")
    try:
        return keys.check_identifier(raw, f"field '{name}'")
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
