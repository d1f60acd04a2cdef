"""The reference model of the cache, and a reader of what Redis actually holds.

The tests and `make soak` compare the two: Redis must end up exactly as if
each Kafka record had been applied once, in partition order.

The model is a second, independent reading of the data contract in the README
(it shares no code with `cachesync.projections`), so a bug in the projections
shows up as a difference instead of cancelling out.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable
from typing import Any

from cachesync import keys
from cachesync.config import Settings, TopicConfig
from cachesync.connection import RedisClient
from devkit.generator import decode_record

# key -> bytes (strings) or {member: score} (sorted sets)
State = dict[str, Any]

_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}\Z")


class Poison(Exception):
    pass


class ReferenceModel:
    """Applies records one by one, each once; feed each partition in offset order.

    `expiring` holds the keys the contract says carry a TTL: those last written
    by a topic with `*_TTL_SECONDS` set.
    """

    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings or Settings.from_env({})
        self.state: State = {}
        self.expiring: set[str] = set()
        self.poison = 0

    def apply(self, record: dict[str, Any]) -> None:
        config = self.settings.topic(record["topic"])
        assert config is not None, f"no projection for topic {record['topic']!r}"
        key, value = decode_record(record)
        try:
            if value is not None and len(value) > self.settings.max_value_bytes:
                raise Poison("too large")
            if config.kind == "stock_ledger":
                self._inventory(config, value)
            else:
                self._document(config, key, value)
        except Poison:
            self.poison += 1

    def _document(self, config: TopicConfig, key: bytes | None, value: bytes | None) -> None:
        if value is None:
            name = f"{config.key_prefix}:{_tombstone_id(key)}"
            self.state.pop(name, None)
            self.expiring.discard(name)
            return
        document = _object(value, config)
        name = f"{config.key_prefix}:{_id(document, config.key_field)}"
        self.state[name] = value  # as produced, byte for byte
        self._expire(name, config, after_set=True)

    def _inventory(self, config: TopicConfig, value: bytes | None) -> None:
        if value is None:
            raise Poison("inventory tombstone")
        event = _object(value, config)
        kind = event.get("type")
        if kind not in ("shipment", "purchase", "count", "remove"):
            raise Poison("type")
        name = f"{config.key_prefix}:{_id(event, config.key_field)}"
        member = "sku:" + _id(event, "sku")
        members = self.state.get(name, {})
        if kind == "remove":
            members.pop(member, None)
        else:
            units = event.get("units")
            if isinstance(units, bool) or not isinstance(units, int | float):
                raise Poison("units")
            if isinstance(units, float) and not (math.isfinite(units) and units == math.floor(units)):
                raise Poison("units")
            if units < 0:
                raise Poison("units")
            whole = int(units)
            if kind == "count":
                members[member] = float(whole)
            else:
                members[member] = members.get(member, 0.0) + float(whole if kind == "shipment" else -whole)
            self.state[name] = members
            self._expire(name, config, after_set=False)
        if not members:
            self.state.pop(name, None)
            self.expiring.discard(name)

    def _expire(self, name: str, config: TopicConfig, after_set: bool) -> None:
        if config.ttl_seconds > 0:
            self.expiring.add(name)
        elif after_set:  # SET without EX clears a TTL; ZADD and ZINCRBY keep one
            self.expiring.discard(name)


def _object(value: bytes, config: TopicConfig) -> dict[str, Any]:
    try:
        document = json.loads(value, parse_constant=_refuse)
    except (ValueError, RecursionError):
        raise Poison("not JSON") from None
    if not isinstance(document, dict):
        raise Poison("not an object")
    if config.schema is not None:
        import jsonschema  # another implementation than the one production uses

        if not jsonschema.Draft7Validator(json.loads(config.schema)).is_valid(document):
            raise Poison("schema")
    return document


def _refuse(constant: str) -> Any:
    raise ValueError(constant)


def _id(document: dict[str, Any], name: str) -> str:
    raw = document.get(name)
    if isinstance(raw, bool) or not isinstance(raw, int | str):
        raise Poison(name)
    text = str(raw)
    if not _ID.match(text):
        raise Poison(name)
    return text


def _tombstone_id(key: bytes | None) -> str:
    if key is None:
        raise Poison("tombstone without key")
    try:
        text = key.decode("utf-8")
    except UnicodeDecodeError:
        raise Poison("key not UTF-8") from None
    if not _ID.match(text):
        raise Poison("key")
    return text


def _distinct(records: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    distinct: dict[tuple[str, int, int], dict[str, Any]] = {}
    for record in records:
        distinct.setdefault((record["topic"], record["partition"], record["offset"]), record)
    return [distinct[coordinates] for coordinates in sorted(distinct)]


def model_of(settings: Settings, records: Iterable[dict[str, Any]]) -> ReferenceModel:
    """Each distinct (topic, partition, offset) applied once, in partition order."""
    model = ReferenceModel(settings)
    for record in _distinct(records):
        model.apply(record)
    return model


def model_state(settings: Settings, records: Iterable[dict[str, Any]]) -> State:
    return model_of(settings, records).state


def poison_coordinates(settings: Settings, records: Iterable[dict[str, Any]]) -> list[tuple[str, int, int]]:
    """(topic, partition, offset) of the records the contract refuses, sorted."""
    poison = []
    for record in records:
        model = ReferenceModel(settings)
        model.apply(record)
        if model.poison:
            poison.append((record["topic"], record["partition"], record["offset"]))
    return sorted(poison)


def redis_expiring(client: RedisClient, exclude: Iterable[str] = ("deadletter:ingest",)) -> set[str]:
    """The data keys that have a TTL."""
    skip = set(exclude)
    names = [k.decode() for k in client.scan_iter(count=5000)]
    names = [k for k in names if k not in skip and not keys.is_offsets_key(k)]
    ttls = _pipelined(client, [("PTTL", k) for k in names])
    return {name for name, ttl in zip(names, ttls, strict=True) if int(ttl) > 0}


def redis_state(client: RedisClient, exclude: Iterable[str] = ("deadletter:ingest",)) -> State:
    """Every data key and its value, read in pipelined chunks; no offsets hashes, and not the
    operator's figures (cachesync.opstats), which no model predicts."""
    skip = {*exclude, keys.BATCH_STATS_KEY, keys.PROCESSED_KEY}
    names = [k.decode() for k in client.scan_iter(count=5000)]
    names = [k for k in names if k not in skip and not keys.is_offsets_key(k)]
    state: State = {}
    for start in range(0, len(names), 1000):
        chunk = names[start : start + 1000]
        kinds = [_text(kind) for kind in _pipelined(client, [("TYPE", k) for k in chunk])]
        reads = [
            ("GET", k) if kind == "string" else ("ZRANGE", k, 0, -1, "WITHSCORES")
            for k, kind in zip(chunk, kinds, strict=True)
        ]
        for key, kind, value in zip(chunk, kinds, _pipelined(client, reads), strict=True):
            if kind == "string":
                state[key] = value
            elif kind == "zset":
                state[key] = {_text(m): float(s) for m, s in _pairs(value)}
            else:
                state[key] = kind
    return state


def _pipelined(client: RedisClient, commands: list[tuple[Any, ...]]) -> list[Any]:
    pipe = client.pipeline(transaction=False)
    for command in commands:
        pipe.execute_command(*command)
    return list(pipe.execute())


def _pairs(reply: Any) -> list[tuple[Any, Any]]:
    # RESP2 gives a flat list, RESP3 (or redis-py's parsing) pairs
    if reply and not isinstance(reply[0], list | tuple):
        return list(zip(reply[0::2], reply[1::2], strict=True))
    return [tuple(pair) for pair in reply]


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
