"""The reference model of the cache, and a reader of what Redis actually holds.

The tests and `make soak` compare the two: Redis must end up exactly as if
each Kafka record had been applied once, in partition order.

The model is a second, independent reading of the data contract in the README
(it shares no code with `cachesync.projections`), so a bug in the projections
shows up as a difference instead of cancelling out. It reads the contract
itself too: the entries of topics.toml, with tomllib, and the environment
variables the README says override them, never through `cachesync.config`, so
a bug in reading the configuration shows up as well.
"""

from __future__ import annotations

import json
import math
import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cachesync import keys
from cachesync.config import Settings
from cachesync.connection import RedisClient
from devkit.generator import decode_record

# key -> bytes (strings) or {member: score} (sorted sets)
State = dict[str, Any]

TOPICS_TABLE = Path(__file__).resolve().parents[1] / "layers" / "shared" / "cachesync" / "topics.toml"
MAX_VALUE_BYTES = 1_048_576  # the README's default for MAX_VALUE_BYTES

_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}\Z")


class Poison(Exception):
    pass


@dataclass(frozen=True)
class TopicContract:
    """One topic as the README's contract table and the topics.toml entry describe it."""

    name: str
    kind: str  # document | stock_ledger
    topic: str
    key_prefix: str
    key_field: str
    ttl_seconds: int
    schema: dict[str, Any] | None


@dataclass(frozen=True)
class DataContract:
    topics: dict[str, TopicContract]  # by Kafka topic name
    max_value_bytes: int

    @classmethod
    def read(cls, env: Mapping[str, str] | None = None) -> DataContract:
        """topics.toml's entries with the README's overrides from `env`: `TOPIC_<NAME>`,
        `<NAME>_KEY_PREFIX`, `<NAME>_KEY_FIELD`, `<NAME>_TTL_SECONDS`, `<NAME>_SCHEMA` (inline
        JSON or a file) and `MAX_VALUE_BYTES`; an empty variable is no override."""
        env = env or {}
        with TOPICS_TABLE.open("rb") as table:
            entries = tomllib.load(table)["topic"]
        topics = {}
        for entry in entries:
            upper = entry["name"].upper()
            schema = env.get(f"{upper}_SCHEMA") or entry.get("schema")
            contract = TopicContract(
                name=entry["name"],
                kind=entry["kind"],
                topic=env.get(f"TOPIC_{upper}") or entry["topic"],
                key_prefix=env.get(f"{upper}_KEY_PREFIX") or entry["key_prefix"],
                key_field=env.get(f"{upper}_KEY_FIELD") or entry["key_field"],
                ttl_seconds=int(env.get(f"{upper}_TTL_SECONDS") or entry.get("ttl_seconds", 0)),
                schema=_json_schema(schema) if schema else None,
            )
            assert contract.kind in ("document", "stock_ledger"), f"topics.toml: unknown kind {contract.kind!r}"
            topics[contract.topic] = contract
        return cls(topics, int(env.get("MAX_VALUE_BYTES") or MAX_VALUE_BYTES))

    @classmethod
    def of(cls, source: Mapping[str, str] | Settings | DataContract | None) -> DataContract:
        """The contract of an environment; for a `Settings`, the contract without overrides,
        after checking that those settings override nothing the model would then get wrong."""
        if isinstance(source, DataContract):
            return source
        if source is None or isinstance(source, Mapping):
            return cls.read(source)
        contract = cls.read({})
        theirs = {
            t.topic: (t.kind, t.key_prefix, t.key_field, t.ttl_seconds, t.schema is not None) for t in source.topics
        }
        ours = {
            t.topic: (t.kind, t.key_prefix, t.key_field, t.ttl_seconds, t.schema is not None)
            for t in contract.topics.values()
        }
        if theirs != ours or source.max_value_bytes != contract.max_value_bytes:
            raise ValueError(
                "these settings change the data contract: give the model the environment they were read from, "
                f"so that it reads the contract itself (settings {theirs}, topics.toml {ours})"
            )
        return contract


# what the model is given: the functions' environment (or a contract read from one), or
# Settings that override nothing
Contract = Mapping[str, str] | Settings | DataContract


def _json_schema(setting: str) -> dict[str, Any]:
    text = setting if setting.lstrip().startswith("{") else Path(setting).read_text()
    schema = json.loads(text)
    assert isinstance(schema, dict), f"a JSON Schema is an object: {setting[:80]!r}"
    return schema


class ReferenceModel:
    """Applies records one by one, each once; feed each partition in offset order.

    `expiring` holds the keys the contract says carry a TTL: those last written
    by a topic with `*_TTL_SECONDS` set.
    """

    def __init__(self, contract: Contract | None = None) -> None:
        self.contract = DataContract.of(contract)
        self.state: State = {}
        self.expiring: set[str] = set()
        self.poison = 0

    def apply(self, record: dict[str, Any]) -> None:
        config = self.contract.topics.get(record["topic"])
        assert config is not None, f"no projection for topic {record['topic']!r}"
        key, value = decode_record(record)
        try:
            if value is not None and len(value) > self.contract.max_value_bytes:
                raise Poison("too large")
            if config.kind == "stock_ledger":
                self._inventory(config, value)
            else:
                self._document(config, key, value)
        except Poison:
            self.poison += 1

    def _document(self, config: TopicContract, key: bytes | None, value: bytes | None) -> None:
        if value is None:
            name = f"{config.key_prefix}:{_tombstone_id(key)}"
            self.state.pop(name, None)
            self.expiring.discard(name)
            return
        document = _object(value, config)
        name = f"{config.key_prefix}:{_id(document, config.key_field)}"
        self.state[name] = value  # as produced, byte for byte
        self._expire(name, config, after_set=True)

    def _inventory(self, config: TopicContract, value: bytes | None) -> None:
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

    def _expire(self, name: str, config: TopicContract, after_set: bool) -> None:
        if config.ttl_seconds > 0:
            self.expiring.add(name)
        elif after_set:  # SET without EX clears a TTL; ZADD and ZINCRBY keep one
            self.expiring.discard(name)


def _object(value: bytes, config: TopicContract) -> dict[str, Any]:
    try:
        document = json.loads(value, parse_constant=_refuse)
    except (ValueError, RecursionError):
        raise Poison("not JSON") from None
    if not isinstance(document, dict):
        raise Poison("not an object")
    if config.schema is not None:
        import jsonschema  # another implementation than the one production uses

        if not jsonschema.Draft7Validator(config.schema).is_valid(document):
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


def model_of(contract: Contract, records: Iterable[dict[str, Any]]) -> ReferenceModel:
    """Each distinct (topic, partition, offset) applied once, in partition order; `contract` is
    the functions' environment (the topics' overrides), or Settings that override nothing."""
    model = ReferenceModel(contract)
    for record in _distinct(records):
        model.apply(record)
    return model


def model_state(contract: Contract, records: Iterable[dict[str, Any]]) -> State:
    return model_of(contract, records).state


def poison_coordinates(contract: Contract, records: Iterable[dict[str, Any]]) -> list[tuple[str, int, int]]:
    """(topic, partition, offset) of the records the contract refuses, sorted."""
    contract = DataContract.of(contract)
    poison = []
    for record in records:
        model = ReferenceModel(contract)
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
