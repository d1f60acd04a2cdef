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
from typing import Any, NamedTuple

import orjson

from cachesync import keys
from cachesync.config import TopicConfig

# Mutation codes understood by the apply script (see writer.py).
SET, DELETE, INCREMENT, ASSIGN, REMOVE = "S", "D", "I", "Z", "R"


class PoisonRecord(ValueError):
    """A record that can never be applied; it goes to the dead-letter sink."""


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


# (field, allowed types, what to call them): `type(v) in types` rather than
# isinstance, so a JSON true/false is never taken for a number.
_Fields = tuple[tuple[str, tuple[type, ...], str], ...]
_ORDER_FIELDS: _Fields = (
    ("ordertime", (int,), "an integer"),
    ("itemid", (str,), "a string"),
    ("orderunits", (int, float), "a number"),
    ("address", (dict,), "an object"),
)
_ADDRESS_FIELDS: _Fields = (
    ("city", (str,), "a string"),
    ("state", (str,), "a string"),
    ("zipcode", (int, str), "an integer or a string"),
)
_PRODUCT_FIELDS: _Fields = (("name", (str,), "a string"), ("price", (int, float), "a number"))
_INVENTORY_FIELDS: _Fields = (("units", (int,), "an integer"),)
_MISSING = object()
_NUMBER = (int, float)
_INT_OR_STR = (int, str)


def _check(document: dict[str, Any], fields: _Fields, parent: str = "") -> None:
    for name, types, what in fields:
        value = document.get(name, _MISSING)
        if type(value) not in types:
            if value is _MISSING:
                raise PoisonRecord(f"field '{parent}{name}' is missing")
            raise PoisonRecord(f"field '{parent}{name}' must be {what}, got {type(value).__name__}")


def _check_order(order: dict[str, Any]) -> None:
    # one expression for the common, valid case (about 3x faster than the loop);
    # the loop then finds the reason when it fails
    address = order.get("address")
    if (
        type(order.get("ordertime")) is int
        and type(order.get("itemid")) is str
        and type(order.get("orderunits")) in _NUMBER
        and type(address) is dict
        and type(address.get("city")) is str
        and type(address.get("state")) is str
        and type(address.get("zipcode")) in _INT_OR_STR
    ):
        return
    _check(order, _ORDER_FIELDS)
    _check(order["address"], _ADDRESS_FIELDS, "address.")


def _check_product(product: dict[str, Any]) -> None:
    if not (type(product.get("name")) is str and type(product.get("price")) in _NUMBER):
        _check(product, _PRODUCT_FIELDS)
    if product["price"] < 0:
        raise PoisonRecord("field 'price' must not be negative")
    if type(product.get("description", "")) is not str:
        raise PoisonRecord("field 'description' must be a string")


def _document(config: TopicConfig, record_key: bytes | None, value: bytes | None, check: _Check) -> Mutation:
    """orders and products: one JSON document per key, deleted by a tombstone."""
    if value is None:
        identifier = _tombstone_identifier(record_key)
        return Mutation(keys.data_key(config.key_prefix, identifier), DELETE)
    document = _json_object(value)
    check(document)
    key = keys.data_key(config.key_prefix, _identifier(document, config.key_field))
    return Mutation(key, SET, "", value, config.ttl_seconds)


_Check = Callable[[dict[str, Any]], None]

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
    units = event.get("units")
    if type(units) is not int:
        _check(event, _INVENTORY_FIELDS)  # raises: says what is wrong with it
        raise AssertionError("unreachable")
    if units < 0:
        raise PoisonRecord("field 'units' must not be negative")
    if kind == "count":
        return Mutation(key, ASSIGN, member, str(units), config.ttl_seconds)
    return Mutation(key, INCREMENT, member, str(units if kind == "shipment" else -units), config.ttl_seconds)


def _order(config: TopicConfig, record_key: bytes | None, value: bytes | None) -> Mutation:
    return _document(config, record_key, value, _check_order)


def _product(config: TopicConfig, record_key: bytes | None, value: bytes | None) -> Mutation:
    return _document(config, record_key, value, _check_product)


_PROJECTIONS: dict[str, Callable[[TopicConfig, bytes | None, bytes | None], Mutation]] = {
    "orders": _order,
    "products": _product,
    "inventory": _inventory,
}


def _json_object(value: bytes) -> dict[str, Any]:
    try:
        document = orjson.loads(value)
    except orjson.JSONDecodeError as error:
        raise PoisonRecord(f"value is not valid JSON: {error}") from None
    if type(document) is not dict:
        raise PoisonRecord(f"value must be a JSON object, got {type(document).__name__}")
    return document


def _identifier(document: dict[str, Any], name: str) -> str:
    raw = document.get(name, _MISSING)
    if type(raw) is int and raw >= 0:
        return str(raw)  # a non-negative integer is always a valid identifier
    if type(raw) is str and keys.IDENTIFIER.match(raw):
        return raw
    if raw is _MISSING:
        raise PoisonRecord(f"field '{name}' is missing")
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
