"""Generates SelfManagedKafka events, since `sam local generate-event` has no Kafka template.

    python -m devkit.generator --records 1000 --topics orders,inventory --partitions 3 --seed 7 > event.json

The generator is stateful: successive batches continue each partition's
offsets and the order ids, like a live topic. The same seed gives the same
records (record timestamps are the wall clock).
"""

from __future__ import annotations

import argparse
import base64
import json
import random
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from cachesync.config import DEBEZIUM, STOCK_LEDGER, topic_entries
from devkit import debezium
from devkit.esm.payload import lambda_record
from devkit.registry import VALUE_FORMATS, ValueEncoder

BOOTSTRAP_SERVERS = "pkc-abc12.us-east-1.aws.confluent.cloud:9092"
# the entries of topics.toml: records are generated per entry, named by it
ENTRIES = {entry["name"]: entry for entry in topic_entries()}
TOPICS = tuple(ENTRIES)
INVENTORY_WEIGHTS = {"shipment": 2, "purchase": 6, "count": 1}


@dataclass(frozen=True)
class RawRecord:
    topic: str
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...] = ()
    timestamp: int | None = None


def kafka_record(topic: str, partition: int, offset: int, raw: RawRecord, timestamp: int) -> dict[str, Any]:
    """One record exactly as Lambda delivers it (the local event source mapping's own encoding)."""
    ts = raw.timestamp if raw.timestamp is not None else timestamp
    return lambda_record(topic, partition, offset, ts, raw.key, raw.value, raw.headers)


def decode_record(record: dict[str, Any]) -> tuple[bytes | None, bytes | None]:
    """(key, value) bytes of a record as Lambda delivers it."""
    key, value = record.get("key"), record.get("value")
    return (None if key is None else base64.b64decode(key), None if value is None else base64.b64decode(value))


def partition_for(key: bytes | None, partitions: int, fallback: int) -> int:
    """Where Kafka's Java producers (and librdkafka's murmur2_random) put a key: murmur2, made positive."""
    return fallback % partitions if key is None else (murmur2(key) & 0x7FFFFFFF) % partitions


def murmur2(data: bytes) -> int:
    """Kafka's `Utils.murmur2` (seed 0x9747b28c), as a signed 32-bit int."""
    m, r, mask = 0x5BD1E995, 24, 0xFFFFFFFF
    length = len(data)
    h = (0x9747B28C ^ length) & mask
    for i in range(0, length - length % 4, 4):
        k = int.from_bytes(data[i : i + 4], "little")
        k = (k * m) & mask
        k ^= k >> r
        k = (k * m) & mask
        h = (h * m) & mask
        h ^= k
    tail = length % 4
    if tail:
        rest = data[length - tail :]
        if tail == 3:
            h ^= rest[2] << 16
        if tail >= 2:
            h ^= rest[1] << 8
        h ^= rest[0]
        h = (h * m) & mask
    h ^= h >> 13
    h = (h * m) & mask
    h ^= h >> 15
    return h - (1 << 32) if h & 0x80000000 else h


class EventGenerator:
    def __init__(
        self,
        seed: int = 0,
        partitions: int = 3,
        stores: int = 5,
        skus: int = 200,
        first_order_id: int = 1,
        topic_names: dict[str, str] | None = None,
        first_offset: int = 0,
        value_format: str = "json",
        confluent: bool = True,
    ):
        self.random = random.Random(seed)
        self.partitions = partitions
        self.stores = [f"store{n}" for n in range(1, stores + 1)]
        self.skus = [f"{n:010d}" for n in self.random.sample(range(10**9, 10**10), skus)]
        self.next_order_id = first_order_id
        self.topic_names = {topic: topic for topic in TOPICS} | (topic_names or {})
        self.first_offset = first_offset
        self._seed_makers = {"orders": self.order, "inventory": self.inventory, "products": self.product}
        self.stock: dict[tuple[str, str], int] = {}  # units on hand after the events generated so far
        self.rows: dict[tuple[str, int], dict[str, Any]] = {}  # each Debezium table's rows so far
        self._queued: dict[str, list[RawRecord]] = {}  # a delete's tombstone, next for its entry
        self._changes = 0
        self.next_offset: dict[tuple[str, int], int] = {}
        self._round_robin = 0
        # JSON text, or Avro / Protobuf written with the local registry's schemas (devkit.registry)
        self.value_format = value_format
        self._encoder = None if value_format == "json" else ValueEncoder(value_format, confluent)

    def encode(self, kind: str, value: dict[str, Any]) -> bytes:
        """A generated document as this generator's producers write it."""
        return _json(value) if self._encoder is None else self._encoder.encode(kind, value)

    # --- record values -----------------------------------------------------
    def order(self) -> RawRecord:
        order_id = self.next_order_id
        self.next_order_id += 1
        r = self.random
        value = {
            "ordertime": 1497014222380 + r.randint(0, 10**10),
            "orderid": order_id,
            "itemid": f"Item_{r.randint(1, 999)}",
            "orderunits": round(r.uniform(0.1, 10.0), 10),
            "address": {
                "city": f"City_{r.randint(1, 99)}",
                "state": f"State_{r.randint(1, 99)}",
                "zipcode": r.randint(10000, 99999),
            },
        }
        return RawRecord("orders", str(order_id).encode(), self.encode("orders", value))

    def inventory(self, kind: str | None = None, store: str | None = None, sku: str | None = None) -> RawRecord:
        """A stock event. Chosen at random, a purchase never takes more than the
        generator's own running count shows on hand (it sells nothing it has not
        received), so generated stock does not go negative; an explicit kind is kept."""
        r = self.random
        store = store or r.choice(self.stores)
        sku = sku or r.choice(self.skus)
        on_hand = self.stock.get((store, sku), 0)
        if kind is None:
            kind = r.choices(list(INVENTORY_WEIGHTS), weights=list(INVENTORY_WEIGHTS.values()))[0]
            if kind == "purchase" and on_hand == 0:
                kind = "shipment"
        if kind == "shipment":
            units = r.randint(10, 200)
            self.stock[(store, sku)] = on_hand + units
        elif kind == "purchase":
            units = r.randint(1, min(5, on_hand)) if on_hand > 0 else r.randint(1, 5)
            self.stock[(store, sku)] = on_hand - units
        elif kind == "count":
            units = self.stock[(store, sku)] = r.randint(0, 500)
        else:
            units = self.stock[(store, sku)] = 0
        value: dict[str, Any] = {
            "type": kind,
            "store": store,
            "sku": sku,
            "eventtime": 1497014222380 + r.randint(0, 10**10),
        }
        if kind != "remove":
            value["units"] = units
        return RawRecord("inventory", f"{store}:{sku}".encode(), self.encode("inventory", value))

    def product(self, sku: str | None = None) -> RawRecord:
        r = self.random
        sku = sku or r.choice(self.skus)
        value = {
            "sku": sku,
            "name": f"Product {sku[-4:]}",
            "description": f"A very good product, batch {r.randint(1, 9)}.",
            "price": round(r.uniform(1, 500), 2),
            "currency": "USD",
            "category": r.choice(["kitchen", "garden", "toys", "books"]),
        }
        return RawRecord("products", sku.encode(), self.encode("products", value))

    def document(self, name: str) -> RawRecord:
        """A document of a topics.toml entry that has no maker of its own: the entry's example,
        keyed by one of the generator's SKUs (key field `sku`) or a fresh id."""
        entry = ENTRIES[name]
        value = json.loads(entry["example"])
        field = entry["key_field"]
        identifier = self.random.choice(self.skus) if field == "sku" else f"{name}-{self.random.randint(1, 10**9)}"
        value[field] = identifier
        return RawRecord(name, identifier.encode(), _json(value))

    def change_event(self, name: str, connector: str = "mysql", schemas: bool = True) -> RawRecord:
        """A Debezium change event of the entry `name` (envelope = "debezium"), as the MySQL (or
        PostgreSQL) connector writes it with the JSON converter (`schemas`: its schema/payload
        wrapper): rows of the entry's example shape, created, read, updated and deleted, a delete
        followed by its tombstone (the next record of the entry)."""
        queued = self._queued.get(name)
        if queued:
            return queued.pop(0)
        entry, r = ENTRIES[name], self.random
        field = entry["key_field"]
        identifier = 1000 + r.randint(1, max(4, len(self.skus)))
        key = debezium.record_key(connector, name, {field: identifier}, schemas)
        self._changes += 1
        ts = 1_700_000_000_000 + self._changes
        current = self.rows.get((name, identifier))
        if current is not None and r.random() < 0.2:
            del self.rows[(name, identifier)]
            gone = current if connector == "mysql" else {field: identifier}
            value = debezium.change_event(connector, name, "d", gone, None, ts, self._changes, schemas)
            self._queued[name] = [RawRecord(name, key, None)]  # the tombstone after the delete
            return RawRecord(name, key, value)
        row: dict[str, Any] = json.loads(entry["example"]) | {field: identifier}
        for column, item in row.items():  # vary the example's text and numbers a little
            if column != field and isinstance(item, str):
                row[column] = f"{item} {r.randint(1, 99)}"
            elif column != field and isinstance(item, int | float) and not isinstance(item, bool):
                row[column] = type(item)(item + r.randint(1, 9))
        op = "u" if current is not None else "c"
        before = current if connector == "mysql" else None
        self.rows[(name, identifier)] = row
        return RawRecord(name, key, debezium.change_event(connector, name, op, before, row, ts, self._changes, schemas))

    def record(self, name: str) -> RawRecord:
        """A record of the topics.toml entry `name`: orders and products in the seed's shapes,
        stock events for a ledger, Debezium change events for an entry with that envelope, the
        entry's example for any other (a document, hash, json document or stream entry)."""
        if name in self._seed_makers:
            return self._seed_makers[name]()
        entry = ENTRIES[name]
        if entry["kind"] == STOCK_LEDGER:
            return replace(self.inventory(), topic=name)
        if entry.get("envelope") == DEBEZIUM:
            return self.change_event(name)
        return self.document(name)

    def records(self, count: int, topics: Sequence[str] = TOPICS) -> list[RawRecord]:
        return [self.record(self.random.choice(list(topics))) for _ in range(count)]

    # --- events -------------------------------------------------------------
    def event(self, raws: Sequence[RawRecord], now_ms: int | None = None) -> dict[str, Any]:
        """A SelfManagedKafka event holding `raws`, each at the next offset of its partition."""
        now_ms = int(time.time() * 1000) if now_ms is None else now_ms
        records: dict[str, list[dict[str, Any]]] = {}
        for raw in raws:
            topic = self.topic_names.get(raw.topic, raw.topic)
            self._round_robin += 1
            partition = partition_for(raw.key, self.partitions, self._round_robin)
            offset = self.next_offset.get((topic, partition), self.first_offset)
            self.next_offset[(topic, partition)] = offset + 1
            records.setdefault(f"{topic}-{partition}", []).append(kafka_record(topic, partition, offset, raw, now_ms))
        return {"eventSource": "SelfManagedKafka", "bootstrapServers": BOOTSTRAP_SERVERS, "records": records}

    def batch(self, count: int, topics: Sequence[str] = TOPICS) -> dict[str, Any]:
        return self.event(self.records(count, topics))


def _json(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Write a SelfManagedKafka Lambda event of generated records.")
    parser.add_argument("--records", type=int, default=10, help="number of records (default 10)")
    parser.add_argument("--topics", default=",".join(TOPICS), help="comma-separated: orders,inventory,products")
    parser.add_argument("--partitions", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--first-order-id", type=int, default=1)
    parser.add_argument("--out", help="file to write (default: standard output)")
    parser.add_argument(
        "--value-format",
        choices=VALUE_FORMATS,
        default="json",
        help="record values: JSON, or Avro / Protobuf in Confluent's wire format with the local registry's ids",
    )
    parser.add_argument("--plain", action="store_true", help="Avro / Protobuf without Confluent's 5-byte header")
    args = parser.parse_args(argv)
    topics = [t.strip() for t in args.topics.split(",") if t.strip()]
    unknown = sorted(set(topics) - set(TOPICS))
    if unknown or args.records < 0 or args.partitions < 1:
        parser.error(f"unknown topics {unknown}" if unknown else "--records must be >= 0 and --partitions >= 1")
    generator = EventGenerator(
        seed=args.seed,
        partitions=args.partitions,
        first_order_id=args.first_order_id,
        value_format=args.value_format,
        confluent=not args.plain,
    )
    text = json.dumps(generator.batch(args.records, topics), indent=2)
    if args.out:
        with open(args.out, "w") as out:
            out.write(text + "\n")
    else:
        sys.stdout.write(text + "\n")


if __name__ == "__main__":
    main()
