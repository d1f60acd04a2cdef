"""Applies a batch of mutations to Redis exactly once, in few round trips.

The batch goes out as server-side script calls (apply.lua) of up to
`script_batch_size` mutations each. Each call checks and advances the applied
offset of every partition it carries in the same atomic step as the writes,
which is what makes a replay change nothing.

Scope of the offsets: on a standalone server one hash covers the database, so
calls can mix any keys. Under Redis Cluster the batch is split by hash slot
first and each slot keeps its own offsets hash, so every call touches the keys
of one slot only.

On a cluster, the partitions whose records are all document writes (a SET or a
DEL: overwrites) take another guard, since their keys spread over thousands of
slots and a script call per slot would bound the batch. An overwrite applied
again in partition order changes nothing; what must never happen is an older
value after a newer one. So the guard is per partition, in the database's
offsets hash: the applied offset, and while a batch is under way its intent,
the keys it may have written with the offset of each value (see _overwrite).
With the intent, a lease: the attempt applying the partition and a deadline in
the server's clock, at least the function's timeout away, so two invocations
(a consumer-group rebalance) never write one partition at once; the second
fails with PartitionBusy and Lambda retries it. A failed attempt ends its lease
so its retry proceeds at once; when Redis is out of reach it cannot, and the
retry waits for the deadline (OVERWRITE_LEASE_SECONDS at most).

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
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
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
from cachesync.config import MAX_SCRIPT_BATCH_SIZE, OVERWRITE_LEASE_SECONDS
from cachesync.projections import ASSIGN, DELETE, INCREMENT, REMOVE, SET, Mutation

APPLY_SCRIPT = (Path(__file__).parent / "apply.lua").read_text()


# Checks that each partition's applied offset and intent are what this batch read, then sets
# them, in one step. ARGV: the attempt's owner id and its lease in milliseconds (0: this is the
# confirmation), then seven per partition (offsets field, intent field, lease field, the offset
# and intent read, the new offset or '' to keep it, the new intent, '' for none).
# A registration takes the lease (owner and deadline, in the server's clock) unless another
# attempt's is live: CACHESYNC_BUSY, nothing set. A confirmation needs the lease still its own
# and frees it. A changed offset or intent means another invocation applied the partition
# meanwhile: CACHESYNC_CONCURRENT, nothing set.
GUARD_SCRIPT = """#!lua
local time = redis.call('TIME')
local now = time[1] * 1000 + math.floor(time[2] / 1000)
local owner, lease = ARGV[1], tonumber(ARGV[2])
for i = 3, #ARGV, 7 do
  local holder, deadline = string.match(redis.call('HGET', KEYS[1], ARGV[i + 2]) or '', '^(%S+) (%d+)$')
  if lease > 0 and holder and holder ~= owner and tonumber(deadline) > now then
    return redis.error_reply('CACHESYNC_BUSY ' .. ARGV[i] .. ' ' .. deadline)
  end
  local mark = redis.call('HGET', KEYS[1], ARGV[i]) or ''
  local intent = redis.call('HGET', KEYS[1], ARGV[i + 1]) or ''
  if mark ~= ARGV[i + 3] or intent ~= ARGV[i + 4] or (lease == 0 and holder ~= owner) then
    return redis.error_reply('CACHESYNC_CONCURRENT ' .. ARGV[i] .. ' changed while this batch applied it')
  end
end
local held = lease > 0 and owner .. ' ' .. string.format('%.0f', now + lease) or ''
for i = 3, #ARGV, 7 do
  if ARGV[i + 5] ~= '' then
    redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 5])
  end
  redis.call('HSET', KEYS[1], ARGV[i + 1], ARGV[i + 6])
  redis.call('HSET', KEYS[1], ARGV[i + 2], held)
end
return 1
"""
# Ends the leases ARGV[1] holds on the lease fields after it (deadline 0), keeping the intents:
# the retry of a failed attempt honours them and need not wait. allow-oom: an attempt that
# failed because the cache is full must still end its lease (the value only gets shorter).
RELEASE_SCRIPT = """#!lua flags=allow-oom
for i = 2, #ARGV do
  local holder = string.match(redis.call('HGET', KEYS[1], ARGV[i]) or '', '^(%S+) ')
  if holder == ARGV[1] then
    redis.call('HSET', KEYS[1], ARGV[i], ARGV[1] .. ' 0')
  end
end
return 1
"""
# The offsets and intents of the partitions named in ARGV, '' where none.
READ_GUARD_SCRIPT = """#!lua flags=no-writes
local found = {}
for i, name in ipairs(ARGV) do
  found[i] = redis.call('HGET', KEYS[1], name) or ''
end
return found
"""
# partitions per guard call: seven arguments each, within the 3,999 of a request
GUARD_PARTITIONS = 500


class PartitionBusy(redis.exceptions.RedisError):
    """Another invocation holds the partition's lease: the batch fails before writing anything
    and Lambda delivers it again (a consumer-group rebalance runs two invocations at once)."""


OVERWRITES = (SET, DELETE)

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
    def __init__(
        self,
        client: redis.Redis | RedisCluster,
        script_batch_size: int,
        retries: int = 3,
        lease_seconds: float = OVERWRITE_LEASE_SECONDS,
    ):
        self._client = client
        # every mutation adds at most two arguments (its key, its value): bounding the
        # mutations per call bounds the arguments per request (ElastiCache Serverless: 3,999)
        self._batch_size = min(script_batch_size, MAX_SCRIPT_BATCH_SIZE)
        self._retries = retries
        self._lease_ms = max(1, round(lease_seconds * 1000))

    def apply(self, pending: Iterable[Pending], *, partial: bool = False) -> WriteResult:
        """Apply the mutations in order; `pending` may be a generator, consumed as calls fill.

        A call that failed raises its error, after the others were read. With
        `partial`, the result is returned instead with the error in `error`, so the
        caller can still report what the calls that ran refused (a retry would skip
        those mutations as applied and never report them again).
        """
        result = WriteResult()
        overwrites, scripted = _split_overwrites(list(pending))
        if isinstance(self._client, RedisCluster):
            calls = self._slot_calls(scripted)
            replies = self._send_to_primaries(self._client, calls) if calls else []
        else:
            calls, replies = self._stream(self._calls(scripted, keys.offsets_key())) if scripted else ([], [])
        self._resend_recoverable(calls, replies)
        lost = next((reply for reply in replies if isinstance(reply, _LOST)), None)
        if lost is not None:
            result.error = lost  # the server is out of reach: the retried invocation writes the rest
        elif overwrites:
            try:
                result.applied, result.skipped = self._overwrite_with_retries(overwrites)
            except (redis.exceptions.RedisError, OSError) as error:
                result.error = error
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

    def _slot_calls(self, pending: list[tuple[int, Pending]]) -> list[_Call]:
        by_slot: dict[int, list[tuple[int, Pending]]] = {}
        for position, item in pending:
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

    def _overwrite_with_retries(self, documents: list[Pending]) -> tuple[int, int]:
        """A primary turned replica (READONLY) mid-way: start again on a fresh connection
        or map, within the client's retries (the intent makes it safe). Lost connections
        are retried where they happen, by the client (see _write_once). One lease owner for
        all of them: a try that could not release its lease does not lock out the next."""
        owner = uuid.uuid4().hex
        for attempt in range(self._retries + 1):
            try:
                return self._overwrite(self._client, documents, owner)
            except redis.exceptions.ReadOnlyError:
                if attempt == self._retries:
                    raise
                self._reconnect()
                time.sleep(min(0.5, 0.05 * 2**attempt))
        raise AssertionError("unreachable")

    def _overwrite(self, client: redis.Redis | RedisCluster, documents: list[Pending], owner: str) -> tuple[int, int]:
        """Document partitions: (applied, skipped). One plain SET or DEL per key.

        - Records at or below their partition's applied offset are skipped (duplicates).
        - Of the others, each key gets one write: its last value in the batch.
        - Before any write, the batch records its intent beside the offset: each key
          it writes, with the offset of the value. A retry after a failure mid-way
          (which may be shorter than the attempt, or longer) writes no key older than
          the intent says it may hold already, so a reader never sees a value older
          than one it saw; the intent of both attempts is kept until confirmed.
        - Once every write is acknowledged, the offset moves to the batch's last and
          the intent goes (entries beyond the batch's last stay, for the next batch).
        - Registering the intent takes a lease on the partition, `owner` with a deadline
          in the server's clock at least the function's timeout away: two invocations
          applying overlapping batches of it at once (a consumer-group rebalance) would
          otherwise interleave their writes and leave an older value for good. An attempt
          that finds another's lease live writes nothing and fails with PartitionBusy
          (Lambda delivers the batch again); an expired lease (its owner timed out or
          crashed: Lambda ended it, so it writes no more) is taken over, its intent honoured.
          An attempt that fails mid-way ends its lease, so the retry proceeds at once;
          when Redis is out of reach it cannot, and the retry waits for the deadline.
        Every write overwrites one key, once: a write that failed is sent again alone.
        """
        last: dict[str, int] = {}
        for _, field_, offset in documents:
            last[field_] = offset
        guard = keys.offsets_key()
        names = [name for field_ in last for name in (field_, keys.intent_field(field_))]
        chunk = 2 * GUARD_PARTITIONS
        stored = iter(
            [
                value
                for start in range(0, len(names), chunk)
                for value in client.eval(READ_GUARD_SCRIPT, 1, guard, *names[start : start + chunk])  # type: ignore[no-untyped-call]
            ]
        )
        read = {field_: (_text(next(stored) or b""), _text(next(stored) or b"")) for field_ in last}
        floors = {field_: int(mark) if mark else -1 for field_, (mark, _) in read.items()}
        held: dict[str, dict[str, int]] = {f: orjson.loads(intent) for f, (_, intent) in read.items() if intent}
        latest: dict[str, Pending] = {}
        skipped = 0
        for item in documents:
            if item[2] <= floors[item[1]]:
                skipped += 1
            else:
                latest[item[0].key] = item
        moving = [field_ for field_ in last if last[field_] > floors[field_]]
        intents: dict[str, dict[str, int]] = {field_: dict(held.get(field_, {})) for field_ in moving}
        writes: list[tuple[Any, ...]] = []
        for key, (mutation, field_, offset) in latest.items():
            if held and held.get(field_, {}).get(key, -1) > offset:
                continue  # the failed attempt may have written a newer value: the batch that has it writes it
            intents[field_][key] = offset
            if mutation.code == SET:
                value = mutation.argument
                writes.append(("SET", key, value, "EX", mutation.ttl) if mutation.ttl else ("SET", key, value))
            else:
                writes.append(("DEL", key))
        planned = {field_: orjson.dumps(intent).decode() if intent else "" for field_, intent in intents.items()}
        remaining = {f: {key: offset for key, offset in intents[f].items() if offset > last[f]} for f in moving}
        confirmed = [
            (f, read[f][0], planned[f], str(last[f]), orjson.dumps(remaining[f]).decode() if remaining[f] else "")
            for f in moving
        ]
        try:
            self._guard(client, [(f, *read[f], "", planned[f]) for f in moving], owner, self._lease_ms)
            self._write_once(client, writes)
            self._guard(client, confirmed, owner, 0)
        except BaseException:
            _release(client, owner, moving)
            raise
        return len(documents) - skipped, skipped

    @staticmethod
    def _guard(
        client: redis.Redis | RedisCluster, partitions: list[tuple[str, str, str, str, str]], owner: str, lease_ms: int
    ) -> None:
        """Register (lease_ms > 0) or confirm (0) these partitions' offsets and intents."""
        for command in guard_commands(partitions, owner, lease_ms):
            try:
                client.execute_command(*command)  # type: ignore[no-untyped-call]
            except redis.exceptions.ResponseError as error:
                message = str(error)
                if not message.startswith("CACHESYNC_BUSY "):
                    raise
                _, field_, deadline = message.split(" ")
                until = datetime.fromtimestamp(int(deadline) / 1000, UTC).isoformat(timespec="milliseconds")
                raise PartitionBusy(
                    f"PartitionBusy: {field_} is being applied by another invocation until {until}"
                ) from None

    def _write_once(self, client: redis.Redis | RedisCluster, commands: list[tuple[Any, ...]]) -> None:
        """Each command overwrites its own key once: any order is right, and sending one again is too.

        One write per node on a pooled connection; when that connection fails, the
        unanswered commands go again in a redis-py pipeline, with the client's retries
        and backoff. A command answered with an error (MOVED, ASK, READONLY, OOM) is
        sent again alone, on the topology learnt again; an error then fails the batch.
        """
        if not commands:
            return
        replies: list[Any] = [None] * len(commands)
        try:
            if isinstance(client, RedisCluster):
                slots = [key_slot(_bytes(command[1])) for command in commands]
                self._per_node(client, slots, commands, replies, raw=True)
            else:
                _round_trip(client.connection_pool, commands, replies)
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError):
            rest = [i for i, reply in enumerate(replies) if reply is None]
            pipe: Any = (
                client.pipeline(transaction=False) if isinstance(client, redis.Redis) else client.pipeline()  # type: ignore[no-untyped-call]
            )
            for i in rest:
                pipe.execute_command(*commands[i])
            for i, reply in zip(rest, pipe.execute(raise_on_error=False), strict=True):
                replies[i] = reply
        refused = [i for i, reply in enumerate(replies) if isinstance(reply, BaseException)]
        if refused:
            self._reconnect()
            for i in refused:
                client.execute_command(*commands[i])  # type: ignore[no-untyped-call]

    @staticmethod
    def _node_round_trip(client: RedisCluster, calls: list[_Call], sha: str | None, replies: list[Any]) -> None:
        """Fills `replies` (one per call) as they are read, so a failure keeps those already read."""
        BatchWriter._per_node(
            client, [call.slot or 0 for call in calls], [call.command(sha) for call in calls], replies
        )  # the slot is set for every cluster call

    @staticmethod
    def _per_node(
        client: RedisCluster, slots: list[int], commands: list[tuple[Any, ...]], replies: list[Any], raw: bool = False
    ) -> None:
        """Each primary gets its commands in one write, replies read after all writes."""
        by_node: dict[str, tuple[Any, list[int]]] = {}
        nodes: dict[int, Any] = {}
        for index, slot in enumerate(slots):
            node = nodes.get(slot)
            if node is None:
                node = nodes[slot] = client.nodes_manager.get_node_from_slot(slot)
            by_node.setdefault(node.name, (node, []))[1].append(index)
        _round_trips(
            [(client.get_redis_connection(node).connection_pool, indexes) for node, indexes in by_node.values()],
            commands,
            replies,
            raw,
        )

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


_LOST = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError)

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
    # (joined: a list would be one socket send per command)
    if hiredis is not None:
        return [b"".join([hiredis.pack_command(command) for command in commands])]
    packed: list[bytes] = connection.pack_commands(commands)
    return packed


def _read_raw(sock: Any, indexes: list[int], replies: list[Any]) -> None:
    """Replies straight from the socket into a hiredis reader, many per receive: redis-py's
    read_response costs more per reply than the write it acknowledges. The connection is
    left as redis-py expects it: every reply read, nothing buffered."""
    reader = hiredis.Reader()
    pending = iter(indexes)
    index = next(pending, None)
    while index is not None:
        reply = reader.gets()
        if reply is False:
            data = sock.recv(65536)
            if not data:
                raise redis.exceptions.ConnectionError("connection closed by the server")
            reader.feed(data)
            continue
        replies[index] = reply
        index = next(pending, None)


def _read(connection: Any) -> Any:
    try:
        return connection.read_response()
    except redis.exceptions.ResponseError as error:
        return error  # an error reply for one call; the others still have to be read


def guard_commands(
    partitions: list[tuple[str, str, str, str, str]], owner: str, lease_ms: int
) -> list[tuple[Any, ...]]:
    """The EVAL commands that check and set these partitions' offsets, intents and leases, each
    within the arguments a request may carry: (field, offset read, intent read, new offset, new intent)."""
    commands: list[tuple[Any, ...]] = []
    for start in range(0, len(partitions), GUARD_PARTITIONS):
        arguments = [
            value
            for field_, mark, intent, new_mark, new_intent in partitions[start : start + GUARD_PARTITIONS]
            for value in (
                field_,
                keys.intent_field(field_),
                keys.lease_field(field_),
                mark,
                intent,
                new_mark,
                new_intent,
            )
        ]
        commands.append(("EVAL", GUARD_SCRIPT, 1, keys.offsets_key(), owner, str(lease_ms), *arguments))
    return commands


def _release(client: redis.Redis | RedisCluster, owner: str, fields: list[str]) -> None:
    """Best effort: end the leases `owner` holds on these partitions; when Redis is out of
    reach, they run to their deadline."""
    leases = [keys.lease_field(field_) for field_ in fields]
    try:
        for start in range(0, len(leases), GUARD_PARTITIONS):
            chunk = leases[start : start + GUARD_PARTITIONS]
            client.eval(RELEASE_SCRIPT, 1, keys.offsets_key(), owner, *chunk)  # type: ignore[no-untyped-call]
    except (redis.exceptions.RedisError, OSError):
        pass  # the error the attempt raises is the one that matters


def _round_trip(pool: Any, commands: list[tuple[Any, ...]], replies: list[Any]) -> None:
    _round_trips([(pool, list(range(len(commands))))], commands, replies, raw=True)


def _round_trips(
    pools: list[tuple[Any, list[int]]], commands: list[tuple[Any, ...]], replies: list[Any], raw: bool = False
) -> None:
    """Each pool's commands in one write, replies read after all writes; `replies` filled as read,
    so a failure keeps those already read. `raw`: replies as hiredis gives them (errors as
    hiredis.ReplyError values), read in bulk."""
    in_flight: list[tuple[Any, Any, list[int]]] = []
    try:
        for pool, indexes in pools:
            connection: Any = pool.get_connection()  # redis-py leaves Connection methods untyped
            in_flight.append((pool, connection, indexes))
            connection.send_packed_command(_pack(connection, [commands[i] for i in indexes]))
        for _, connection, indexes in in_flight:
            if raw and hiredis is not None and getattr(connection, "_sock", None) is not None:
                _read_raw(connection._sock, indexes, replies)
                continue
            for index in indexes:
                replies[index] = _read(connection)
    except BaseException:
        for _, connection, _ in in_flight:
            connection.disconnect()  # never hand back a connection with replies unread
        raise
    finally:
        for pool, connection, _ in in_flight:
            pool.release(connection)


def _split_overwrites(pending: list[Pending]) -> tuple[list[Pending], list[tuple[int, Pending]]]:
    """The partitions whose mutations are all overwrites (SET, DEL), and the others with their positions."""
    scripted = {field_ for mutation, field_, _ in pending if mutation.code not in OVERWRITES}
    overwrites = [item for item in pending if item[1] not in scripted]
    return overwrites, [(position, item) for position, item in enumerate(pending) if item[1] in scripted]


def _bytes(key: Any) -> bytes:
    return key.encode() if isinstance(key, str) else bytes(key)


def _text(message: bytes | str) -> str:
    return message.decode("utf-8", "replace") if isinstance(message, bytes) else message
