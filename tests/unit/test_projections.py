"""How records become mutations: no Redis needed."""

from __future__ import annotations

import json

import pytest

from cachesync.config import Settings
from cachesync.projections import ASSIGN, DELETE, INCREMENT, REMOVE, SET, Mutation, PoisonRecord, project

SETTINGS = Settings.from_env({"ORDERS_TTL_SECONDS": "0", "PRODUCTS_TTL_SECONDS": "3600"})
ORDERS = SETTINGS.topic("orders")
PRODUCTS = SETTINGS.topic("products")
INVENTORY = SETTINGS.topic("inventory")
SEED_ORDER = (
    b'{"ordertime": 1497014222380, "orderid": 18, "itemid": "Item_184", "orderunits": 2.5, '
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
        (_order(orderid=None), "'orderid' is missing"),
        (_order(orderid=True), "'orderid' must be a string or an integer"),
        (_order(orderid="a b"), "not a valid identifier"),
        (_order(orderid="{orders:1}"), "not a valid identifier"),
        (_order(ordertime="yesterday"), "'ordertime' must be an integer, got str"),
        (_order(orderunits="2"), "'orderunits' must be a number, got str"),
        (_order(address="Mountain View"), "'address' must be an object, got str"),
        (_order(address={"city": "x", "state": 5, "zipcode": 1}), "'address.state' must be a string"),
        (_order(itemid=None), "'itemid' is missing"),
    ],
)
def test_bad_orders_are_poison_with_a_reason(value: bytes, reason: str) -> None:
    assert ORDERS is not None
    with pytest.raises(PoisonRecord, match=reason):
        project(ORDERS, b"18", value)


@pytest.mark.parametrize(
    ("key", "reason"),
    [(None, "without a record key"), (b"\xff\xfe", "not UTF-8"), (b"x y", "not a valid identifier")],
)
def test_tombstones_need_a_usable_record_key(key: bytes | None, reason: str) -> None:
    assert ORDERS is not None
    with pytest.raises(PoisonRecord, match=reason):
        project(ORDERS, key, None)


def test_product_is_one_document_per_sku_with_the_topic_ttl() -> None:
    assert PRODUCTS is not None
    value = b'{"sku": "0123456789", "name": "Cup", "price": 12.5}'
    assert project(PRODUCTS, None, value) == Mutation("products:0123456789", SET, argument=value, ttl=3600)
    with pytest.raises(PoisonRecord, match="'price' must not be negative"):
        project(PRODUCTS, None, b'{"sku": "1", "name": "Cup", "price": -1}')
    with pytest.raises(PoisonRecord, match="'name' is missing"):
        project(PRODUCTS, None, b'{"sku": "1", "price": 1}')


@pytest.mark.parametrize(
    ("event", "expected"),
    [
        ({"type": "shipment", "units": 710}, Mutation("inventory:store1", INCREMENT, "sku:0123456789", "710")),
        ({"type": "purchase", "units": 6}, Mutation("inventory:store1", INCREMENT, "sku:0123456789", "-6")),
        ({"type": "count", "units": 42}, Mutation("inventory:store1", ASSIGN, "sku:0123456789", "42")),
        ({"type": "remove"}, Mutation("inventory:store1", REMOVE, "sku:0123456789")),
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
        ({"type": "purchase", "units": 1.5}, "'units' must be an integer, got float"),
        ({"type": "count", "units": True}, "'units' must be an integer, got bool"),
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
