"""How records become mutations: no Redis needed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cachesync.config import ConfigError, Settings
from cachesync.projections import (
    ASSIGN,
    DELETE,
    INCREMENT,
    REMOVE,
    SET,
    Mutation,
    PoisonRecord,
    partition_key,
    project,
)

SETTINGS = Settings.from_env({"ORDERS_TTL_SECONDS": "0", "PRODUCTS_TTL_SECONDS": "3600"})
ORDERS = SETTINGS.topic("orders")
PRODUCTS = SETTINGS.topic("products")
INVENTORY = SETTINGS.topic("inventory")
SEED_ORDER = (
    b'{"ordertime": 1497014222380, "orderid": 18, "itemid": "Item_184", '
    b'"address": {"city": "Mountain View", "state": "CA", "zipcode": 94041}}'
)


def _order(**changes: object) -> bytes:
    order = json.loads(SEED_ORDER) | changes
    return json.dumps({k: v for k, v in order.items() if v is not None}).encode()


def test_order_is_set_with_the_value_bytes_unchanged() -> None:
    assert ORDERS is not None
    assert project(ORDERS, b"18", SEED_ORDER) == Mutation("orders:18", SET, argument=SEED_ORDER)


def test_order_tombstone_deletes_the_key_named_by_the_record_key() -> None:
    assert ORDERS is not None
    assert project(ORDERS, b"18", None) == Mutation("orders:18", DELETE)


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (b"{not json", "not valid JSON"),
        (b"[1, 2]", "must be a JSON object"),
        (b'{"orderid": NaN}', "not valid JSON"),
        (_order(orderid=None), "'orderid' is missing"),
        (_order(orderid=True), "'orderid' must be a string or an integer"),
        (_order(orderid=-1), "not a valid identifier"),
        (_order(orderid="a b"), "not a valid identifier"),
        (_order(orderid="{orders:1}"), "not a valid identifier"),
        (_order(orderid="18\n"), "not a valid identifier"),  # `$` alone would let the newline through
    ],
)
def test_orders_need_only_a_json_object_with_a_usable_orderid(value: bytes, reason: str) -> None:
    assert ORDERS is not None
    with pytest.raises(PoisonRecord, match=reason):
        project(ORDERS, b"18", value)


@pytest.mark.parametrize(
    "value",
    [
        _order(ordertime="yesterday", orderunits="2", address="Mountain View", itemid=None),
        b'{"orderid": 18}',
        b'{"orderid": "18", "extra": [1, {"x": null}], "orderunits": 1e400}',
        b'{"orderid": 18, "big": 123456789012345678901234567890}',  # beyond orjson's 64 bits
        rb'{"orderid": 18, "s": "\ud800"}',  # a lone surrogate escape: valid JSON
        b'  {"orderid":18}  \n',
    ],
)
def test_any_other_field_passes_through_byte_for_byte(value: bytes) -> None:
    assert ORDERS is not None
    assert project(ORDERS, b"18", value) == Mutation("orders:18", SET, argument=value)


@pytest.mark.parametrize(
    ("key", "reason"),
    [
        (None, "without a record key"),
        (b"\xff\xfe", "not UTF-8"),
        (b"x y", "not a valid identifier"),
        (b"18\n", "not a valid identifier"),
    ],
)
def test_tombstones_need_a_usable_record_key(key: bytes | None, reason: str) -> None:
    assert ORDERS is not None
    with pytest.raises(PoisonRecord, match=reason):
        project(ORDERS, key, None)


def test_product_is_one_document_per_sku_with_the_topic_ttl() -> None:
    assert PRODUCTS is not None
    value = b'{"sku": "0123456789", "name": "Cup", "price": 12.5}'
    assert project(PRODUCTS, None, value) == Mutation("products:0123456789", SET, argument=value, ttl=3600)
    for anything in (b'{"sku": "1", "name": "Cup", "price": -1}', b'{"sku": "1", "price": "ask"}', b'{"sku": 1}'):
        assert project(PRODUCTS, None, anything).argument == anything
    with pytest.raises(PoisonRecord, match="'sku' is missing"):
        project(PRODUCTS, None, b'{"name": "Cup"}')


@pytest.mark.parametrize(
    ("event", "expected"),
    [
        ({"type": "shipment", "units": 710}, Mutation("inventory:store1", INCREMENT, "sku:0123456789", "710")),
        ({"type": "purchase", "units": 6}, Mutation("inventory:store1", INCREMENT, "sku:0123456789", "-6")),
        ({"type": "count", "units": 42}, Mutation("inventory:store1", ASSIGN, "sku:0123456789", "42")),
        ({"type": "remove"}, Mutation("inventory:store1", REMOVE, "sku:0123456789")),
        ({"type": "remove", "units": "n/a"}, Mutation("inventory:store1", REMOVE, "sku:0123456789")),
        ({"type": "count", "units": 6.0}, Mutation("inventory:store1", ASSIGN, "sku:0123456789", "6")),
        (
            {"type": "purchase", "units": 6.0, "note": {"any": 1}},
            Mutation("inventory:store1", INCREMENT, "sku:0123456789", "-6"),
        ),
        ({"type": "shipment", "units": 0}, Mutation("inventory:store1", INCREMENT, "sku:0123456789", "0")),
    ],
)
def test_inventory_events(event: dict[str, object], expected: Mutation) -> None:
    assert INVENTORY is not None
    value = json.dumps({"store": "store1", "sku": "0123456789", **event}).encode()
    assert project(INVENTORY, b"store1:0123456789", value) == expected


@pytest.mark.parametrize(
    ("event", "reason"),
    [
        ({"type": "gift", "units": 1}, "'type' must be one of"),
        ({"type": "purchase"}, "'units' is missing"),
        ({"type": "purchase", "units": -1}, "must not be negative"),
        ({"type": "purchase", "units": 6.5}, "'units' must be a whole number, got 6.5"),
        ({"type": "count", "units": True}, "'units' must be a whole number, got bool"),
        ({"type": "count", "units": "6"}, "'units' must be a whole number, got str"),
        ({"type": "count", "units": -6.0}, "must not be negative"),
        ({"units": 1}, "'type' must be one of"),
    ],
)
def test_bad_inventory_events_are_poison(event: dict[str, object], reason: str) -> None:
    assert INVENTORY is not None
    value = json.dumps({"store": "store1", "sku": "0123456789", **event}).encode()
    with pytest.raises(PoisonRecord, match=reason):
        project(INVENTORY, None, value)


def test_inventory_tombstones_are_poison() -> None:
    assert INVENTORY is not None
    with pytest.raises(PoisonRecord, match="cannot be tombstones"):
        project(INVENTORY, b"store1:1", None)


def test_key_prefix_and_key_field_are_configurable() -> None:
    settings = Settings.from_env(
        {"TOPIC_ORDERS": "shop.orders", "ORDERS_KEY_PREFIX": "o", "ORDERS_KEY_FIELD": "itemid"}
    )
    config = settings.topic("shop.orders")
    assert config is not None and settings.topic("orders") is None
    assert project(config, None, SEED_ORDER).key == "o:Item_184"


def test_partition_key_is_the_keying_rule() -> None:
    assert ORDERS is not None and PRODUCTS is not None and INVENTORY is not None
    assert partition_key(ORDERS, project(ORDERS, None, SEED_ORDER)) == "18"
    assert partition_key(PRODUCTS, project(PRODUCTS, None, b'{"sku": "0123456789"}')) == "0123456789"
    event = b'{"type": "count", "store": "store1", "sku": "0123456789", "units": 1}'
    assert partition_key(INVENTORY, project(INVENTORY, None, event)) == "store1:0123456789"


SCHEMA = {
    "type": "object",
    "required": ["orderid", "orderunits"],
    "properties": {"orderunits": {"type": "number", "minimum": 0}},
}


def test_a_topic_schema_is_off_by_default_and_refuses_what_fails_it(tmp_path: Path) -> None:
    path = tmp_path / "orders.schema.json"
    path.write_text(json.dumps(SCHEMA))
    for setting in (str(path), json.dumps(SCHEMA)):
        orders = Settings.from_env({"ORDERS_SCHEMA": setting}).topic("orders")
        assert orders is not None and orders.schema is not None
        good = b'{"orderid": 18, "orderunits": 2.5, "free": "form"}'
        assert project(orders, None, good).argument == good
        with pytest.raises(PoisonRecord, match=r"does not match the orders schema: .*orderunits"):
            project(orders, None, SEED_ORDER)
        with pytest.raises(PoisonRecord, match=r"orders schema: data\.orderunits must be bigger than or equal to 0"):
            project(orders, None, b'{"orderid": 18, "orderunits": -1}')
        assert project(orders, b"18", None).code == DELETE  # tombstones have no value to check
    assert ORDERS is not None and ORDERS.schema is None
    assert project(ORDERS, None, SEED_ORDER).argument == SEED_ORDER


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("{not json", "ORDERS_SCHEMA is not valid JSON"),
        ("/no/such/schema.json", "ORDERS_SCHEMA cannot be read from '/no/such/schema.json'"),
        ('{"type": "no-such-type"}', "ORDERS_SCHEMA is not a valid JSON Schema"),
    ],
)
def test_a_broken_schema_is_a_configuration_error(setting: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Settings.from_env({"ORDERS_SCHEMA": setting})
