"""Applies a batch of mutations to Redis exactly once, in few round trips.

The batch goes out as server-side script calls (apply.lua) of up to
`script_batch_size` mutations each. Each call checks and advances the applied
offset of every partition it carries in the same atomic step as the writes,
which is what makes a replay change nothing.

Scope of the offsets: on a standalone server one hash covers the database, so
calls can mix any keys. Under Redis Cluster the batch is split by hash slot
first and each slot keeps its own offsets hash, so every call touches the keys
of one slot only.

Standalone, the calls are streamed: each is written to the socket as soon as
its mutations are projected, so Redis runs one call while Python prepares the
next, and the replies are read at the end (one round trip, like a pipeline,
but overlapped). Calls use EVAL rather than EVALSHA: the script is 3 KB, the
server caches it by hash, and there is never a NOSCRIPT to recover from, so
calls can never run out of order.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import orjson
import redis
from redis.cluster import RedisCluster
from redis.crc import key_slot

from cachesync import keys
from cachesync.projections import ASSIGN, INCREMENT, REMOVE, SET, Mutation

APPLY_SCRIPT = (Path(__file__).parent / "apply.lua").read_text()


class Pending(NamedTuple):
    """A mutation with the Kafka coordinates that make it idempotent (a tuple: one per record)."""

    mutation: Mutation
    field: str  # "<topic>/<partition>", see keys.offsets_field
    offset: int


@dataclass
class WriteResult:
    applied: int = 0
    skipped: int = 0
    # (position in the pending sequence, Redis error) for mutations Redis refused,
    # e.g. WRONGTYPE when a key holds another type than the projection writes.
    refused: list[tuple[int, str]] = field(default_factory=list)


class _Call:
    """One script call: the offsets hash, the data keys, the values, and each partition's mutations.

    A partition's mutations form one run in a call, so the script's order is the
    order they were added in (the positions list).
    """

    def __init__(self, offsets_key: str):
        self.offsets_key = offsets_key
        self.keys: dict[str, int] = {}  # data key -> its index in KEYS (from 2)
        self.values: list[bytes | str] = []  # ARGV[2..]
        self.partitions: dict[str, list[Any]] = {}  # field -> [field, ttl, mutations]
        self.positions: list[int] = []  # pending position of each mutation, in the script's order
        self._field: str | None = None
        self._mutations: list[list[Any]] = []

    def add(self, position: int, item: Pending) -> bool:
        """Add the mutation; False (and nothing added) if its partition already had a run here."""
        m = item.mutation
        if item.field != self._field:  # partitions come in runs: look the group up once a run
            if item.field in self.partitions:
                return False
            self.partitions[item.field] = [item.field, m.ttl, []]  # a partition is one topic: one TTL
            self._field, self._mutations = item.field, self.partitions[item.field][2]
        key = self.keys.get(m.key)
        if key is None:
            key = self.keys[m.key] = len(self.keys) + 2
        code = m.code
        if code == SET:
            self.values.append(m.argument)
            self._mutations.append([item.offset, key, code, len(self.values) + 1])
        elif code in (INCREMENT, ASSIGN):
            self._mutations.append([item.offset, key, code, m.member, m.argument])
        elif code == REMOVE:
            self._mutations.append([item.offset, key, code, m.member])
        else:
            self._mutations.append([item.offset, key, code])
        self.positions.append(position)
        return True

    def command(self) -> tuple[Any, ...]:
        plan = orjson.dumps(list(self.partitions.values()))
        return ("EVAL", APPLY_SCRIPT, len(self.keys) + 1, self.offsets_key, *self.keys, plan, *self.values)


class BatchWriter:
    def __init__(self, client: redis.Redis | RedisCluster, script_batch_size: int):
        self._client = client
        self._cluster = isinstance(client, RedisCluster)
        self._batch_size = script_batch_size

    def apply(self, pending: Iterable[Pending]) -> WriteResult:
        """Apply the mutations in order; `pending` may be a generator, consumed as calls fill."""
        if self._cluster:
            calls = self._slot_calls(list(pending))
            replies = self._pipeline(calls)
        else:
            calls, replies = self._stream(self._calls(enumerate(pending), keys.offsets_key()))
        result = WriteResult()
        for call, reply in zip(calls, replies, strict=True):
            if isinstance(reply, Exception):
                raise reply
            applied, skipped, errors = reply
            result.applied += applied
            result.skipped += skipped
            if errors:
                positions = call.positions
                for position, message in zip(errors[::2], errors[1::2], strict=True):
                    result.refused.append((positions[position - 1], _text(message)))
        return result

    def _calls(self, items: Iterable[tuple[int, Pending]], offsets_key: str) -> Iterator[_Call]:
        call = _Call(offsets_key)
        for position, item in items:
            if len(call.positions) == self._batch_size or not call.add(position, item):
                yield call
                call = _Call(offsets_key)
                call.add(position, item)
        if call.positions:
            yield call

    def _slot_calls(self, pending: list[Pending]) -> list[_Call]:
        by_slot: dict[int, list[tuple[int, Pending]]] = {}
        for position, item in enumerate(pending):
            by_slot.setdefault(key_slot(item.mutation.key.encode()), []).append((position, item))
        return [call for slot, items in by_slot.items() for call in self._calls(items, keys.offsets_key(slot))]

    def _stream(self, calls: Iterator[_Call]) -> tuple[list[_Call], list[Any]]:
        """Write each call as soon as it is built; read all replies at the end."""
        assert isinstance(self._client, redis.Redis)
        pool = self._client.connection_pool
        connection: Any = pool.get_connection()  # redis-py leaves Connection methods untyped
        sent: list[_Call] = []
        try:
            for call in calls:
                sent.append(call)
                # the first write checks the connection's health (it may have idled while the function was frozen)
                connection.send_packed_command(connection.pack_command(*call.command()), check_health=len(sent) == 1)
            replies = [_read(connection) for _ in sent]
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError):
            # Start over on a fresh connection with the client's retry and backoff:
            # sending calls again is safe, each mutation is applied at most once.
            connection.disconnect()
            sent += calls  # what the generator had not yet produced
            return sent, self._pipeline(sent)
        except BaseException:
            connection.disconnect()  # never hand back a connection with replies unread
            raise
        finally:
            pool.release(connection)
        return sent, replies

    def _pipeline(self, calls: list[_Call]) -> list[Any]:
        pipe = self._client.pipeline(transaction=False)
        for call in calls:
            pipe.execute_command(*call.command())
        return list(pipe.execute(raise_on_error=False))


def _read(connection: Any) -> Any:
    try:
        return connection.read_response()
    except redis.exceptions.ResponseError as error:
        return error  # an error reply for one call; the others still have to be read


def _text(message: bytes | str) -> str:
    return message.decode("utf-8", "replace") if isinstance(message, bytes) else message
