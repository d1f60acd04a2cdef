"""Shared by the integration suites: reading Redis state, and the reference model."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from cachesync import keys
from cachesync.config import Settings
from cachesync.connection import RedisClient
from cachesync.projections import ASSIGN, DELETE, INCREMENT, REMOVE, SET, PoisonRecord, project
from devkit.generator import decode_record


def data_state(client: RedisClient, exclude: Iterable[str] = ("deadletter:ingest",)) -> dict[str, Any]:
    """Every data key and its value (strings as bytes, sorted sets as dicts); no offsets hashes."""
    skip = set(exclude)
    state: dict[str, Any] = {}
    for raw in client.scan_iter(count=1000):
        key = raw.decode()
        if key in skip or keys.is_offsets_key(key):
            continue
        kind = client.type(key)
        kind = kind.decode() if isinstance(kind, bytes) else kind
        if kind == "string":
            state[key] = client.get(key)
        elif kind == "zset":
            state[key] = {m.decode(): s for m, s in client.zrange(key, 0, -1, withscores=True)}
        else:
            state[key] = kind
    return state


def model_state(settings: Settings, records: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """The reference: each distinct (topic, partition, offset) applied once, in partition order."""
    distinct: dict[tuple[str, int, int], dict[str, Any]] = {}
    for record in records:
        distinct.setdefault((record["topic"], record["partition"], record["offset"]), record)
    state: dict[str, Any] = {}
    for coordinates in sorted(distinct):
        record = distinct[coordinates]
        config = settings.topic(record["topic"])
        assert config is not None
        key, value = decode_record(record)
        try:
            m = project(config, key, value)
        except PoisonRecord:
            continue
        if m.code == SET:
            state[m.key] = m.argument
        elif m.code == DELETE:
            state.pop(m.key, None)
        else:
            members = state.setdefault(m.key, {})
            if m.code == INCREMENT:
                members[m.member] = members.get(m.member, 0.0) + float(m.argument)
            elif m.code == ASSIGN:
                members[m.member] = float(m.argument)
            elif m.code == REMOVE:
                members.pop(m.member, None)
                if not members:
                    del state[m.key]
    return state


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
