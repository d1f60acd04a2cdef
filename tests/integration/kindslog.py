"""Kafka logs of the hash, json and stream kinds and of Debezium change events, for the tests.

Few keys so records collide; replaces, merges with nulls, tombstones, per-record TTL headers,
Debezium creates, updates, deletes with their tombstones, snapshots (r), the JSON converter's
schema/payload wrapper, and records the contract refuses (a truncate, an unknown op, a value that
is not an object, a bad TTL header, a stream tombstone).
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest

from cachesync import config
from devkit import debezium
from devkit.generator import RawRecord, kafka_record, partition_for
from harness.model_kinds import KindsModel, redis_expiring, redis_kinds_state

PARTITIONS = 3

TABLE = """
[[topic]]
name = "people"
kind = "hash"
topic = "t.people"
key_prefix = "people"
key_field = "id"

[[topic]]
name = "profiles"
kind = "hash"
on_update = "merge"
topic = "t.profiles"
key_prefix = "profiles"
key_field = "id"
ttl_header = "ttl"

[[topic]]
name = "activity"
kind = "stream"
topic = "t.activity"
key_prefix = "activity"
key_field = "user"
ttl_header = "ttl"

[[topic]]
name = "customers"
kind = "hash"
envelope = "debezium"
topic = "dbserver1.inventory.customers"
key_prefix = "customers"
key_field = "id"

[[topic]]
name = "accounts"
kind = "document"
envelope = "debezium"
topic = "dbserver1.public.accounts"
key_prefix = "accounts"
key_field = "id"
ttl_seconds = 600
"""

JSON_TABLE = """
[[topic]]
name = "carts"
kind = "json"
topic = "t.carts"
key_prefix = "carts"
key_field = "id"
ttl_header = "ttl"

[[topic]]
name = "settings"
kind = "json"
on_update = "merge"
topic = "t.settings"
key_prefix = "settings"
key_field = "id"

[[topic]]
name = "orders"
kind = "json"
envelope = "debezium"
on_update = "merge"
topic = "dbserver1.public.orders"
key_prefix = "pgorders"
key_field = "id"
"""


def use_table(monkeypatch: pytest.MonkeyPatch, path: Path, text: str) -> Path:
    path.write_text(text)
    monkeypatch.setattr(config, "TOPICS_FILE", path)
    config.topic_entries.cache_clear()
    return path


class KindsLog:
    """Generates raw records per topic of TABLE or JSON_TABLE, as their producers would."""

    def __init__(self, seed: int, ids: int = 4):
        self.random = random.Random(seed)
        self.ids = ids
        self.rows: dict[tuple[str, int], dict[str, Any]] = {}  # what each Debezium table holds
        self.position = 0
        self.json_kind = False

    def _row(self, identifier: int) -> dict[str, Any]:
        r = self.random
        row: dict[str, Any] = {"id": identifier}
        for name in r.sample(["name", "score", "tags", "address", "active", "price", "note"], r.randint(1, 5)):
            row[name] = {
                "name": r.choice(["Anne", "Sally", "Édouard", "杰"]),
                # beyond 64 bits too, but not for RedisJSON, which holds numbers as 64-bit ints or doubles
                "score": r.randint(-5, 10**12) if self.json_kind or r.random() < 0.8 else 10**25 + r.randint(0, 9),
                "tags": r.sample(["a", "b", "c"], r.randint(0, 3)),
                "address": {"city": r.choice(["Oslo", "Lima"]), "zip": r.randint(1000, 9999), "line2": None},
                "active": r.choice([True, False]),
                "price": r.choice([19.99, 0.5, 100.25]),
                "note": r.choice(["fragile", "gift"]),
            }[name]
            if r.random() < 0.25:
                row[name] = None  # a null: no such field (a merge removes it)
        return row

    def _ttl(self) -> tuple[tuple[str, bytes], ...]:
        roll = self.random.random()
        if roll < 0.2:
            return (("ttl", str(self.random.choice([0, 60, 3600])).encode()),)
        if roll < 0.23:
            return (("ttl", b"soon"),)  # refused
        return ()

    def plain(self, topic: str, key_field: str = "id") -> RawRecord:
        r = self.random
        identifier = r.randint(1, self.ids)
        roll = r.random()
        if roll < 0.1 and topic != "t.activity":
            return RawRecord(topic, str(identifier).encode(), None)  # a tombstone
        if roll < 0.13:
            return RawRecord(topic, str(identifier).encode(), b"[1, 2]")  # not an object
        if topic == "t.activity":
            if roll < 0.16:
                return RawRecord(topic, f"user{identifier}".encode(), None)  # a stream has no tombstones
            value = {"user": f"user{identifier}", "action": r.choice(["view", "cart", "buy"]), "n": r.randint(0, 9)}
            if r.random() < 0.2:
                value["extra"] = None
            return RawRecord(topic, f"user{identifier}".encode(), _json(value), self._ttl())
        return RawRecord(topic, str(identifier).encode(), _json(self._row(identifier)), self._ttl())

    def change(self, topic: str, connector: str, table: str, schemas: bool) -> list[RawRecord]:
        """The next change event of a table (a delete brings its tombstone along)."""
        r = self.random
        identifier = 1000 + r.randint(1, self.ids)
        key = debezium.record_key(connector, table, {"id": identifier}, schemas)
        self.position += 1
        ts = 1_700_000_000_000 + self.position
        current = self.rows.get((topic, identifier))
        roll = r.random()
        if roll < 0.03:
            return [
                RawRecord(
                    topic, None, debezium.change_event(connector, table, "t", None, None, ts, self.position, schemas)
                )
            ]
        if roll < 0.05:
            event = json.loads(debezium.change_event(connector, table, "c", None, {"id": identifier}, ts, 0, schemas))
            (event["payload"] if schemas else event)["op"] = "m"
            return [RawRecord(topic, key, _json(event))]
        if current is not None and roll < 0.3:
            # REPLICA IDENTITY DEFAULT (PostgreSQL): only the key in `before`; MySQL: the whole row
            before = {"id": identifier} if connector == "postgresql" else current
            if r.random() < 0.2:
                before = None  # a table without a key column in before: the record key names it
            del self.rows[(topic, identifier)]
            event = debezium.change_event(connector, table, "d", before, None, ts, self.position, schemas)
            return [RawRecord(topic, key, event), RawRecord(topic, key, None)]
        row = self._row(identifier)
        if r.random() < 0.15:
            row.pop("id")  # the row does not hold the key column: the record key names the key
        op = "u" if current is not None else r.choice(["c", "r"])
        before = current if connector == "mysql" and current is not None else None
        self.rows[(topic, identifier)] = row
        return [
            RawRecord(topic, key, debezium.change_event(connector, table, op, before, row, ts, self.position, schemas))
        ]

    def raws(self, size: int, json_kind: bool = False) -> list[RawRecord]:
        self.json_kind = json_kind
        out: list[RawRecord] = []
        while len(out) < size:
            if json_kind:
                choice = self.random.choice(["t.carts", "t.settings", "pg"])
                if choice == "pg":
                    out += self.change("dbserver1.public.orders", "postgresql", "orders", schemas=True)
                else:
                    out.append(self.plain(choice))
                continue
            choice = self.random.choice(["t.people", "t.profiles", "t.activity", "my", "pg"])
            if choice == "my":
                out += self.change("dbserver1.inventory.customers", "mysql", "customers", schemas=True)
            elif choice == "pg":
                out += self.change("dbserver1.public.accounts", "postgresql", "accounts", schemas=False)
            else:
                out.append(self.plain(choice))
        return out


def check(target: Any, table: Path, records: list[dict[str, Any]]) -> KindsModel:
    """Asserts the target's Redis holds exactly what the reference model makes of `records`."""
    model = KindsModel(table).apply_all(records)
    client = target.client()
    state = redis_kinds_state(client)
    assert state == model.state
    assert redis_expiring(client, state) == model.expiring
    return model


def log_of(raws: list[RawRecord]) -> dict[tuple[str, int], list[dict[str, Any]]]:
    log: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for n, raw in enumerate(raws):
        partition = partition_for(raw.key, PARTITIONS, n)
        records = log.setdefault((raw.topic, partition), [])
        records.append(kafka_record(raw.topic, partition, len(records), raw, 1_700_000_000_000 + n))
    return log


def event(records: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    return {"eventSource": "SelfManagedKafka", "records": records}


def one_partition(
    topic: str,
    records: list[tuple[bytes | None, bytes | None]],
    partition: int = 0,
    headers: Any = (),
    timestamp: int = 1_700_000_000_000,
) -> dict[str, Any]:
    """A batch of one partition's records, (record key, value) each, from offset 0."""
    return event(
        {
            f"{topic}-{partition}": [
                kafka_record(topic, partition, offset, RawRecord(topic, key, value, headers), timestamp)
                for offset, (key, value) in enumerate(records)
            ]
        }
    )


def whole(log: dict[tuple[str, int], list[dict[str, Any]]]) -> dict[str, Any]:
    return event({f"{t}-{p}": records for (t, p), records in log.items()})


def _json(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()
