"""Writes the sample Kafka events in events/, and the cluster slot tags table (`make events`).

Deterministic: same files every time.
"""

from __future__ import annotations

import json
from typing import Any

from cachesync import keys
from devkit import debezium
from devkit.generator import EventGenerator, RawRecord
from devkit.sam import ROOT

EVENTS = ROOT / "events"
TIMESTAMP = 1497014222380
# The order from the original design: `GET orders:18` must return exactly this JSON.
SEED_ORDER = (
    b'{"ordertime": 1497014222380, "orderid": 18, "itemid": "Item_184", '
    b'"address": {"city": "Mountain View", "state": "CA", "zipcode": 94041}}'
)


def _generator(first_offset: int, first_order_id: int = 19) -> EventGenerator:
    # Each sample uses its own offset range, rising in the order the README runs
    # them, so running one after another is never mistaken for a replay;
    # running the same file twice is one (and changes nothing).
    return EventGenerator(
        seed=42, partitions=3, stores=3, skus=6, first_order_id=first_order_id, first_offset=first_offset
    )


def orders() -> dict[str, Any]:
    g = _generator(100)
    raws = [RawRecord("orders", b"18", SEED_ORDER), *(g.order() for _ in range(8))]
    return g.event(raws, now_ms=TIMESTAMP)


def inventory() -> dict[str, Any]:
    g = _generator(200)
    sku = "0123456789"
    raws = [
        g.inventory("count", "store1", sku),  # ZADD-like stock take
        g.inventory("purchase", "store1", sku),  # ZINCRBY -units
        g.inventory("shipment", "store2", sku),
        *(g.inventory("count", store, other) for store in g.stores for other in g.skus),
        *(g.inventory() for _ in range(10)),
    ]
    # make the first two the design's own numbers: ZADD 710, then ZINCRBY -6
    raws[0] = _with(raws[0], units=710)
    raws[1] = _with(raws[1], units=6)
    return g.event(raws, now_ms=TIMESTAMP)


def products() -> dict[str, Any]:
    g = _generator(300)
    return g.event([g.product(sku) for sku in g.skus], now_ms=TIMESTAMP)


def mixed() -> dict[str, Any]:
    """Orders, inventory and products, a tombstone, poison records and non-ASCII headers."""
    g = _generator(400, first_order_id=1001)
    raws = [
        g.order(),
        g.order(),
        RawRecord("orders", b"1001", None),  # tombstone: deletes orders:1001 written just before
        RawRecord("orders", b"bad", b"{not json", (("source", "caf\u00e9 \u2615".encode()),)),  # poison: invalid JSON
        RawRecord("orders", b"1003", b'{"order": 1003, "itemid": "Item_1"}'),  # poison: no orderid
        g.inventory("shipment", "store1", "0123456789"),
        g.inventory("purchase", "store1", "0123456789"),
        g.product("0123456789"),
        RawRecord("products", None, b'{"sku": "", "name": "x", "price": 1}'),  # poison: empty sku
    ]
    raws[0] = RawRecord(raws[0].topic, raws[0].key, raws[0].value, (("trace", bytes([0xC3, 0xA9, 0xFF, 0x00])),))
    return g.event(raws, now_ms=TIMESTAMP)


# Debezium's tutorial rows of the MySQL `inventory.customers` table
CUSTOMERS: tuple[dict[str, Any], ...] = (
    {"id": 1001, "first_name": "Sally", "last_name": "Thomas", "email": "sally.thomas@acme.com"},
    {"id": 1002, "first_name": "George", "last_name": "Bailey", "email": "gbailey@foobar.com"},
    {"id": 1003, "first_name": "Edward", "last_name": "Walker", "email": "ed@walker.com"},
    {"id": 1004, "first_name": "Anne", "last_name": "Kretchmar", "email": "annek@noanswer.org"},
)
CUSTOMERS_TOPIC = debezium.topic("mysql", "customers")


def customers() -> dict[str, Any]:
    """The `customers` table through Debezium's MySQL connector (JSON converter, schemas on): a
    snapshot of four rows, an update, a delete and its tombstone, and a truncate (dead-lettered)."""
    g = _generator(500)

    def change(op: str, before: Any, after: Any, n: int, key_id: int | None) -> RawRecord:
        key = None if key_id is None else debezium.record_key("mysql", "customers", {"id": key_id}, True)
        return RawRecord(
            CUSTOMERS_TOPIC, key, debezium.change_event("mysql", "customers", op, before, after, TIMESTAMP + n, n, True)
        )

    anne = CUSTOMERS[3]
    marie = anne | {"first_name": "Anne Marie"}
    george = CUSTOMERS[1]
    raws = [
        *(change("r", None, row, n, row["id"]) for n, row in enumerate(CUSTOMERS)),
        change("u", anne, marie, 4, 1004),
        change("d", george, None, 5, 1002),
        RawRecord(CUSTOMERS_TOPIC, debezium.record_key("mysql", "customers", {"id": 1002}, True), None),
        change("t", None, None, 6, None),
    ]
    return g.event(raws, now_ms=TIMESTAMP)


def activity() -> dict[str, Any]:
    """A stream topic: what two shoppers did, in order, one entry with its own TTL header."""
    g = _generator(600)
    actions = [("u1", "view"), ("u2", "view"), ("u1", "cart"), ("u1", "buy"), ("u2", "cart")]
    raws = [
        RawRecord(
            "activity",
            user.encode(),
            json.dumps({"user": user, "action": action, "sku": "0123456789", "at": TIMESTAMP + n}).encode(),
            (("ttl", b"3600"),) if action == "buy" else (),
        )
        for n, (user, action) in enumerate(actions)
    ]
    return g.event(raws, now_ms=TIMESTAMP)


def _with(raw: RawRecord, **fields: Any) -> RawRecord:
    value = json.loads(raw.value or b"{}") | fields
    return RawRecord(raw.topic, raw.key, json.dumps(value, separators=(",", ":")).encode(), raw.headers)


def main() -> None:
    EVENTS.mkdir(exist_ok=True)
    samples = {
        "kafka-orders.json": orders(),
        "kafka-inventory.json": inventory(),
        "kafka-products.json": products(),
        "kafka-mixed.json": mixed(),
        "kafka-customers.json": customers(),
        "kafka-activity.json": activity(),
    }
    for name, event in samples.items():
        (EVENTS / name).write_text(json.dumps(event, indent=2) + "\n")
        print(f"wrote events/{name}")
    keys.SLOT_TAGS_FILE.write_text(" ".join(keys.compute_slot_tags()) + "\n")
    print(f"wrote {keys.SLOT_TAGS_FILE.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
