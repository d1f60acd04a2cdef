"""Applies a batch of mutations to Redis exactly once, in few round trips.

The batch goes out as server-side script calls (apply.lua) of up to
`script_batch_size` mutations each. Each call checks and advances the applied
offset of every partition it carries in the same atomic step as the writes,
which is what makes a replay change nothing.

Scope of the offsets: on a standalone server one hash covers the database, so
calls can mix any keys. Under Redis Cluster the batch is split by hash slot
first and each slot keeps its own offsets hash, so every call touches the keys
of one slot only.

The calls of one scope are chained: each carries, per partition, the last
offset of the call before it, and the script writes nothing unless the
partition has reached it. Pipelined calls run independently, so without this
a refused call (out of memory) followed by an accepted one would move an offset
past records that were never applied.

Standalone, the calls are streamed: each is written to the socket as soon as
its mutations are projected, so Redis runs one call while Python prepares the
next, and the replies are read at the end (one round trip, like a pipeline,
but overlapped). They use EVAL rather than EVALSHA: the script is 3 KB, the
server caches it by hash, and there is never a NOSCRIPT to recover from.
On a cluster, a batch is thousands of small per-slot calls, so they carry the
script's hash after it is loaded on every primary (see _send_to_primaries);
calls answered NOSCRIPT or READONLY are sent again (see _resend_recoverable).

Its throughput, next to a naive pipeline of one command per record (no
offsets), is in docs/performance.md (`make bench`).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import redis
from redis.cluster import RedisCluster
from redis.crc import key_slot

try:
    import hiredis
except ImportError:  # optional: redis-py works without it
    hiredis = None  # type: ignore[assignment]

from cachesync import keys
from cachesync.config import MAX_SCRIPT_BATCH_SIZE
from cachesync.projections import ASSIGN, INCREMENT, REMOVE, SET, Mutation

APPLY_SCRIPT = (Path(__file__).parent / "apply.lua").read_text()


# (mutation, offsets field "<topic>/<partition>", offset): the Kafka coordinates that
# make a mutation idempotent. A plain tuple: one is built for every record, and a
# NamedTuple costs several times as much to build.
Pending = tuple[Mutation, str, int]


@dataclass
class WriteResult:
    applied: int = 0
    skipped: int = 0
    # (position in the pending sequence, Redis error) for mutations Redis refused,
    # e.g. WRONGTYPE when a key holds another type than the projection writes.
    refused: list[tuple[int, str]] = field(default_factory=list)
    # the first call that failed (apply(partial=True) only); the others were still read
    error: BaseException | None = None


class _Call:
    """One script call: the offsets hash, the data keys, the values, and each partition's mutations.

    A partition's mutations form one run in a call, so the script's order is the
    order they were added in (the positions list).
    """

    def __init__(self, offsets_key: str, slot: int | None = None, previous: dict[str, int] | None = None):
        self.offsets_key = offsets_key
        self.slot = slot  # the hash slot of every key here (cluster), or None (standalone)
        # each partition's last offset in the earlier calls of this batch and scope;
        # the script checks it was reached, so a failed call stops those after it
        self.previous = {} if previous is None else previous
        self.keys: dict[str, int] = {}  # data key -> its index in KEYS (from 2)
        self.values: list[bytes | str] = []  # ARGV[2..]
        self.partitions: dict[str, list[Any]] = {}  # field -> [field, mutations, previous offset]
        self.positions: list[int] = []  # pending position of each mutation, in the script's order
        self._field: str | None = None
        self._mutations: list[list[Any]] = []

    def add(self, position: int, item: Pending) -> bool:
        """Add the mutation; False (and nothing added) if its partition already had a run here."""
        m, field_, offset = item
        if field_ != self._field:  # partitions come in runs: look the group up once a run
            if field_ in self.partitions:
                return False
            self.partitions[field_] = [field_, [], self.previous.get(field_, -1)]
            self._field, self._mutations = field_, self.partitions[field_][1]
        key = self.keys.get(m.key)
        if key is None:
            key = self.keys[m.key] = len(self.keys) + 2
        code = m.code
        # the TTL goes with each mutation (not the partition's run), and only when set
        if code == SET:
            self.values.append(m.argument)
            if m.ttl:
                self._mutations.append([offset, key, code, len(self.values) + 1, m.ttl])
            else:
                self._mutations.append([offset, key, code, len(self.values) + 1])
        elif code in (INCREMENT, ASSIGN):
            if m.ttl:
                self._mutations.append([offset, key, code, m.member, m.argument, m.ttl])
            else:
                self._mutations.append([offset, key, code, m.member, m.argument])
        elif code == REMOVE:
            self._mutations.append([offset, key, code, m.member])
        else:
            self._mutations.append([offset, key, code])
        self.positions.append(position)
        return True

    def done(self) -> None:
        """Record this call's last offset per partition for the calls after it."""
        for field_, (_, mutations, _) in self.partitions.items():
            self.previous[field_] = mutations[-1][0]

    def command(self, sha: str | None = None) -> tuple[Any, ...]:
        plan = orjson.dumps(list(self.partitions.values()))
        script = ("EVALSHA", sha) if sha else ("EVAL", APPLY_SCRIPT)
        return (*script, len(self.keys) + 1, self.offsets_key, *self.keys, plan, *self.values)


class BatchWriter:
    def __init__(self, client: redis.Redis | RedisCluster, script_batch_size: int, retries: int = 3):
        self._client = client
        # every mutation adds at most two arguments (its key, its value): bounding the
        # mutations per call bounds the arguments per request (ElastiCache Serverless: 3,999)
        self._batch_size = min(script_batch_size, MAX_SCRIPT_BATCH_SIZE)
        self._retries = retries

    def apply(self, pending: Iterable[Pending], *, partial: bool = False) -> WriteResult:
        """Apply the mutations in order; `pending` may be a generator, consumed as calls fill.

        A call that failed raises its error, after the others were read. With
        `partial`, the result is returned instead with the error in `error`, so the
        caller can still report what the calls that ran refused (a retry would skip
        those mutations as applied and never report them again).
        """
        if isinstance(self._client, RedisCluster):
            calls = self._slot_calls(list(pending))
            replies = self._send_to_primaries(self._client, calls)
        else:
            calls, replies = self._stream(self._calls(enumerate(pending), keys.offsets_key()))
        self._resend_recoverable(calls, replies)
        result = WriteResult()
        for call, reply in zip(calls, replies, strict=True):
            if isinstance(reply, BaseException):
                result.error = result.error or reply
                continue
            applied, skipped, errors = reply
            result.applied += applied
            result.skipped += skipped
            if errors:
                positions = call.positions
                for position, message in zip(errors[::2], errors[1::2], strict=True):
                    result.refused.append((positions[position - 1], _text(message)))
        if result.error is not None and not partial:
            raise result.error
        return result

    def _calls(
        self, items: Iterable[tuple[int, Pending]], offsets_key: str, slot: int | None = None
    ) -> Iterator[_Call]:
        """The calls of one scope, in order, chained by their partitions' offsets."""
        previous: dict[str, int] = {}
        call = _Call(offsets_key, slot, previous)
        for position, item in items:
            if len(call.positions) == self._batch_size or not call.add(position, item):
                call.done()
                yield call
                call = _Call(offsets_key, slot, previous)
                call.add(position, item)
        if call.positions:
            call.done()
            yield call

    def _slot_calls(self, pending: list[Pending]) -> list[_Call]:
        by_slot: dict[int, list[tuple[int, Pending]]] = {}
        for position, item in enumerate(pending):
            by_slot.setdefault(key_slot(item[0].key.encode()), []).append((position, item))
        return [call for slot, items in by_slot.items() for call in self._calls(items, keys.offsets_key(slot), slot)]

    def _resend_recoverable(self, calls: list[_Call], replies: list[Any]) -> None:
        """Resend, in order and with EVAL, the calls a server turned away without running them.

        NOSCRIPT (a node that lost its script cache: a failover, a flush, reported
        on ElastiCache Serverless right after SCRIPT LOAD) and READONLY (a
        connection still on a primary that became a replica) mean the call wrote
        nothing; the calls chained behind it in its scope answered CACHESYNC_GAP and
        wrote nothing either. Resending them all, in their order, converges; a
        READONLY first drops the connections (standalone) or learns the new map
        (cluster). Bounded by the client's retries, with a short backoff.
        """
        for attempt in range(self._retries + 1):
            if not any(isinstance(reply, _TURNED_AWAY) for reply in replies):
                return
            redo = [i for i, reply in enumerate(replies) if isinstance(reply, _TURNED_AWAY) or _is_gap(reply)]
            if any(isinstance(replies[i], redis.exceptions.ReadOnlyError) for i in redo):
                self._reconnect()
                time.sleep(min(0.5, 0.05 * 2**attempt))
            try:
                resent = self._send_again([calls[i] for i in redo])
            except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError) as error:
                resent = [error] * len(redo)
            for i, reply in zip(redo, resent, strict=True):
                replies[i] = reply

    def _reconnect(self) -> None:
        if isinstance(self._client, RedisCluster):
            self._client.nodes_manager.initialize()
        else:
            self._client.connection_pool.disconnect()  # new connections resolve the endpoint again

    def _send_again(self, calls: list[_Call]) -> list[Any]:
        if isinstance(self._client, RedisCluster):
            replies: list[Any] = [None] * len(calls)
            self._node_round_trip(self._client, calls, None, replies)
            return replies
        return self._pipeline(calls)

    def _send_to_primaries(self, client: RedisCluster, calls: list[_Call]) -> list[Any]:
        """Cluster: each primary gets its calls in one write, replies read after all writes.

        A batch here is thousands of small per-slot calls. redis-py's cluster
        pipeline writes them one socket send each, and those system calls, not
        Redis, would bound the batch; one write per node does not (compare with
        `harness/bench_ingest.py --cluster`). Calls carry the script's hash, not
        its 3 KB body; the script is loaded on every primary first, and calls a
        node answers NOSCRIPT are sent again with EVAL (`_resend_recoverable`).
        """
        replies: list[Any] = [None] * len(calls)
        for attempt in (1, 2):
            try:
                sha = client.script_load(APPLY_SCRIPT)
                # only the calls whose replies were not read yet: those read keep the
                # refusals they reported (a resent call would skip them as applied)
                todo = [i for i, reply in enumerate(replies) if reply is None]
                answers: list[Any] = [None] * len(todo)
                try:
                    self._node_round_trip(client, [calls[i] for i in todo], sha, answers)
                finally:
                    for i, answer in zip(todo, answers, strict=True):
                        replies[i] = answer
            except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError) as error:
                if attempt == 2:
                    return [error if reply is None else reply for reply in replies]
                # a stale connection or a node gone: learn the topology again and
                # send the unanswered calls again (safe: each mutation applies once)
                client.nodes_manager.initialize()
                continue
            if any(isinstance(reply, _STALE_MAP_ERRORS) for reply in replies):
                client.nodes_manager.initialize()  # the retried invocation routes by the new map
            return replies
        raise AssertionError("unreachable")

    @staticmethod
    def _node_round_trip(client: RedisCluster, calls: list[_Call], sha: str | None, replies: list[Any]) -> None:
        """Fills `replies` (one per call) as they are read, so a failure keeps those already read."""
        by_node: dict[str, tuple[Any, list[int]]] = {}
        for index, call in enumerate(calls):
            node = client.nodes_manager.get_node_from_slot(call.slot or 0)  # set for every cluster call
            by_node.setdefault(node.name, (node, []))[1].append(index)
        in_flight: list[tuple[Any, Any, list[int]]] = []
        try:
            for node, indexes in by_node.values():
                pool = client.get_redis_connection(node).connection_pool
                connection: Any = pool.get_connection()  # redis-py leaves Connection methods untyped
                in_flight.append((pool, connection, indexes))
                connection.send_packed_command(_pack(connection, [calls[i].command(sha) for i in indexes]))
            for _, connection, indexes in in_flight:
                for index in indexes:
                    replies[index] = _read(connection)
        except BaseException:
            for _, connection, _ in in_flight:
                connection.disconnect()  # never hand back a connection with replies unread
            raise
        finally:
            for pool, connection, _ in in_flight:
                pool.release(connection)

    def _stream(self, calls: Iterator[_Call]) -> tuple[list[_Call], list[Any]]:
        """Write each call as soon as it is built; read all replies at the end."""
        assert isinstance(self._client, redis.Redis)
        pool = self._client.connection_pool
        connection: Any = pool.get_connection()  # redis-py leaves Connection methods untyped
        sent: list[_Call] = []
        replies: list[Any] = []
        try:
            for call in calls:
                sent.append(call)
                # the first write checks the connection's health (it may have idled while the function was frozen)
                connection.send_packed_command(_pack(connection, [call.command()]), check_health=len(sent) == 1)
            for _ in sent:
                replies.append(_read(connection))
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError):
            # Start over on a fresh connection with the client's retry and backoff,
            # from the first call whose reply was not read: sending calls again is
            # safe (each mutation is applied at most once), and the replies read
            # keep the refusals they reported.
            connection.disconnect()
            sent += calls  # what the generator had not yet produced
            rest = sent[len(replies) :]
            try:
                replies += self._pipeline(rest)
            except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError) as error:
                replies += [error] * len(rest)
            return sent, replies
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


# replies that mean the server did not run a call, and a resend (with EVAL, on a
# fresh connection or map) can: see BatchWriter._resend_recoverable
_TURNED_AWAY = (redis.exceptions.NoScriptError, redis.exceptions.ReadOnlyError)


def _is_gap(reply: Any) -> bool:
    return isinstance(reply, redis.exceptions.ResponseError) and str(reply).startswith("CACHESYNC_GAP")


# replies that mean the client's map of the cluster is out of date: slots moved,
# or a replica was promoted (its script cache is empty: NOSCRIPT)
_STALE_MAP_ERRORS = (
    redis.exceptions.AskError,
    redis.exceptions.TryAgainError,
    redis.exceptions.ClusterDownError,
    redis.exceptions.NoScriptError,
    redis.exceptions.ReadOnlyError,
)


def _pack(connection: Any, commands: list[tuple[Any, ...]]) -> list[bytes]:
    # hiredis packs our arguments (str, bytes, int) as they are, in C; redis-py's
    # own packer first re-checks every argument in Python, for every call of a batch
    if hiredis is not None:
        return [hiredis.pack_command(command) for command in commands]
    packed: list[bytes] = connection.pack_commands(commands)
    return packed


def _read(connection: Any) -> Any:
    try:
        return connection.read_response()
    except redis.exceptions.ResponseError as error:
        return error  # an error reply for one call; the others still have to be read


def _text(message: bytes | str) -> str:
    return message.decode("utf-8", "replace") if isinstance(message, bytes) else message
