"""The reference model of the cache, and a reader of what Redis actually holds.

The tests and `make soak` compare the two: Redis must end up exactly as if
each Kafka record had been applied once, in partition order.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from cachesync import keys
from cachesync.config import Settings
from cachesync.connection import RedisClient
from cachesync.projections import ASSIGN, DELETE, INCREMENT, REMOVE, SET, PoisonRecord, project
from devkit.generator import decode_record

# key -> bytes (strings) or {member: score} (sorted sets)
State = dict[str, Any]


class ReferenceModel:
    """Applies records one by one, each once; feed each partition in offset order."""

    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings or Settings.from_env({})
        self.state: State = {}
        self.poison = 0

    def apply(self, record: dict[str, Any]) -> None:
        config = self.settings.topic(record["topic"])
        assert config is not None, f"no projection for topic {record['topic']!r}"
        try:
            m = project(config, *decode_record(record))
        except PoisonRecord:
            self.poison += 1
            return
        if m.code == SET:
            self.state[m.key] = bytes(m.argument) if isinstance(m.argument, bytes) else m.argument.encode()
        elif m.code == DELETE:
            self.state.pop(m.key, None)
        else:
            members = self.state.setdefault(m.key, {})
            if m.code == INCREMENT:
                members[m.member] = members.get(m.member, 0.0) + float(m.argument)
            elif m.code == ASSIGN:
                members[m.member] = float(m.argument)
            elif m.code == REMOVE:
                members.pop(m.member, None)
            if not members:
                del self.state[m.key]


def model_state(settings: Settings, records: Iterable[dict[str, Any]]) -> State:
    """Each distinct (topic, partition, offset) applied once, in partition order."""
    distinct: dict[tuple[str, int, int], dict[str, Any]] = {}
    for record in records:
        distinct.setdefault((record["topic"], record["partition"], record["offset"]), record)
    model = ReferenceModel(settings)
    for coordinates in sorted(distinct):
        model.apply(distinct[coordinates])
    return model.state


def poison_coordinates(settings: Settings, records: Iterable[dict[str, Any]]) -> list[tuple[str, int, int]]:
    """(topic, partition, offset) of the records the projections refuse, sorted."""
    poison = []
    for record in records:
        config = settings.topic(record["topic"])
        assert config is not None
        try:
            project(config, *decode_record(record))
        except PoisonRecord:
            poison.append((record["topic"], record["partition"], record["offset"]))
    return sorted(poison)


def redis_state(client: RedisClient, exclude: Iterable[str] = ("deadletter:ingest",)) -> State:
    """Every data key and its value, read in pipelined chunks; no offsets hashes."""
    skip = set(exclude)
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
