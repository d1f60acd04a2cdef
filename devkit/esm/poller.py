"""One mapping's event pollers: consume, batch, invoke, commit, retry, as Lambda's Kafka event source mapping does.

- A batch closes when it holds BatchSize records, when the batching window
  (which starts at its first record) ends, or before it would pass 6 MB.
  With a window of 0 it takes what is already fetched and goes.
- Offsets are committed only after the function returns; a function error
  retries the batch (with a backoff), forever unless the mapping is in
  provisioned mode with MaximumRetryAttempts. A retry seeks the batch's
  partitions back to its first offsets and polls again, so the retried batch
  may end elsewhere (records that arrived meanwhile join it). Bisect splits a
  failing batch in two without counting a retry. A ReportBatchItemFailures
  response commits each partition up to its lowest failed offset and retries
  from there.
- Records older than MaximumRecordAgeInSeconds, batches that ran out of
  retries and records too large for any payload go to the on-failure
  destination, and their offsets are committed. A record too large with no
  destination stops the mapping with an error rather than drop it.

Concurrency, as Lambda's pollers (README, "Kafka in the loop"):

- A mapping runs `pollers` consumers in its consumer group (one on demand,
  MinimumPollers in provisioned mode); Kafka spreads the partitions over them.
- A poller processes its partitions concurrently: each partition has a lane of
  its own, up to `concurrency` lanes per poller (beyond that, partitions share
  lanes by partition number, and a lane's batch may hold several of them).
  A lane has one invocation in flight at a time, so a partition is applied in
  order. Each invocation runs in a thread of its own.
- An invocation past the function's Timeout is abandoned: its result is
  ignored and its batch retried, while its thread runs on and its writes may
  still land.
- A rebalance (`rebalance()`, a poller that dies and is replaced, another
  consumer of the group) revokes partitions: their invocations in flight are
  abandoned and the partitions read again from the committed offsets, so two
  invocations of one partition can overlap, as they can in AWS.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import re
import socket
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from devkit.esm import payload
from devkit.esm.destinations import PAYLOAD_TOO_LARGE, RECORD_TOO_OLD, RETRIES_EXHAUSTED, Destinations
from devkit.esm.kafka import ErrorLog, MappingError, check_topics
from devkit.esm.mapping import MappingConfig
from devkit.esm.payload import Record

log = logging.getLogger("cachesync.esm")

Invoke = Callable[[dict[str, Any]], Any]

# lanes per poller: a poller's partitions are processed concurrently up to this many at a time
DEFAULT_CONCURRENCY = 10
# how long stop() lets the invocations in flight finish (and commit) before it leaves them running
STOP_GRACE_SECONDS = 5.0
_BUSY_POLL = 0.002  # seconds between polls while invocations run: a finished one is seen this soon
# A lane holding this many fetched records (at least two batches), or this many bytes of them,
# stops fetching until it is down to half: memory stays bounded, and the half it keeps lasts
# while the broker sends a resumed partition's records again (a few hundred ms), where
# resuming an empty lane stalled it that long each time.
PAUSE_RECORDS = 10_000
PAUSE_BYTES = 2 * payload.MAX_PAYLOAD_BYTES
TIMED_OUT = "Unhandled"  # Lambda reports a timeout as an unhandled function error


class InvalidResponse(Exception):
    """A ReportBatchItemFailures response that names no record of the batch: the whole batch failed."""


class PollerKilled(Exception):
    """A poller stopped on purpose by `kill_poller`, as when one of Lambda's pollers dies."""


@dataclass
class MappingStats:
    invocations: int = 0
    records_delivered: int = 0  # records in invocations that succeeded
    function_errors: int = 0
    bisects: int = 0
    dead_lettered: int = 0  # records given to the on-failure destination (or dropped without one)
    committed: dict[str, int] = field(default_factory=dict)  # topic-partition -> next offset to read
    batch_sizes: list[int] = field(default_factory=list)  # the last invocations' record counts
    timeouts: int = 0  # invocations abandoned past the function's Timeout
    abandoned: int = 0  # invocations whose result was ignored: timed out, revoked, or their poller died
    rebalances: int = 0  # revocations the pollers went through
    pauses: int = 0  # times a lane stopped fetching, far behind, until it caught up by half
    overlaps: int = 0  # invocations started while an earlier one of the same partition still ran
    peak_concurrency: int = 0  # most invocation threads of this mapping running at once


@dataclass
class _Part:
    """Records to invoke together. A polled batch is read again from Kafka when it is retried;
    a bisected half (`fixed`) is retried as it is."""

    records: list[Record]
    retries: int = 0  # failed invocations of these records that counted as retries
    invocations: int = 0
    last_error: str | None = None
    fixed: bool = False
    rejected: list[Record] = field(default_factory=list)  # kept from the function: committed with the batch


@dataclass
class _Invocation:
    part: _Part
    lane: _Lane
    started: float
    response: Any = None
    error: BaseException | None = None
    done: bool = False
    abandoned: bool = False


@dataclass
class _Lane:
    pending: deque[Record] = field(default_factory=deque)  # fetched, not yet in a batch
    pending_bytes: int = 0  # their size in a payload
    opened: float | None = None  # when the oldest pending record arrived: the batching window's start
    parts: deque[_Part] = field(default_factory=deque)  # bisected halves waiting their turn
    carry: _Part | None = None  # the retry count of a polled batch that failed, for its re-poll
    in_flight: _Invocation | None = None
    not_before: float = 0.0  # backoff before the next attempt
    paused: bool = False


class LocalEventSourceMapping:
    def __init__(
        self,
        config: MappingConfig,
        invoke: Invoke,
        kafka_settings: dict[str, Any],
        failure_dir: Path = Path(".local/esm-failures"),
        backoff: tuple[float, float] = (0.1, 5.0),
        poll_interval: float = 0.1,
        clock: Callable[[], float] = time.time,
        from_earliest: bool = False,
        on_failure_subscriber: Callable[[dict[str, Any]], None] | None = None,
        hold: threading.Event | None = None,
        pollers: int | None = None,
        concurrency: int = DEFAULT_CONCURRENCY,
        timeout: float | None = None,
    ):
        if concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, got {concurrency}")
        self.config = config
        self._invoke = invoke
        self._settings = kafka_settings
        self._backoff = backoff
        self._poll_interval = poll_interval
        self._clock = clock
        self._from_earliest = from_earliest  # a replay (rebuild): the log's start, whatever the group committed
        self._replayed: set[str] = set()  # partitions a replay has started at the log's start already
        self._hold = hold  # when given, nothing is invoked until it is set (a rebuild clears first)
        self.poller_count = pollers if pollers is not None else (config.minimum_pollers if config.provisioned else 1)
        if self.poller_count < 1:
            raise ValueError(f"a mapping needs at least one poller, got {self.poller_count}")
        self.concurrency = concurrency
        self.timeout = timeout  # the function's Timeout in seconds; None: never abandoned
        self.destinations = Destinations(config, kafka_settings, failure_dir, on_failure_subscriber)
        self.stats = MappingStats()
        self.error: BaseException | None = None  # why the mapping stopped, if it failed
        self._stop = threading.Event()
        self._pollers: list[_Poller] = []
        self._lock = threading.Lock()
        self._live: dict[str, int] = {}  # topic-partition -> invocation threads running (abandoned ones too)
        self._running = 0
        self._idle = threading.Condition(self._lock)
        self._rejections_sent: set[tuple[str, int]] = set()  # sent once, even when a retry reads them again

    @property
    def kafka_settings(self) -> dict[str, Any]:
        """The Kafka client settings of its consumers (broker, credentials)."""
        return dict(self._settings)

    # --- lifecycle -----------------------------------------------------------------
    def check(self, timeout: float = 5.0) -> None:
        check_topics(self.config, self._settings, timeout)

    def start(self) -> LocalEventSourceMapping:
        self._stop.clear()
        for index in range(self.poller_count):
            member, lock = _claim_member_id(self._settings, self.config.consumer_group)
            self._start_poller(_Poller(self, index, member, lock))
        return self

    def _start_poller(self, poller: _Poller) -> None:
        with self._lock:
            self._pollers = [p for p in self._pollers if p.index != poller.index] + [poller]
        poller.thread.start()

    def request_stop(self) -> None:
        """Stops dispatching now; stop() waits for the pollers."""
        self._stop.set()

    def stop(self, timeout: float = 30.0) -> None:
        """Stops polling; invocations in flight get a few seconds to finish and be committed, then
        are left running (wait_idle() waits for them). What was not committed is read again next time."""
        self._stop.set()
        deadline = time.monotonic() + timeout
        for poller in list(self._pollers):
            poller.thread.join(max(0.0, deadline - time.monotonic()))
            poller.release()
        self._pollers = []
        self.destinations.close()

    @property
    def running(self) -> bool:
        return any(p.thread.is_alive() for p in self._pollers)

    @property
    def assignment(self) -> set[str]:
        """The topic-partitions the pollers own now."""
        owned: set[str] = set()
        for poller in list(self._pollers):
            owned |= poller.assignment
        return owned

    def poller_assignments(self) -> list[set[str]]:
        return [set(p.assignment) for p in sorted(self._pollers, key=lambda p: p.index)]

    def rebalance(self) -> None:
        """A consumer-group rebalance now: the first poller leaves the group and joins it again, so
        every poller's partitions are revoked and assigned anew."""
        pollers = sorted(self._pollers, key=lambda p: p.index)
        if pollers:
            pollers[0].requests.append("rebalance")

    def kill_poller(self, index: int = 0) -> None:
        """The poller dies as one of Lambda's can: its invocations in flight are abandoned, it leaves
        the group, and a new poller takes its place (two rebalances)."""
        for poller in self._pollers:
            if poller.index == index:
                poller.requests.append("kill")

    def invocations_running(self) -> int:
        """Invocation threads still running, abandoned ones included."""
        with self._lock:
            return self._running

    def wait_idle(self, timeout: float) -> bool:
        """Until no invocation thread of this mapping runs (abandoned ones included)."""
        deadline = time.monotonic() + timeout
        with self._idle:
            while self._running:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._idle.wait(left)
        return True

    def _failed(self, error: BaseException) -> None:
        if self.error is None:
            self.error = error
            log.error("%s stopped: %s", self.config.logical_id, error)
        self._stop.set()

    # --- invocations -----------------------------------------------------------------
    def _start_invocation(self, invocation: _Invocation, done: Callable[[_Invocation], None]) -> None:
        part = invocation.part
        keys = {r.partition_key for r in part.records}
        with self._lock:
            if any(self._live.get(k, 0) for k in keys):
                self.stats.overlaps += 1
            for k in keys:
                self._live[k] = self._live.get(k, 0) + 1
            self._running += 1
            self.stats.peak_concurrency = max(self.stats.peak_concurrency, self._running)
            self.stats.invocations += 1
            self.stats.batch_sizes = [*self.stats.batch_sizes[-99:], len(part.records)]
        event = payload.event(part.records, self.config.bootstrap_servers)

        def run() -> None:
            try:
                invocation.response = self._invoke(event)
            except BaseException as error:  # the function's failure, reported to the poller
                invocation.error = error
            finally:
                with self._lock:
                    for k in keys:
                        self._live[k] -= 1
                    self._running -= 1
                    self._idle.notify_all()
                invocation.done = True
                done(invocation)

        name = f"invoke-{self.config.logical_id}-{part.records[0].partition_key}@{part.records[0].offset}"
        threading.Thread(target=run, name=name, daemon=True).start()

    def _count(self, **increments: int) -> None:
        with self._lock:
            for name, value in increments.items():
                setattr(self.stats, name, getattr(self.stats, name) + value)

    def _invocation_failed(self, reason: str) -> None:
        self._count(function_errors=1)
        log.warning("%s: %s", self.config.logical_id, reason)

    def _count_abandoned(self, count: int = 1, timed_out: bool = False) -> None:
        self._count(abandoned=count, timeouts=count if timed_out else 0)

    def _first_assignment(self, key: str) -> bool:
        """A replay starts each partition at the log's start once, not again after a rebalance."""
        with self._lock:
            if key in self._replayed:
                return False
            self._replayed.add(key)
            return True


class _Poller:
    """One consumer of the mapping's group and the lanes of the partitions it owns."""

    def __init__(self, mapping: LocalEventSourceMapping, index: int, member: str, lock: IO[str]):
        self.mapping = mapping
        self.config = mapping.config
        self.index = index
        self.member = member  # group.instance.id
        self._member_lock = lock
        self.assignment: set[str] = set()
        self.requests: deque[str] = deque()  # "rebalance", "kill": served by the poller's own thread
        self._lanes: dict[int, _Lane] = {}
        self._finished: deque[_Invocation] = deque()
        self._uncommitted: dict[tuple[str, int], int] = {}  # (topic, partition) -> next offset, to commit
        self._errors = ErrorLog()
        self._consumer: Any = None
        self.thread = threading.Thread(
            target=self._run_logged, name=f"esm-{self.config.logical_id}-{index}", daemon=True
        )

    def release(self) -> None:
        with contextlib.suppress(OSError):
            self._member_lock.close()

    # --- the loop ------------------------------------------------------------------
    def _run_logged(self) -> None:
        try:
            self.run()
        except PollerKilled:
            if not self.mapping._stop.is_set():
                log.warning("%s: poller %d died; a new one takes its place", self.config.logical_id, self.index)
                self.mapping._start_poller(_Poller(self.mapping, self.index, self.member, self._member_lock))
        except BaseException as error:
            self.mapping._failed(error)

    def run(self) -> None:
        from confluent_kafka import Consumer

        mapping = self.mapping
        self._consumer = consumer = Consumer(
            {
                **mapping._settings,
                "group.id": self.config.consumer_group,
                "enable.auto.commit": False,
                "enable.auto.offset.store": False,
                "auto.offset.reset": "latest" if self.config.starting_position == "LATEST" else "earliest",
                # static membership, one id per poller and per live run on this host (a lock file
                # claims it): a poller restarted after a crash takes its place back at once, where a
                # new member would wait for the dead one to time out (the embedded broker never
                # times one out), and two runs against one cluster share its partitions. Leaving
                # and joining still rebalances the group.
                "group.instance.id": self.member,
                "session.timeout.ms": 10_000,
                "heartbeat.interval.ms": 1_000,
                "error_cb": self._errors,
                "log_level": 3,
            }
        )
        self._subscribe()
        try:
            while not mapping._stop.is_set():
                self._serve_requests()
                self._fetch(self._wait())
                self._collect()
                self._expire()
                if mapping._hold is None or mapping._hold.is_set():
                    self._dispatch()
                self._send_commits()  # after the dispatch: the lanes are at work meanwhile
                refused = self._errors.authentication()
                if refused is not None:
                    raise MappingError(f"Kafka refused the mapping's credentials: {refused.str()}")
            self._drain()
        except PollerKilled:
            self._abandon_all()
            raise
        finally:
            with contextlib.suppress(Exception):
                consumer.unsubscribe()  # leaves the group: a static member's close() alone keeps its place
                consumer.poll(0.1)
                consumer.close()

    def _subscribe(self) -> None:
        self._consumer.subscribe(list(self.config.topics), on_assign=self._on_assign, on_revoke=self._on_revoke)

    def _serve_requests(self) -> None:
        while self.requests:
            request = self.requests.popleft()
            if request == "kill":
                raise PollerKilled()
            if request == "rebalance":
                log.info("%s: poller %d leaves and rejoins the group", self.config.logical_id, self.index)
                self._consumer.unsubscribe()
                self._consumer.poll(0)  # serves the revocation
                self._subscribe()

    def _wait(self) -> float:
        """How long the next poll may block: short while invocations run or lanes wait for a window."""
        if self._finished:
            return 0.0
        wait = self.mapping._poll_interval
        hold = self.mapping._hold
        if hold is not None and not hold.is_set():
            return wait
        now = time.monotonic()
        for lane in self._lanes.values():
            if lane.in_flight is not None:
                return _BUSY_POLL
            if lane.parts:
                wait = min(wait, lane.not_before - now)
            elif lane.pending:
                full = len(lane.pending) >= self.config.batch_size
                opened = lane.opened if lane.opened is not None else now
                wait = min(wait, max(lane.not_before, now if full else opened + self.config.window_seconds) - now)
        return max(0.0, wait)

    def _drain(self) -> None:
        """Stopping: lets what runs finish for a few seconds and commits it; the rest is abandoned."""
        deadline = time.monotonic() + STOP_GRACE_SECONDS
        while any(lane.in_flight is not None for lane in self._lanes.values()) and time.monotonic() < deadline:
            self._consumer.poll(_BUSY_POLL)
            self._collect(stopping=True)
            self._send_commits()
        self._abandon_all()

    def _abandon_all(self) -> None:
        abandoned = 0
        for lane in self._lanes.values():
            if lane.in_flight is not None:
                lane.in_flight.abandoned = True
                lane.in_flight = None
                abandoned += 1
        if abandoned:
            self.mapping._count_abandoned(abandoned)

    # --- assignment ----------------------------------------------------------------
    def _lane(self, partition: int) -> _Lane:
        number = partition % self.mapping.concurrency
        lane = self._lanes.get(number)
        if lane is None:
            lane = self._lanes[number] = _Lane()
        return lane

    def _on_assign(self, consumer: Any, partitions: list[Any]) -> None:
        self.assignment |= {f"{tp.topic}-{tp.partition}" for tp in partitions}
        if self.mapping._from_earliest:
            from confluent_kafka import OFFSET_BEGINNING

            for tp in partitions:
                if self.mapping._first_assignment(f"{tp.topic}-{tp.partition}"):
                    tp.offset = OFFSET_BEGINNING
            consumer.assign(partitions)
            return
        if self.config.starting_position != "AT_TIMESTAMP" or self.config.starting_timestamp is None:
            return
        from confluent_kafka import OFFSET_END, TopicPartition

        # a group with committed offsets resumes from them; only new partitions start at the timestamp
        committed = consumer.committed(partitions, timeout=10)
        fresh = [tp for tp in committed if tp.offset < 0]
        if not fresh:
            return
        millis = int(self.config.starting_timestamp * 1000)
        found = consumer.offsets_for_times([TopicPartition(tp.topic, tp.partition, millis) for tp in fresh], timeout=10)
        start = {(tp.topic, tp.partition): (tp.offset if tp.offset >= 0 else OFFSET_END) for tp in found}
        for tp in partitions:
            if (tp.topic, tp.partition) in start:
                tp.offset = start[(tp.topic, tp.partition)]
        consumer.assign(partitions)

    def _on_revoke(self, consumer: Any, partitions: list[Any]) -> None:
        """Another consumer of the group may own them now and reads them from the committed offsets:
        their invocations in flight are abandoned, and nothing of theirs is committed any more."""
        revoked = {f"{tp.topic}-{tp.partition}" for tp in partitions}
        for number, lane in self._lanes.items():
            if lane.paused:  # the consumer keeps a partition paused through a revocation and a new assignment
                self._pause(number, lane, False)
        self.assignment -= revoked
        if revoked and not self.mapping._stop.is_set():
            self.mapping._count(rebalances=1)
        abandoned = 0
        for lane in self._lanes.values():
            lane.pending = deque(r for r in lane.pending if r.partition_key not in revoked)
            lane.pending_bytes = sum(r.size for r in lane.pending)
            if not lane.pending:
                lane.opened = None
            invocation = lane.in_flight
            lane.parts = deque(
                p
                for p in (part if invocation is not None and part is invocation.part else _without(part, revoked)
                          for part in lane.parts)
                if p.records or p.rejected
            )  # fmt: skip
            if lane.carry is not None and {r.partition_key for r in lane.carry.records} & revoked:
                lane.carry = None
            lane.paused = False
            invocation = lane.in_flight
            if invocation is not None and {r.partition_key for r in invocation.part.records} & revoked:
                invocation.abandoned = True
                lane.in_flight = None
                abandoned += 1
                if lane.parts and lane.parts[0] is invocation.part:
                    lane.parts.popleft()
                kept = [r for r in invocation.part.records if r.partition_key not in revoked]
                self._reread(lane, kept)  # what this poller still owns is read again from its start
        if abandoned:
            self.mapping._count_abandoned(abandoned)

    # --- fetching ------------------------------------------------------------------
    def _fetch(self, wait: float) -> None:
        from confluent_kafka import KafkaError

        # poll() returns with the first record; consume() would wait out its timeout unless a
        # thousand came. What is fetched already is then taken without waiting.
        first = self._consumer.poll(wait)
        messages = [] if first is None else [first, *self._consumer.consume(999, 0)]
        backlog = max(2 * self.config.batch_size, PAUSE_RECORDS)
        now = time.monotonic()
        for message in messages:
            error = message.error()
            if error is not None:
                # a fenced static member gets an error of code _FATAL whose fatal() is False
                if error.fatal() or error.code() == KafkaError._FATAL:
                    raise MappingError(f"Kafka consumer failed: {error.str()}")
                log.warning("%s: %s", self.config.logical_id, error.str())
                continue
            record = payload.from_message(message, self.config.schema_registry)
            if record.partition_key not in self.assignment:
                continue  # fetched before a revocation
            lane = self._lane(record.partition)
            if not lane.pending:
                lane.opened = now
            lane.pending.append(record)
            lane.pending_bytes += record.size
        # a lane far behind stops fetching until it has caught up by half: memory stays bounded
        for number, lane in self._lanes.items():
            if not lane.paused and (len(lane.pending) >= backlog or lane.pending_bytes >= PAUSE_BYTES):
                self._pause(number, lane, True)
            elif lane.paused and len(lane.pending) < backlog // 2 and lane.pending_bytes < PAUSE_BYTES // 2:
                self._pause(number, lane, False)

    def _pause(self, number: int, lane: _Lane, pause: bool) -> None:
        from confluent_kafka import TopicPartition

        owned = [key for key in self.assignment if int(key.rsplit("-", 1)[1]) % self.mapping.concurrency == number]
        partitions = [TopicPartition(*_split(key)) for key in owned]
        with contextlib.suppress(Exception):
            (self._consumer.pause if pause else self._consumer.resume)(partitions)
            lane.paused = pause
            if pause:
                self.mapping._count(pauses=1)

    # --- batching ------------------------------------------------------------------
    def _next_batch(self, lane: _Lane, now: float) -> list[Record] | None:
        """The lane's next batch from what is fetched, or None while its window is open."""
        if not lane.pending:
            return None
        batch: list[Record] = []
        size = empty = payload.payload_size([], self.config.bootstrap_servers)
        partitions: set[str] = set()
        full = False
        for record in lane.pending:
            if len(batch) >= self.config.batch_size:
                full = True
                break
            if empty + payload.partition_bytes(record.partition_key) + record.size > payload.MAX_PAYLOAD_BYTES:
                full = True  # deliver what came before it first; then it goes alone (to be refused)
                if not batch:
                    batch.append(record)
                break
            grows = record.size + (0 if record.partition_key in partitions else len(record.partition_key) + 8)
            if size + grows > payload.MAX_PAYLOAD_BYTES:
                full = True
                break
            batch.append(record)
            partitions.add(record.partition_key)
            size += grows
        opened = lane.opened if lane.opened is not None else now
        if not full and len(batch) < self.config.batch_size and now < opened + self.config.window_seconds:
            return None
        for _ in batch:
            lane.pending.popleft()
        lane.pending_bytes -= sum(record.size for record in batch)
        lane.opened = now if lane.pending else None
        return batch

    def _dispatch(self) -> None:
        now = time.monotonic()
        for lane in list(self._lanes.values()):
            while lane.in_flight is None and now >= lane.not_before and not self.mapping._stop.is_set():
                part = self._next_part(lane, now)
                if part is None:
                    break
                if not self._prepare(lane, part):
                    continue
                invocation = _Invocation(part, lane, time.monotonic())
                part.invocations += 1
                lane.in_flight = invocation
                self.mapping._start_invocation(invocation, self._finished.append)

    def _next_part(self, lane: _Lane, now: float) -> _Part | None:
        if lane.parts:
            return lane.parts[0]
        batch = self._next_batch(lane, now)
        if batch is None:
            return None
        part = _Part(batch)
        if lane.carry is not None:  # a re-poll of a batch that failed: its count goes on
            part.retries, part.invocations, part.last_error = (
                lane.carry.retries,
                lane.carry.invocations,
                lane.carry.last_error,
            )
            lane.carry = None
        lane.parts.append(part)
        return part

    def _prepare(self, lane: _Lane, part: _Part) -> bool:
        """Records Lambda keeps from the function are handled here; False when nothing is left to invoke."""
        rejected = [r for r in part.records if r.rejected is not None]
        if rejected:  # the schema registry kept them from the function: to the destination, never invoked
            part.records = [r for r in part.records if r.rejected is None]
            self._reject(rejected)
            part.rejected += rejected
        part.records = self._drop_expired(part.records)
        if part.records and payload.payload_size(part.records, self.config.bootstrap_servers) > (
            payload.MAX_PAYLOAD_BYTES
        ):
            self._too_large(part.records)
            part.records = []
        if part.records:
            return True
        lane.parts.popleft()
        if not lane.parts and part.rejected:  # the rest of the batch is done: the rejected offsets are too
            self._commit(part.rejected)
        return False

    # --- outcomes ------------------------------------------------------------------
    def _collect(self, stopping: bool = False) -> None:
        while self._finished:
            invocation = self._finished.popleft()
            if invocation.abandoned:
                continue  # timed out, revoked or left behind: another attempt owns these records
            lane = invocation.lane
            lane.in_flight = None
            failed = self._outcome(invocation)
            if stopping and failed is not None:
                continue  # read again next time
            self._settle(lane, invocation.part, failed)

    def _expire(self) -> None:
        timeout = self.mapping.timeout
        if timeout is None:
            return
        now = time.monotonic()
        for lane in self._lanes.values():
            invocation = lane.in_flight
            if invocation is None or invocation.done or now - invocation.started <= timeout:
                continue
            invocation.abandoned = True
            lane.in_flight = None
            self.mapping._count_abandoned(timed_out=True)
            invocation.part.last_error = TIMED_OUT
            self.mapping._invocation_failed(
                f"the invocation ran past the function's Timeout ({timeout:g} s): abandoned, its batch retried"
            )
            self._settle(lane, invocation.part, invocation.part.records)

    def _outcome(self, invocation: _Invocation) -> list[Record] | None:
        """None when every record succeeded, else the records to retry: the part's records on a
        function error, each failed partition's tail on a partial failure."""
        part = invocation.part
        if invocation.error is not None:
            part.last_error = "Unhandled"
            error = invocation.error  # its repr can hide the message (redis-py's errors)
            self.mapping._invocation_failed(f"function error, the batch is retried: {type(error).__name__}: {error}")
            return part.records
        if not self.config.report_item_failures:
            return None
        try:
            return _failed_records(part.records, invocation.response)
        except InvalidResponse as why:
            part.last_error = "InvalidResponse"
            self.mapping._invocation_failed(f"{why}; the whole batch will be retried")
            return part.records

    def _settle(self, lane: _Lane, part: _Part, failed: list[Record] | None) -> None:
        if failed is None:  # every record succeeded
            self._commit([*part.records, *part.rejected])
            self.mapping._count(records_delivered=len(part.records))
            lane.parts.popleft()
            return
        if failed is not part.records:  # partial: commit what precedes each failure, retry the rest
            retried = {id(r) for r in failed}
            done = [r for r in part.records if id(r) not in retried]
            self._commit(done)
            self.mapping._count(records_delivered=len(done))
            part.records = failed
        if self.config.bisect_on_error and len(part.records) > 1:
            half = len(part.records) // 2
            self.mapping._count(bisects=1)
            lane.parts.popleft()
            lane.parts.extendleft(
                [_Part(part.records[half:], part.retries, part.invocations, part.last_error, True, part.rejected),
                 _Part(part.records[:half], part.retries, part.invocations, part.last_error, True)]
            )  # fmt: skip
            return
        part.retries += 1
        limit = self.config.retry_limit
        if limit >= 0 and part.retries > limit:
            self._give_up(part.records, RETRIES_EXHAUSTED, part.invocations, part.last_error)
            if part.rejected:
                self._commit(part.rejected)
            lane.parts.popleft()
            return
        lane.not_before = time.monotonic() + min(
            self.mapping._backoff[0] * 2 ** (part.retries - 1), self.mapping._backoff[1]
        )
        if not part.fixed:  # read the batch again from Kafka: it may end elsewhere this time
            lane.parts.popleft()
            lane.carry = part
            self._reread(lane, part.records)

    def _reread(self, lane: _Lane, records: Sequence[Record]) -> None:
        """Seeks each partition of `records` back to its first offset there; what was fetched after
        it is dropped, to be fetched again."""
        from confluent_kafka import TopicPartition

        first: dict[str, Record] = {}
        for record in records:
            if record.partition_key not in first or record.offset < first[record.partition_key].offset:
                first[record.partition_key] = record
        if not first:
            return
        lane.pending = deque(r for r in lane.pending if r.partition_key not in first)
        lane.pending_bytes = sum(r.size for r in lane.pending)
        if not lane.pending:
            lane.opened = None
        for record in first.values():
            try:
                self._consumer.seek(TopicPartition(record.topic, record.partition, record.offset))
            except Exception as error:  # revoked meanwhile: its next owner reads from the commit
                log.info("%s: no seek back on %s: %s", self.config.logical_id, record.partition_key, error)

    # --- records kept from the function -------------------------------------------
    def _reject(self, records: list[Record]) -> None:
        """Records the schema registry refused, sent on as Lambda does: to the on-failure
        destination with the reason as the condition, or discarded without one."""
        mapping = self.mapping
        fresh = [r for r in records if (r.partition_key, r.offset) not in mapping._rejections_sent]
        mapping._rejections_sent |= {(r.partition_key, r.offset) for r in fresh}
        for reason in sorted({r.rejected for r in fresh if r.rejected is not None}):
            group = [r for r in fresh if r.rejected == reason]
            if mapping.destinations.configured:
                mapping.destinations.send(group, reason, 0, None, mapping._clock() * 1000)
            else:
                log.warning("%s: %d records discarded (%s)", self.config.logical_id, len(group), reason)
            mapping._count(dead_lettered=len(group))

    def _drop_expired(self, records: list[Record]) -> list[Record]:
        age = self.config.maximum_record_age_seconds
        if age < 0:
            return records
        oldest = (self.mapping._clock() - age) * 1000
        expired = [r for r in records if r.timestamp < oldest]
        if not expired:
            return records
        self._give_up(expired, RECORD_TOO_OLD, 0, None)
        return [r for r in records if r.timestamp >= oldest]

    def _too_large(self, records: list[Record]) -> None:
        if not self.mapping.destinations.configured:
            first = records[0]
            raise MappingError(
                f"record {first.partition_key}@{first.offset} is larger than Lambda's 6 MB payload and the "
                f"mapping has no on-failure destination; it stops here rather than drop the record"
            )
        self._give_up(records, PAYLOAD_TOO_LARGE, 0, None)

    def _give_up(self, records: Sequence[Record], condition: str, invocations: int, error: str | None) -> None:
        mapping = self.mapping
        if mapping.destinations.configured:
            mapping.destinations.send(records, condition, invocations, error, mapping._clock() * 1000)
        else:
            log.error(
                "%s: %d records discarded (%s) and no on-failure destination keeps them",
                self.config.logical_id,
                len(records),
                condition,
            )
        mapping._count(dead_lettered=len(records))
        self._commit(records)

    def _commit(self, records: Sequence[Record]) -> None:
        """Marks the records done; the loop commits what its round marked at once (`_send_commits`),
        before it polls again, so no revocation comes between."""
        last: dict[str, Record] = {}  # each partition's record of the highest offset
        for record in records:
            known = last.get(record.partition_key)
            if known is None or record.offset > known.offset:
                last[record.partition_key] = record
        positions = self._uncommitted
        for name, record in last.items():
            if name not in self.assignment:
                continue  # revoked: its new owner commits it
            key = (record.topic, record.partition)
            positions[key] = max(positions.get(key, -1), record.offset + 1)

    def _send_commits(self) -> None:
        """One synchronous commit for every partition done since the last: a round trip to the broker
        per round of the loop rather than per invocation."""
        from confluent_kafka import KafkaException, TopicPartition

        positions, self._uncommitted = self._uncommitted, {}
        if not positions:
            return
        offsets = [TopicPartition(topic, partition, offset) for (topic, partition), offset in positions.items()]
        try:
            self._consumer.commit(offsets=offsets, asynchronous=False)
        except KafkaException as error:  # a rebalance under way: the records are read and applied again
            log.info("%s: commit refused (%s); the records will be read again", self.config.logical_id, error)
            return
        with self.mapping._lock:
            committed = self.mapping.stats.committed
            for (topic, partition), offset in positions.items():
                name = f"{topic}-{partition}"
                committed[name] = max(committed.get(name, 0), offset)
            sent = self.mapping._rejections_sent
            sent -= {(k, o) for k, o in sent if o < committed.get(k, 0)}


def _without(part: _Part, revoked: set[str]) -> _Part:
    part.records = [r for r in part.records if r.partition_key not in revoked]
    part.rejected = [r for r in part.rejected if r.partition_key not in revoked]
    return part


def _split(key: str) -> tuple[str, int]:
    topic, _, partition = key.rpartition("-")
    return topic, int(partition)


def _claim_member_id(settings: dict[str, Any], group: str) -> tuple[str, IO[str]]:
    """A static member id for a poller, unique among the live pollers on this host for this cluster
    and group: the lowest slot whose lock file no live process holds. A run that was killed frees
    its slots with its process, so the next run takes the same ids, and with them its place."""
    scope = hashlib.sha256(f"{settings.get('bootstrap.servers')}\n{group}".encode()).hexdigest()[:16]
    folder = Path(tempfile.gettempdir()) / f"cachesync-esm-members-{os.getuid()}" / scope
    folder.mkdir(parents=True, exist_ok=True)
    host = re.sub(r"[^A-Za-z0-9._-]", "-", socket.gethostname())[:64]
    slot = 0
    while True:
        lock = (folder / f"{slot}.lock").open("a")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            lock.close()
            slot += 1
            continue
        return f"{group}-{host}-{slot}", lock


def _failed_records(records: list[Record], response: Any) -> list[Record] | None:
    """The records from each partition's lowest failed offset on, per a ReportBatchItemFailures response."""
    if response is None or response == {}:
        return None
    if not isinstance(response, dict):
        raise InvalidResponse(f"the response {type(response).__name__} is not a batch item failures object")
    failures = response.get("batchItemFailures")
    if not failures:
        return None
    present = {(r.partition_key, r.offset) for r in records}
    lowest: dict[str, int] = {}
    for failure in failures:
        identifier = failure.get("itemIdentifier") if isinstance(failure, dict) else None
        if not isinstance(identifier, dict):
            raise InvalidResponse(f"itemIdentifier must be an object of partition and offset, got {identifier!r}")
        where, offset = identifier.get("partition"), identifier.get("offset")
        if (where, offset) not in present:
            raise InvalidResponse(f"itemIdentifier {identifier!r} is not a record of the batch")
        assert isinstance(where, str) and isinstance(offset, int)
        lowest[where] = min(lowest.get(where, offset), offset)
    return [r for r in records if r.partition_key in lowest and r.offset >= lowest[r.partition_key]]
