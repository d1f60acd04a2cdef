"""Applies a batch of mutations to Redis exactly once: plan, send, read the results.

Three jobs, each in its own place:

- planning (cachesync.plan, pure): the batch into fenced script calls, one step
  per key and partition, checked against the key's applied position (its slot's
  positions hash on a cluster, the one positions hash of a standalone server:
  cachesync.layout); the same steps on a standalone server and on a cluster;
- transport (cachesync.transport): per-node pipelines, redirects and resends,
  and WAIT on each primary written, so acknowledged means replicated;
- results (here): what was applied, what was a duplicate, and what Redis refused
  (WRONGTYPE: the caller dead-letters those records).

Every write checks its key's position in the same atomic step, so a write can
arrive at any time, from any attempt, and never replace a newer value. See
the README ("How exactly-once works") for the whole argument.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from itertools import islice
from typing import Any

import redis
from redis.cluster import RedisCluster

from cachesync import layout
from cachesync.config import MAX_REQUEST_ARGUMENTS, MAX_SCRIPT_BATCH_SIZE
from cachesync.plan import Call, Pending, Planner
from cachesync.transport import Batch, BatchNotDone, CallStopped, Transport

# How long a batch may keep resending what the cache turns away (slots moving, a failover)
# when the caller names no deadline; IngestFunction derives its own from the time it has left.
DEFAULT_DEADLINE_SECONDS = 30.0
# Records drawn and planned before their calls are sent, so the server runs one chunk while the next
# is planned. The first chunk is small, so the server starts early (a batch of Lambda's default size
# is two chunks); each next one doubles, up to the most: a larger chunk collapses more overwrites of
# a key and, on a cluster, whose calls are one slot's each, puts more of a slot's keys into a call.
FIRST_CHUNK_RECORDS = 250
CHUNK_RECORDS_STANDALONE = 1000
CHUNK_RECORDS_CLUSTER = 2500

__all__ = ["BatchWriter", "Pending", "WriteResult"]


@dataclass
class WriteResult:
    applied: int = 0
    skipped: int = 0  # duplicates: at or below their key's applied position, or repeated in the batch
    # (position in the pending sequence, Redis error) for mutations Redis refused,
    # e.g. WRONGTYPE when a key holds another type than the projection writes.
    refused: list[tuple[int, str]] = field(default_factory=list)
    # the first call that failed, or what stopped drawing the mutations after calls went out
    # (apply(partial=True) only); the others were still read
    error: BaseException | None = None


class BatchWriter:
    def __init__(
        self,
        client: redis.Redis | RedisCluster,
        script_batch_size: int,
        retries: int = 3,
        wait_replicas: int | None = None,
        wait_timeout_ms: int = 1000,
        transport: Transport | None = None,
        chunk_records: int | None = None,
    ):
        self._cross_slot = not isinstance(client, RedisCluster)
        self._client = client
        # a standalone server's positions are in one hash before the first write (cachesync.layout)
        self._layout_known = not self._cross_slot
        self._batch_size = min(script_batch_size, MAX_SCRIPT_BATCH_SIZE)
        if chunk_records is None:
            chunk_records = CHUNK_RECORDS_STANDALONE if self._cross_slot else CHUNK_RECORDS_CLUSTER
        self._chunk_records = chunk_records
        self.transport = transport or Transport(client, retries, wait_replicas, wait_timeout_ms)

    def planner(self) -> Planner:
        """A planner for one batch: it plans the batch chunk by chunk."""
        return Planner(cross_slot=self._cross_slot, max_mutations=self._batch_size, max_arguments=MAX_REQUEST_ARGUMENTS)

    def apply(self, pending: Iterable[Pending], *, partial: bool = False, deadline: float | None = None) -> WriteResult:
        """Apply the mutations in order. `deadline` (time.monotonic()) bounds the resends.

        The mutations are drawn and planned a chunk at a time, each chunk's calls sent before
        the next is drawn, so the server runs them while the next chunk is projected and planned.
        A call that failed raises its error, after the others were read. With `partial`, the
        result is returned instead with the error in `error`, so the caller can still report what
        the calls that ran refused (a retry would skip those mutations as applied and never report
        them again).
        """
        # A batch's objects (its records' mutations, steps, ops) live until it ends and form no
        # cycles: the collector's passes over them, which their number sets off, free nothing
        collecting = gc.isenabled()
        gc.disable()
        try:
            return self._apply(pending, partial, deadline)
        finally:
            if collecting:
                gc.enable()

    def _apply(self, pending: Iterable[Pending], partial: bool, deadline: float | None) -> WriteResult:
        if deadline is None:
            deadline = time.monotonic() + DEFAULT_DEADLINE_SECONDS
        if not self._layout_known:
            assert isinstance(self._client, redis.Redis)
            layout.ensure_one_hash(self._client)
            self._layout_known = True
        records: list[Pending] = []
        result = WriteResult()
        planner = self.planner()
        batch = self.transport.start(deadline)
        planned = False  # a call was submitted: the batch must be finished
        drawing: Exception | None = None  # what stopped drawing the mutations after calls went out
        size = min(FIRST_CHUNK_RECORDS, self._chunk_records)
        try:
            mutations = iter(pending)
            while True:
                try:
                    chunk = list(islice(mutations, size))
                    size = min(2 * size, self._chunk_records)
                except Exception as error:
                    if not planned:
                        raise  # nothing was sent
                    drawing = error
                    break
                if not chunk:
                    break
                first = len(records)
                records += chunk
                calls = planner.plan(chunk, first)
                if calls:
                    planned = True
                    read = self.transport.submit(batch, calls)
                    _count_done(batch, read, result, records)
        except BaseException:
            self.transport.close(batch)  # the calls sent are fenced: the retry sends them again harmlessly
            raise
        result.skipped += planner.repeated
        try:
            replies = self.transport.finish(batch) if planned else []
        except (redis.exceptions.RedisError, OSError) as error:
            result.error = error
            # what the calls answered before the batch failed: their refusals still count
            replies = error.replies if isinstance(error, BatchNotDone) else batch.replies
        for i, reply in enumerate(replies):
            if isinstance(reply, CallStopped):
                _count(batch.calls[i], reply.reply, result, records, stop=(reply.entry, reply.op))
                result.error = result.error or reply
            elif isinstance(reply, BaseException):
                result.error = result.error or reply
            elif reply is None or i in batch.counted:
                continue  # never answered (the batch failed before it), or counted as it came
            else:
                _count(batch.calls[i], reply, result, records)
        if drawing is not None:
            # the calls sent before it ran, and their refusals are reported with it: a retry would
            # skip those mutations as applied
            result.error = drawing
        if result.error is not None and not partial:
            raise result.error
        return result


def _count_done(batch: Batch, read: list[int], result: WriteResult, records: list[Pending]) -> None:
    """Counts the calls just read that ran: their replies are final."""
    for i in read:
        reply = batch.replies[i]
        if reply is not None and not isinstance(reply, BaseException):
            _count(batch.calls[i], reply, result, records)
            batch.counted.add(i)


def _count(
    call: Call, reply: int | list[Any], result: WriteResult, pending: list[Pending], stop: tuple[int, int] | None = None
) -> None:
    """Applied, skipped and refused records of one call, from what fence.lua reported: 0 when every
    entry applied all its ops, else the positions of the entries it reported (the others applied all
    theirs) and the refusals; with `stop` (entry, op, from 1), those before the op where it stopped."""
    if isinstance(reply, int):  # 0: all of them applied (a stopped call answers a list)
        result.applied += call.records
        return
    found: dict[int, int] = {}
    refused: dict[tuple[int, int], str] = {}
    reported, errors = reply[0], reply[1]
    for entry, position in zip(reported[::2], reported[1::2], strict=True):
        found[int(entry) - 1] = int(position)
    for entry, op, message in zip(errors[::3], errors[1::3], errors[2::3], strict=True):
        refused[(int(entry) - 1, int(op) - 1)] = _text(message)
    applied = skipped = 0
    steps = call.steps
    if stop is not None:
        steps = steps[: stop[0]]
        step, start, end = steps[-1]
        steps[-1] = (step, start, start + stop[1] - 1)
    for e, (step, start, end) in enumerate(steps):
        step_sources = step.sources
        if start == end:
            continue
        position = found.get(e)
        if not refused and (position is None or pending[step_sources[start][0]][3] > position):
            # not reported (every op of the entry applied), or all of them past the position
            applied += step.records_in(start, end)
            continue
        if position is None:
            position = -1  # each op applied or refused
        for j in range(start, end):
            sources = step_sources[j]
            message = refused.get((e, j - start))
            if message is not None:
                result.refused.append((sources[-1], message))
                sources = sources[:-1]
            for source in sources:
                if pending[source][3] > position:
                    applied += 1
                else:
                    skipped += 1
    result.applied += applied
    result.skipped += skipped


def _text(message: bytes | str) -> str:
    return message.decode("utf-8", "replace") if isinstance(message, bytes) else message
