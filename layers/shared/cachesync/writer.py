"""Applies a batch of mutations to Redis exactly once, in few round trips.

Mutations are grouped by key (keeping partition order within each key) and
sent as server-side script calls of up to `script_batch_size` mutations, all
in one pipeline. Under Redis Cluster the groups are split by hash slot first,
so every script call touches the keys of one slot only.

Why one script per group rather than one command per record: the script reads
the key's recorded offsets and writes the data in the same atomic step, which
is what makes a replay change nothing, and it turns thousands of commands into
a handful of round trips.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis
from redis.cluster import RedisCluster
from redis.crc import key_slot

from cachesync import keys
from cachesync.projections import Mutation

APPLY_SCRIPT = (Path(__file__).parent / "apply.lua").read_text()
APPLY_SHA = hashlib.sha1(APPLY_SCRIPT.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class Pending:
    """A mutation with the Kafka coordinates that make it idempotent."""

    mutation: Mutation
    topic: str
    partition: int
    offset: int


@dataclass
class WriteResult:
    applied: int = 0
    skipped: int = 0
    # (index into the pending list, Redis error) for mutations Redis refused,
    # e.g. WRONGTYPE when a key holds another type than the projection writes.
    refused: list[tuple[int, str]] = field(default_factory=list)


@dataclass
class _Call:
    keys: list[str] = field(default_factory=list)
    args: list[Any] = field(default_factory=list)
    indexes: list[int] = field(default_factory=list)  # pending index of each mutation, in order


class BatchWriter:
    def __init__(self, client: redis.Redis | RedisCluster, script_batch_size: int, tombstone_retention: int):
        self._client = client
        self._cluster = isinstance(client, RedisCluster)
        self._batch_size = script_batch_size
        self._retention = tombstone_retention

    def apply(self, pending: Sequence[Pending]) -> WriteResult:
        calls = self._plan(pending)
        result = WriteResult()
        if not calls:
            return result
        replies = self._run(calls)
        for call, reply in zip(calls, replies, strict=True):
            applied, skipped, errors = reply
            result.applied += applied
            result.skipped += skipped
            for position, message in zip(errors[::2], errors[1::2], strict=True):
                result.refused.append((call.indexes[position - 1], _text(message)))
        return result

    def _plan(self, pending: Sequence[Pending]) -> list[_Call]:
        # key -> indexes of its mutations; dicts keep insertion order, and the
        # pending list is in partition order, so each key's order is kept.
        by_key: dict[str, list[int]] = {}
        for index, item in enumerate(pending):
            by_key.setdefault(item.mutation.key, []).append(index)
        groups: list[list[str]]
        if self._cluster:
            by_slot: dict[int, list[str]] = {}
            for key in by_key:
                by_slot.setdefault(key_slot(key.encode()), []).append(key)
            groups = list(by_slot.values())
        else:
            groups = [list(by_key)]

        calls: list[_Call] = []
        for group in groups:
            call = _Call()
            for key in group:
                indexes = by_key[key]
                # a key's mutations may span calls; calls for one key run in order
                for start in range(0, len(indexes), self._batch_size):
                    chunk = indexes[start : start + self._batch_size]
                    if len(call.indexes) + len(chunk) > self._batch_size and call.indexes:
                        calls.append(call)
                        call = _Call()
                    call.keys += (key, keys.offsets_key(key))
                    call.args.append(len(chunk))
                    for index in chunk:
                        item = pending[index]
                        m = item.mutation
                        call.args += (
                            f"{item.topic}/{item.partition}",
                            item.offset,
                            m.code,
                            m.member,
                            m.argument,
                            m.ttl,
                        )
                    call.indexes += chunk
            if call.indexes:
                calls.append(call)
        return calls

    def _run(self, calls: list[_Call]) -> list[Any]:
        replies = self._pipeline(calls)
        missing = [i for i, reply in enumerate(replies) if isinstance(reply, redis.exceptions.NoScriptError)]
        if missing:
            # First use on this server (or after a restart or failover): load
            # the script and send again the calls that missed it. Re-sending is
            # safe because a call applies each mutation at most once.
            self._client.script_load(APPLY_SCRIPT)
            for i, reply in zip(missing, self._pipeline([calls[i] for i in missing]), strict=True):
                replies[i] = reply
        for reply in replies:
            if isinstance(reply, Exception):
                raise reply
        return replies

    def _pipeline(self, calls: list[_Call]) -> list[Any]:
        pipe = self._client.pipeline(transaction=False)
        for call in calls:
            pipe.execute_command("EVALSHA", APPLY_SHA, len(call.keys), *call.keys, self._retention, *call.args)
        return list(pipe.execute(raise_on_error=False))


def _text(message: bytes | str) -> str:
    return message.decode("utf-8", "replace") if isinstance(message, bytes) else message
