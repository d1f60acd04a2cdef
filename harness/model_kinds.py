"""The reference model of the hash, json and stream kinds, per-record TTLs and Debezium change
events, and a reader of what Redis holds for them.

Like harness.model, a second and independent reading of the contract (README: "Kinds of
topic" and "Debezium change events"): it reads the topics table itself with tomllib and shares
no code with `cachesync`, so a bug in the projections or the fence shows up as a difference.

State, per key: ("hash", {field: text}), ("json", document), ("stream", [{field: text}, ...]),
("string", document) for a document topic (compared as parsed JSON), ("zset", {member: score}).
"""

from __future__ import annotations

import base64
import json
import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

State = dict[str, tuple[str, Any]]

_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}\Z")
# the positions hashes (a slot's, or a standalone server's one) and the database's offsets hash
_POSITIONS = re.compile(r"cachesync:offsets(:\{([0-9]+|positions)\})?\Z")
NOT_DATA = ("deadletter:ingest", "cachesync:batches", "cachesync:processed")


class Poison(Exception):
    pass


@dataclass(frozen=True)
class Topic:
    name: str
    kind: str
    topic: str
    prefix: str
    key_field: str
    ttl_seconds: int
    merge: bool
    debezium: bool
    ttl_header: str | None
    max_length: int


def read_topics(table: Path) -> dict[str, Topic]:
    """The entries of a topics table, by Kafka topic."""
    with table.open("rb") as file:
        entries = tomllib.load(file)["topic"]
    return {
        e["topic"]: Topic(
            e["name"],
            e["kind"],
            e["topic"],
            e["key_prefix"],
            e["key_field"],
            int(e.get("ttl_seconds", 0)),
            e.get("on_update", "replace") == "merge",
            e.get("envelope") == "debezium",
            e.get("ttl_header"),
            int(e.get("max_length", 0)),
        )
        for e in entries
    }


class KindsModel:
    """Applies records one by one, each once, in the order given (each partition in offset order)."""

    def __init__(self, table: Path) -> None:
        self.topics = read_topics(table)
        self.state: State = {}
        self.expiring: set[str] = set()
        self.poison: list[tuple[str, int, int]] = []

    def apply_all(self, records: Iterable[dict[str, Any]]) -> KindsModel:
        distinct: dict[tuple[str, int, int], dict[str, Any]] = {}
        for record in records:
            distinct.setdefault((record["topic"], record["partition"], record["offset"]), record)
        for coordinates in sorted(distinct):
            self.apply(distinct[coordinates])
        return self

    def apply(self, record: dict[str, Any]) -> None:
        topic = self.topics[record["topic"]]
        key = None if record.get("key") is None else base64.b64decode(record["key"])
        value = None if record.get("value") is None else base64.b64decode(record["value"])
        try:
            ttl = _header_ttl(topic, record.get("headers") or [])
            if ttl is None:
                ttl = topic.ttl_seconds
            if topic.debezium:
                self._change_event(topic, key, value, ttl)
            elif value is None:
                if topic.kind == "stream":
                    raise Poison("stream tombstone")
                self._delete(f"{topic.prefix}:{_plain_id(key)}")
            else:
                row = _object(value)
                self._write(topic, f"{topic.prefix}:{_id(row.get(topic.key_field))}", row, ttl)
        except Poison:
            self.poison.append((record["topic"], record["partition"], record["offset"]))

    def _change_event(self, topic: Topic, key: bytes | None, value: bytes | None, ttl: int) -> None:
        if value is None:
            self._delete(f"{topic.prefix}:{_key_id(topic, key)}")
            return
        event = _unwrap(_parse(value))
        if not isinstance(event, dict) or "op" not in event:
            raise Poison("not a change event")
        op = event["op"]
        if op in ("c", "r", "u"):
            row = event.get("after")
            if not isinstance(row, dict):
                raise Poison("no after")
            identifier = _id(row[topic.key_field]) if topic.key_field in row else _key_id(topic, key)
            self._write(topic, f"{topic.prefix}:{identifier}", row, ttl)
        elif op == "d":
            before = event.get("before")
            if isinstance(before, dict) and topic.key_field in before:
                self._delete(f"{topic.prefix}:{_id(before[topic.key_field])}")
            else:
                self._delete(f"{topic.prefix}:{_key_id(topic, key)}")
        else:  # t, m and anything else: not applied
            raise Poison(f"op {op!r}")

    def _write(self, topic: Topic, name: str, row: dict[str, Any], ttl: int) -> None:
        replaces = True
        if topic.kind == "hash":
            fields = {k: _text(v) for k, v in row.items() if v is not None}
            if topic.merge:
                replaces = False
                old = dict(self.state[name][1]) if name in self.state else {}
                for k, v in row.items():
                    if v is None:
                        old.pop(k, None)
                    else:
                        old[k] = _text(v)
                fields = old
            if fields:
                self.state[name] = ("hash", fields)
            else:
                self._forget(name)
                return
        elif topic.kind == "json":
            if topic.merge:
                replaces = False
                old = self.state[name][1] if name in self.state else {}
                self.state[name] = ("json", merge_patch(old, row))
            else:
                self.state[name] = ("json", row)
        elif topic.kind == "stream":
            fields = {k: _text(v) for k, v in row.items() if v is not None}
            if not fields:
                raise Poison("empty entry")
            replaces = False
            entries = list(self.state[name][1]) if name in self.state else []
            self.state[name] = ("stream", [*entries, fields])
        elif topic.kind == "document":
            self.state[name] = ("string", row)
        else:
            raise AssertionError(f"the kinds model does not cover {topic.kind}")
        if ttl > 0:
            self.expiring.add(name)
        elif replaces:
            self.expiring.discard(name)

    def _delete(self, name: str) -> None:
        self._forget(name)

    def _forget(self, name: str) -> None:
        self.state.pop(name, None)
        self.expiring.discard(name)


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7396 JSON Merge Patch."""
    if not isinstance(patch, dict):
        return patch
    result = dict(target) if isinstance(target, dict) else {}
    for k, v in patch.items():
        if v is None:
            result.pop(k, None)
        else:
            result[k] = merge_patch(result.get(k), v)
    return result


def _header_ttl(topic: Topic, headers: list[dict[str, list[int]]]) -> int | None:
    if topic.ttl_header is None:
        return None
    found = None
    for header in headers:
        if topic.ttl_header in header:
            found = bytes(b % 256 for b in header[topic.ttl_header])
    if found is None:
        return None
    text = found.decode("ascii", "replace").strip()
    if not re.fullmatch(r"[0-9]+", text) or int(text) >= 2**31:
        raise Poison("ttl header")
    return int(text)


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _parse(value: bytes) -> Any:
    try:
        return json.loads(value, parse_constant=_refuse)
    except (ValueError, RecursionError):
        raise Poison("not JSON") from None


def _refuse(constant: str) -> Any:
    raise ValueError(constant)


def _object(value: bytes) -> dict[str, Any]:
    document = _parse(value)
    if not isinstance(document, dict):
        raise Poison("not an object")
    return document


def _unwrap(document: Any) -> Any:
    if isinstance(document, dict) and set(document) == {"schema", "payload"}:
        return document["payload"]
    return document


def _id(raw: Any) -> str:
    if isinstance(raw, bool) or not isinstance(raw, int | str):
        raise Poison("id")
    if isinstance(raw, int) and raw < 0:
        raise Poison("id")
    text = str(raw)
    if not _ID.match(text):
        raise Poison("id")
    return text


def _plain_id(key: bytes | None) -> str:
    if key is None:
        raise Poison("no key")
    try:
        return _id(key.decode("utf-8"))
    except UnicodeDecodeError:
        raise Poison("key") from None


def _key_id(topic: Topic, key: bytes | None) -> str:
    if key is None:
        raise Poison("no key")
    try:
        document = _unwrap(json.loads(key))
    except ValueError:
        return _plain_id(key)
    if isinstance(document, dict):
        if topic.key_field not in document:
            raise Poison("key without the key field")
        return _id(document[topic.key_field])
    return _id(document)


# --- what Redis holds -----------------------------------------------------------------------------
def redis_kinds_state(client: Any) -> State:
    """Every data key, read back in the model's form (offsets hashes and the operator's keys left out)."""
    state: State = {}
    for raw in client.scan_iter(count=1000):
        name = raw.decode()
        if name in NOT_DATA or _POSITIONS.match(name):
            continue
        kind = client.type(name).decode()
        if kind == "hash":
            state[name] = ("hash", {k.decode(): v.decode() for k, v in client.hgetall(name).items()})
        elif kind == "stream":
            entries = client.xrange(name)
            state[name] = ("stream", [{k.decode(): v.decode() for k, v in fields.items()} for _, fields in entries])
        elif kind == "ReJSON-RL":
            state[name] = ("json", json.loads(client.execute_command("JSON.GET", name)))
        elif kind == "string":
            state[name] = ("string", json.loads(client.get(name)))
        elif kind == "zset":
            state[name] = ("zset", {m.decode(): s for m, s in client.zrange(name, 0, -1, withscores=True)})
        else:
            state[name] = (kind, None)
    return state


def redis_expiring(client: Any, names: Iterable[str]) -> set[str]:
    return {name for name in names if client.pttl(name) > 0}


def stream_lengths(state: Mapping[str, tuple[str, Any]]) -> dict[str, int]:
    return {name: len(value) for name, (kind, value) in state.items() if kind == "stream"}
