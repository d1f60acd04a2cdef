"""The writer's Redis transport: the one place that sends fenced calls and knows the topology.

- Each node's calls go out in one write on one connection, the replies read
  after all writes (a pipeline per node, overlapped across nodes). A batch can be
  streamed (`start`, `submit`, `finish`): each chunk's calls are written as soon
  as they are planned, and the replies of the chunk before are read after that
  write, so the server runs one chunk while the client plans the next.
- Whatever the server turns away without running the call is sent again:
  MOVED (the map is learnt again), ASK (to the named node, after ASKING on the
  same connection), TRYAGAIN, CLUSTERDOWN, LOADING, READONLY and MASTERDOWN
  (a failover under way), NOSCRIPT (the script is loaded again), and the calls
  behind one of those that answered CACHESYNC_GAP. With a bounded backoff, until
  the deadline the caller derives from the function's remaining time.
- A lost connection sends the unanswered calls again on a fresh one, within the
  client's retries: a dead cache fails the invocation quickly.
- Sending a call again is always safe: every write is fenced by its key's
  position (fence.lua), however late an earlier copy arrives.
- Acknowledged means replicated: once every call ran, each primary written gets
  WAIT on the connection that wrote to it, when it has replicas (or as
  configured). Too few acknowledgements fail the batch, which Lambda retries.

Callers never see a redirect. Only redis-py's public API is used.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis
from redis.cluster import RedisCluster

try:
    import hiredis
except ImportError:  # optional: redis-py packs commands itself without it
    hiredis = None  # type: ignore[assignment]

from cachesync.plan import Call

FENCE_SCRIPT = (Path(__file__).parent / "fence.lua").read_text()
FENCE_SHA = hashlib.sha1(FENCE_SCRIPT.encode()).hexdigest()

logger = logging.getLogger(__name__)

# replies after which the same call, sent again later (or elsewhere), can run
_LOST = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError)
_WAIT_AND_RESEND = (
    redis.exceptions.TryAgainError,
    redis.exceptions.ClusterDownError,
    redis.exceptions.BusyLoadingError,
    redis.exceptions.ReadOnlyError,
    redis.exceptions.MasterDownError,
)
BACKOFF_FIRST_S = 0.01
BACKOFF_CAP_S = 0.2
# how often a standalone primary is asked how many replicas it has
REPLICA_PROBE_INTERVAL_S = 30.0


class BatchNotDone(redis.exceptions.RedisError):
    """The batch cannot be reported applied; `replies` holds what its calls answered (their refusals
    must still be dead-lettered: a retry skips those records as applied)."""

    def __init__(self, message: str, replies: list[Any] | None = None):
        super().__init__(message)
        self.replies: list[Any] = replies or []


class WriteDeadlineExceeded(BatchNotDone):
    """The cache kept turning calls away (slots moving, a failover) until the invocation's deadline."""


class NotReplicated(BatchNotDone):
    """A primary's writes did not reach enough replicas within the wait: the batch is not applied yet."""


class CallStopped(redis.exceptions.ResponseError):
    """A call that fence.lua stopped part-way: the cache refused a command no record causes (the
    user's access string lacks it, or the server has no such command). `reply` is the script's
    {positions, errors, [entry, op, error]}: what it wrote before stopping is fenced, so the batch
    fails and its retry goes on from there once the cache is fixed."""

    def __init__(self, reply: list[Any]):
        entry, op, error = reply[2]
        self.reply = reply
        self.entry, self.op = int(entry), int(op)
        self.refusal = error.decode("utf-8", "replace") if isinstance(error, bytes) else str(error)
        super().__init__(
            f"the cache refused a command the writer needs: {self.refusal} (fix the cache user's access string "
            "or the server's modules: docs/security.md); the batch is retried, nothing was skipped"
        )


@dataclass
class _Node:
    """A node this batch writes to, and the one connection its calls take (WAIT must follow them there)."""

    name: str
    pool: Any
    connection: Any = None
    wrote: bool = False  # a call ran on `connection`
    orphaned: bool = False  # a call ran on a connection since lost: only a later write can be waited for


@dataclass
class _Sent:
    """Calls written to a node in one write, whose replies are still to be read there."""

    node: _Node
    connection: Any  # the connection written to: if the node's has changed since, it was lost
    indexes: list[int]
    load: bool  # SCRIPT LOAD went first
    widths: list[int]  # replies per call: 2 after ASKING


@dataclass
class Batch:
    """One batch's calls and their replies, as its chunks are submitted."""

    deadline: float
    calls: list[Call] = field(default_factory=list)
    replies: list[Any] = field(default_factory=list)
    nodes: dict[str, _Node] = field(default_factory=dict)
    asks: dict[int, tuple[str, int]] = field(default_factory=dict)  # call -> the node an ASK named
    unread: list[_Sent] = field(default_factory=list)  # the last submit's writes
    counted: set[int] = field(default_factory=set)  # calls whose results the writer has taken
    # nodes whose connection was lost in this round: the later chunks' calls for them wait for the
    # next round (a dead cache must fail fast, not once per chunk)
    down: dict[str, BaseException] = field(default_factory=dict)


@dataclass
class Transport:
    client: redis.Redis | RedisCluster
    retries: int = 3
    wait_replicas: int | None = None  # None: one where the topology has replicas; 0: off
    wait_timeout_ms: int = 1000
    _loaded: set[str] = field(default_factory=set)  # nodes known to hold the script
    _replicas_seen: dict[str, int] = field(default_factory=dict)  # the most replicas each primary had
    _probed_at: dict[str, float] = field(default_factory=dict)
    _map_replicas: dict[str, int] | None = None  # each primary's replicas in the cluster map, once per map
    _wait_unsupported: bool = False
    _told_no_role: bool = False

    def send(self, calls: list[Call], deadline: float) -> list[Any]:
        """Each call's reply (its result or the error it ended with), every call having run at most once
        in effect; then the WAIT. Raises NotReplicated when the WAIT falls short."""
        batch = self.start(deadline)
        try:
            self.submit(batch, calls)
        except BaseException:
            self.close(batch)
            raise
        return self.finish(batch)

    # --- a batch streamed: its calls sent as they are planned -----------------------------
    def start(self, deadline: float) -> Batch:
        """A batch whose calls `submit` sends as they come; `finish` (or `close`) ends it."""
        return Batch(deadline)

    def submit(self, batch: Batch, calls: list[Call]) -> list[int]:
        """Sends these calls now, then reads the replies of the calls submitted before them (the server
        ran those while the caller planned these). Returns the indexes (in the whole batch) of the calls
        whose replies were read: one that is no error is final, nothing sends it again."""
        first = len(batch.calls)
        batch.calls += calls
        batch.replies += [None] * len(calls)
        answers: dict[int, Any] = {}
        sent = self._write(batch, range(first, len(batch.calls)), answers)
        for i, answer in answers.items():
            batch.replies[i] = answer
        earlier = batch.unread
        batch.unread = earlier + sent  # until read: a failure closes their connections (close)
        read = self._read_all(batch, earlier)
        batch.unread = sent
        return read

    def finish(self, batch: Batch) -> list[Any]:
        """Reads what is still unread, sends again what the cache turned away, then the WAIT: each call's
        reply, as `send`."""
        try:
            try:
                self._read_all(batch, batch.unread)
                batch.unread = []
                self._settle(batch)
            except BatchNotDone as error:
                error.replies = batch.replies
                raise
        finally:
            self.close(batch)
        return batch.replies

    def close(self, batch: Batch) -> None:
        """Gives the batch's connections back; one with replies still unread is closed instead."""
        for sent in batch.unread:
            if sent.node.connection is sent.connection:
                _drop(sent.node)
        batch.unread = []
        for node in batch.nodes.values():
            _release(node)

    def _settle(self, batch: Batch) -> None:
        """Every call answered once: those the cache turned away are sent again until they ran, the
        batch failed, or the deadline; then the WAIT."""
        replies, deadline = batch.replies, batch.deadline
        pending = list(range(len(batch.calls)))
        lost_rounds = attempt = 0
        while pending:
            redo: list[int] = []
            refresh = lost = False
            asks = batch.asks
            for i in pending:
                answer = replies[i]
                if not isinstance(answer, BaseException):  # it ran: most calls
                    if asks:
                        asks.pop(i, None)
                    continue
                if isinstance(answer, redis.exceptions.AskError) and not isinstance(
                    answer, redis.exceptions.MovedError
                ):
                    batch.asks[i] = (answer.host, int(answer.port))
                    redo.append(i)
                    continue
                batch.asks.pop(i, None)
                if isinstance(answer, redis.exceptions.MovedError | redis.exceptions.ReadOnlyError):
                    refresh = True
                    # READONLY: a failover under way, or an endpoint at a replica: within the retries
                    lost = lost or isinstance(answer, redis.exceptions.ReadOnlyError)
                    redo.append(i)
                elif isinstance(answer, _WAIT_AND_RESEND) or _is_gap(answer):
                    refresh = refresh or isinstance(answer, redis.exceptions.ClusterDownError)
                    redo.append(i)
                elif isinstance(answer, redis.exceptions.NoScriptError):
                    redo.append(i)  # the round loads the script again first
                elif isinstance(answer, _LOST):
                    lost = True
                    redo.append(i)
            if not redo:
                break
            if any(_is_final(replies[i]) for i in pending if i not in redo):
                break  # the batch fails anyway: its retry sends what did not run
            if lost:
                lost_rounds += 1
                if lost_rounds > self.retries:
                    break
                refresh = True
            if time.monotonic() >= deadline:
                error = replies[redo[0]]
                raise WriteDeadlineExceeded(
                    f"the cache turned {len(redo)} calls away until the invocation's deadline, last with {error!r}"
                ) from (error if isinstance(error, BaseException) else None)
            if refresh:
                self.refresh(batch.nodes)
            time.sleep(max(0.0, min(BACKOFF_FIRST_S * 2**attempt, BACKOFF_CAP_S, deadline - time.monotonic())))
            attempt += 1
            answers: dict[int, Any] = {}
            batch.down.clear()
            batch.unread = self._write(batch, redo, answers)
            self._read_all(batch, batch.unread)
            batch.unread = []
            for i, answer in answers.items():
                replies[i] = answer
            pending = redo
        if not any(isinstance(reply, BaseException) for reply in replies):
            self._wait(list(batch.nodes.values()), deadline)

    # --- one round: calls written per node, their replies read after --------------------
    def _write(self, batch: Batch, indexes: Iterable[int], answers: dict[int, Any]) -> list[_Sent]:
        """Writes each call once to the node of its slot (or the one its ASK named): one write per
        node. Calls that could not be written get their error in `answers`."""
        calls, nodes, asks = batch.calls, batch.nodes, batch.asks
        by_node: dict[str, list[int]] = {}
        by_slot: dict[int, _Node] = {}  # a cluster batch has about one call per slot: each looked up once
        for i in indexes:
            slot, ask = calls[i].slot, asks.get(i)
            node = by_slot.get(slot) if ask is None else None
            if node is None:
                try:
                    node = self._node(nodes, slot, ask)
                except (redis.exceptions.RedisError, redis.exceptions.RedisClusterException, OSError) as error:
                    # no map of this slot (yet): learn it again and resend
                    answers[i] = redis.exceptions.ClusterDownError(str(error))
                    continue
                if ask is None:
                    by_slot[slot] = node
            if node.name in batch.down:
                answers[i] = batch.down[node.name]
                continue
            by_node.setdefault(node.name, []).append(i)
        sent: list[_Sent] = []
        for name, node_indexes in by_node.items():
            node = nodes[name]
            commands: list[tuple[Any, ...]] = []
            load = name not in self._loaded
            if load:
                commands.append(("SCRIPT", "LOAD", FENCE_SCRIPT))
                self._loaded.add(name)  # the calls behind it find it; a NOSCRIPT reply unlearns it
            widths = []
            for i in node_indexes:
                if i in asks:
                    commands.append(("ASKING",))
                commands.append(("EVALSHA", FENCE_SHA, *calls[i].args()))
                widths.append(2 if i in asks else 1)
            try:
                if node.connection is None:
                    node.connection = node.pool.get_connection()
                node.connection.send_packed_command(_pack(node.connection, commands))
            except _LOST as error:
                _drop(node)
                self._loaded.discard(name)
                batch.down[name] = error
                for i in node_indexes:
                    answers[i] = error
                continue
            sent.append(_Sent(node, node.connection, node_indexes, load, widths))
        return sent

    def _read_all(self, batch: Batch, sent: list[_Sent]) -> list[int]:
        """The replies of these writes into `batch.replies`, in the order written; the indexes read."""
        read: list[int] = []
        for one in sent:
            node = one.node
            if node.connection is not one.connection:  # lost while an earlier write was read
                error = redis.exceptions.ConnectionError(f"the connection to {node.name} was lost before the reply")
                for i in one.indexes:
                    batch.replies[i] = error
                read += one.indexes
                continue
            done = 0
            try:
                if one.load:
                    _read(node.connection)  # SCRIPT LOAD's reply: the hash
                for i, width in zip(one.indexes, one.widths, strict=True):
                    if width == 2:
                        _read(node.connection)  # ASKING's OK
                    answer = _read(node.connection)
                    if type(answer) is list and len(answer) == 3:
                        answer = CallStopped(answer)
                    batch.replies[i] = answer
                    done += 1
                    if not isinstance(answer, BaseException):
                        node.wrote = True
                    elif isinstance(answer, redis.exceptions.NoScriptError):
                        self._loaded.discard(node.name)
            except _LOST as error:
                _drop(node)
                batch.down[node.name] = error
                for i in one.indexes[done:]:
                    batch.replies[i] = error
            read += one.indexes
        return read

    def _node(self, nodes: dict[str, _Node], slot: int, ask: tuple[str, int] | None) -> _Node:
        if isinstance(self.client, RedisCluster):
            if ask is not None:
                target = self.client.nodes_manager.get_node(host=ask[0], port=ask[1])
                if target is None:
                    raise redis.exceptions.ClusterDownError(f"ASK names {ask[0]}:{ask[1]}, not in the map yet")
                cluster_node = target
            else:
                # the map itself, not get_node_from_slot: a cluster batch looks up about one slot per call,
                # and that method's argument checks and lock cost more than the call's planning
                holders = self.client.nodes_manager.slots_cache.get(slot)
                if not holders:
                    raise redis.exceptions.SlotNotCoveredError(f"slot {slot} is not in the cluster map")
                cluster_node = holders[0]
            name = cluster_node.name
            if name not in nodes:
                nodes[name] = _Node(name, self.client.get_redis_connection(cluster_node).connection_pool)
            return nodes[name]
        pool = self.client.connection_pool
        name = _pool_name(pool)
        if name not in nodes:
            nodes[name] = _Node(name, pool)
        return nodes[name]

    def refresh(self, nodes: dict[str, _Node]) -> None:
        """Learn the topology again: a new map (cluster), new connections (standalone: the endpoint may
        point at a new primary). Connections that wrote are kept: the WAIT goes there."""
        self._loaded.clear()  # a promoted replica holds no scripts
        self._map_replicas = None
        if isinstance(self.client, RedisCluster):
            with contextlib.suppress(redis.exceptions.RedisError, OSError):  # the next round tries again
                self.client.nodes_manager.initialize()
            return
        for node in nodes.values():
            _drop(node)
        self.client.connection_pool.disconnect()

    # --- acknowledged means replicated ---------------------------------------------------
    def _wait(self, nodes: list[_Node], deadline: float) -> None:
        if self.wait_replicas == 0 or self._wait_unsupported:
            return
        waits = [(node, self._required(node)) for node in nodes if node.wrote or node.orphaned]
        waits = [(node, required) for node, required in waits if required > 0]
        for node, _ in waits:
            if node.connection is None or not node.wrote:
                raise NotReplicated(
                    f"the connection that wrote to {node.name} was lost before WAIT: the batch is applied again"
                )
        remaining_ms = max(1, int((deadline - time.monotonic()) * 1000))
        timeout_ms = min(self.wait_timeout_ms, remaining_ms)
        for node, required in waits:
            node.connection.send_command("WAIT", required, timeout_ms)
        for node, required in waits:
            try:
                acknowledged = node.connection.read_response()
            except redis.exceptions.ResponseError as error:
                if "unknown command" in str(error).lower():
                    self._wait_unsupported = True
                    logger.warning(
                        "the cache does not support WAIT (ElastiCache Serverless replicates on its own): "
                        "batches are acknowledged without waiting for replicas"
                    )
                    return
                raise
            if int(acknowledged) < required:
                raise NotReplicated(
                    f"{node.name}: {acknowledged} of {required} replicas acknowledged this batch's writes "
                    f"within {timeout_ms} ms; it is applied again on retry"
                )

    def _required(self, node: _Node) -> int:
        if self.wait_replicas is not None:
            return self.wait_replicas
        seen = self._replicas_seen.get(node.name, 0)
        now = self._replicas_now(node)
        if now > seen:
            self._replicas_seen[node.name] = seen = now
        return 1 if seen else 0

    def _replicas_now(self, node: _Node) -> int:
        """Replicas the topology gives this primary now: the cluster map's (failed ones leave it only
        once the cluster marks them failed), or a standalone primary's linked ones (ROLE), at most
        every REPLICA_PROBE_INTERVAL_S; what was once seen stays required (_required)."""
        if isinstance(self.client, RedisCluster):
            if self._map_replicas is None:
                counts: dict[str, int] = {}
                for holders in self.client.nodes_manager.slots_cache.values():
                    if holders:
                        counts[holders[0].name] = max(counts.get(holders[0].name, 0), len(holders) - 1)
                self._map_replicas = counts
            return self._map_replicas.get(node.name, 0)
        if time.monotonic() - self._probed_at.get(node.name, -REPLICA_PROBE_INTERVAL_S) < REPLICA_PROBE_INTERVAL_S:
            return 0  # the memory of the last probe stands
        self._probed_at[node.name] = time.monotonic()
        probe = node.pool.get_connection()
        try:
            # ROLE lists the replicas linked to a primary (WAIT 0 0 would count only those that
            # acknowledged this connection's writes so far, which lags by up to a second)
            probe.send_command("ROLE")
            role = probe.read_response()
        except redis.exceptions.ResponseError as error:
            if "unknown command" in str(error).lower():
                self._wait_unsupported = True
                return 0
            if not self._told_no_role:
                self._told_no_role = True
                logger.warning("cannot read the primary's replicas (%s): REDIS_WAIT_REPLICAS decides", error)
            return 0
        finally:
            node.pool.release(probe)
        return len(role[2]) if role and role[0] in (b"master", "master") else 0


def _is_gap(reply: Any) -> bool:
    return isinstance(reply, redis.exceptions.ResponseError) and str(reply).startswith("CACHESYNC_GAP")


def _is_final(reply: Any) -> bool:
    """An error no resend can fix (out of memory, no permission): the batch fails with it."""
    return isinstance(reply, BaseException) and not (
        isinstance(reply, (*_LOST, *_WAIT_AND_RESEND, redis.exceptions.AskError, redis.exceptions.NoScriptError))
        or _is_gap(reply)
    )


def _pool_name(pool: Any) -> str:
    kwargs = pool.connection_kwargs
    return f"{kwargs.get('host', kwargs.get('path', 'redis'))}:{kwargs.get('port', '')}"


def _drop(node: _Node) -> None:
    """Close a connection whose replies cannot be trusted any more; its writes can no longer be waited for."""
    if node.connection is not None:
        node.connection.disconnect()
        node.pool.release(node.connection)
        node.connection = None
    if node.wrote:
        node.orphaned, node.wrote = True, False


def _release(node: _Node) -> None:
    if node.connection is not None:
        node.pool.release(node.connection)
        node.connection = None


def _pack(connection: Any, commands: list[tuple[Any, ...]]) -> list[bytes]:
    # hiredis packs our arguments (str, bytes, int) in C, all in one buffer: one socket write
    if hiredis is not None:
        return [b"".join([hiredis.pack_command(command) for command in commands])]
    packed: list[bytes] = connection.pack_commands(commands)
    return packed


def _read(connection: Any) -> Any:
    try:
        return connection.read_response()
    except redis.exceptions.ResponseError as error:
        return error  # one call's error reply; the others still have to be read
