"""Debezium change events as the MySQL and PostgreSQL connectors write them with Kafka Connect's
JSON converter: the record key `{"id": 1001}`, the value `{"before", "after", "source", "op",
"ts_ms", "ts_us", "ts_ns"}`, each wrapped in `{"schema": ..., "payload": ...}` when the converter's
`schemas.enable` is on (its default). Shapes follow Debezium's documentation of the `customers`
table (connectors/mysql and connectors/postgresql: create, update, delete, tombstone, truncate).
"""

from __future__ import annotations

import json
from typing import Any

CONNECTORS = ("mysql", "postgresql")
SERVER = "dbserver1"  # the connector's topic.prefix
DATABASE = {"mysql": "inventory", "postgresql": "postgres"}
SCHEMA = "public"  # PostgreSQL's schema of the table


def topic(connector: str, table: str) -> str:
    """The connector's topic for a table: `<topic.prefix>.<database>.<table>` (MySQL) or
    `<topic.prefix>.<schema>.<table>` (PostgreSQL)."""
    return f"{SERVER}.{DATABASE[connector] if connector == 'mysql' else SCHEMA}.{table}"


def record_key(connector: str, table: str, key: dict[str, Any], schemas: bool) -> bytes:
    """The change event's record key: the row's primary key columns."""
    payload = dict(key)
    if not schemas:
        return _json(payload)
    name = f"{SERVER}.{_namespace(connector)}.{table}.Key"
    return _json({"schema": {**_struct(payload, optional=False), "name": name}, "payload": payload})


def change_event(
    connector: str,
    table: str,
    op: str,
    before: dict[str, Any] | None,
    after: dict[str, Any] | None,
    ts_ms: int,
    position: int,
    schemas: bool,
) -> bytes:
    """A change event's value: op c, r, u, d (with before and after as the op has them) or t."""
    source = _source(connector, table, ts_ms, position, snapshot=op == "r")
    payload: dict[str, Any] = {}
    if op != "t":  # a truncate carries no row
        payload |= {"before": before, "after": after}
    payload |= {
        "source": source,
        "op": op,
        "ts_ms": ts_ms + 7,
        "ts_us": (ts_ms + 7) * 1000,
        "ts_ns": (ts_ms + 7) * 10**6,
    }
    if not schemas:
        return _json(payload)
    row = after or before or {}
    value = {**_struct(row, optional=True), "name": f"{SERVER}.{_namespace(connector)}.{table}.Value"}
    schema = {
        "type": "struct",
        "fields": [
            {**value, "field": "before"},
            {**value, "field": "after"},
            {**_struct(source, optional=False), "name": f"io.debezium.connector.{connector}.Source", "field": "source"},
            {"type": "string", "optional": False, "field": "op"},
            {"type": "int64", "optional": True, "field": "ts_ms"},
            {"type": "int64", "optional": True, "field": "ts_us"},
            {"type": "int64", "optional": True, "field": "ts_ns"},
        ],
        "optional": False,
        "name": f"{SERVER}.{_namespace(connector)}.{table}.Envelope",
    }
    return _json({"schema": schema, "payload": payload})


def _namespace(connector: str) -> str:
    return DATABASE[connector] if connector == "mysql" else SCHEMA


def _source(connector: str, table: str, ts_ms: int, position: int, snapshot: bool) -> dict[str, Any]:
    common = {
        "version": "3.2.0.Final",
        "connector": connector,
        "name": SERVER,
        "ts_ms": ts_ms,
        "ts_us": ts_ms * 1000,
        "ts_ns": ts_ms * 10**6,
        "snapshot": snapshot,
        "db": DATABASE[connector],
    }
    if connector == "mysql":
        return common | {
            "table": table,
            "server_id": 223344,
            "gtid": None,
            "file": "mysql-bin.000003",
            "pos": 154 + position,
            "row": 0,
            "thread": 7,
            "query": None,
        }
    lsn = 24023128 + position
    return common | {
        "sequence": json.dumps([str(lsn - 9), str(lsn)]),
        "schema": SCHEMA,
        "table": table,
        "txId": 555 + position,
        "lsn": lsn,
        "xmin": None,
    }


def _struct(row: dict[str, Any], optional: bool) -> dict[str, Any]:
    """Kafka Connect's schema of a row: a struct of its columns."""
    return {
        "type": "struct",
        "fields": [{"type": _type(v), "optional": v is None, "field": k} for k, v in row.items()],
        "optional": optional,
    }


def _type(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "int32" if -(2**31) <= value < 2**31 else "int64"
    if isinstance(value, float):
        return "double"
    return "string"


def _json(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()
