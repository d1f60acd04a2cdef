"""One mapping's poller: consume, batch, invoke, commit, retry, as Lambda's Kafka event source mapping does.

- A batch closes when it holds BatchSize records, when the batching window
  (which starts at its first record) ends, or before it would pass 6 MB.
  With a window of 0 it takes what is already fetched and goes.
- Offsets are committed only after the function returns; a function error
  retries the whole batch (with a backoff), forever unless the mapping is in
  provisioned mode with MaximumRetryAttempts. Bisect splits a failing batch
  in two without counting a retry. A ReportBatchItemFailures response commits
  each partition up to its lowest failed offset and retries from there.
- Records older than MaximumRecordAgeInSeconds, batches that ran out of
  retries and records too large for any payload go to the on-failure
  destination, and their offsets are committed. A record too large with no
  destination stops the mapping with an error rather than drop it.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from devkit.esm import payload
from devkit.esm.destinations import PAYLOAD_TOO_LARGE, RECORD_TOO_OLD, RETRIES_EXHAUSTED, Destinations
from devkit.esm.kafka import ErrorLog, MappingError, check_topics
from devkit.esm.mapping import MappingConfig
from devkit.esm.payload import Record

log = logging.getLogger("cachesync.esm")

Invoke = Callable[[dict[str, Any]], Any]


class InvalidResponse(Exception):
    """A ReportBatchItemFailures response that names no record of the batch: the whole batch failed."""


@dataclass
class MappingStats:
    invocations: int = 0
    records_delivered: int = 0  # records in invocations that succeeded
    function_errors: int = 0
    bisects: int = 0
    dead_lettered: int = 0  # records given to the on-failure destination (or dropped without one)
    committed: dict[str, int] = field(default_factory=dict)  # topic-partition -> next offset to read
    batch_sizes: list[int] = field(default_factory=list)  # the last invocations' record counts


@dataclass
class _Part:
    records: list[Record]
    retries: int = 0  # failed invocations of these records that counted as retries
    invocations: int = 0
    last_error: str | None = None


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
    ):
        self.config = config
        self._invoke = invoke
        self._settings = kafka_settings
        self._backoff = backoff
        self._poll_interval = poll_interval
        self._clock = clock
        self._from_earliest = from_earliest  # a replay (rebuild): the log's start, whatever the group committed
        self._hold = hold  # when given, nothing is invoked until it is set (a rebuild clears first)
        self.destinations = Destinations(config, kafka_settings, failure_dir, on_failure_subscriber)
        self.stats = MappingStats()
        self.error: BaseException | None = None  # why the poller stopped, if it failed
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._pending: deque[Record] = deque()  # fetched, not yet in a batch
        self._revoked: set[str] = set()
        self.assignment: set[str] = set()  # the topic-partitions this poller owns now
        self._errors = ErrorLog()

    # --- lifecycle -----------------------------------------------------------------
    def check(self, timeout: float = 5.0) -> None:
        check_topics(self.config, self._settings, timeout)

    def start(self) -> LocalEventSourceMapping:
        self._thread = threading.Thread(target=self._run_logged, name=f"esm-{self.config.logical_id}", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 30.0) -> None:
        """Stops after the invocation in flight; what was not committed is read again next time."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        self.destinations.close()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _run_logged(self) -> None:
        try:
            self.run()
        except BaseException as error:
            self.error = error
            log.error("%s stopped: %s", self.config.logical_id, error)

    def run(self) -> None:
        from confluent_kafka import Consumer

        consumer = Consumer(
            {
                **self._settings,
                "group.id": self.config.consumer_group,
                "enable.auto.commit": False,
                "enable.auto.offset.store": False,
                "auto.offset.reset": "latest" if self.config.starting_position == "LATEST" else "earliest",
                # a batch may be retried for a long time without a poll: the group must not drop the consumer
                "max.poll.interval.ms": 86_400_000,
                # static membership: a restarted poller takes its partitions back at once, where a new
                # member would wait for the dead one to time out (on some brokers, for a whole rebalance)
                # (a replay takes the same place: a local poller still running is fenced, and stops)
                "group.instance.id": f"{self.config.consumer_group}-local",
                "session.timeout.ms": 10_000,
                "heartbeat.interval.ms": 1_000,
                "error_cb": self._errors,
                "log_level": 3,
            }
        )
        consumer.subscribe(list(self.config.topics), on_assign=self._on_assign, on_revoke=self._on_revoke)
        try:
            while not self._stop.is_set():
                batch = self._next_batch(consumer)
                if batch and self._hold is not None:
                    while not self._hold.wait(0.1):
                        consumer.poll(0)  # stays in the group, takes nothing: the batch is held
                        if self._stop.is_set():
                            return
                if batch:
                    self._deliver(consumer, batch)
                refused = self._errors.authentication()
                if refused is not None:
                    raise MappingError(f"Kafka refused the mapping's credentials: {refused.str()}")
        finally:
            with contextlib.suppress(Exception):
                # a static member leaves the group only this way; close() alone keeps its place for a restart
                consumer.unsubscribe()
                consumer.poll(0.1)
                consumer.close()

    # --- assignment ----------------------------------------------------------------
    def _on_assign(self, consumer: Any, partitions: list[Any]) -> None:
        self.assignment |= {f"{tp.topic}-{tp.partition}" for tp in partitions}
        if self._from_earliest:
            from confluent_kafka import OFFSET_BEGINNING

            for tp in partitions:
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
        # another consumer of the group owns them now: it reads them from the committed offsets
        revoked = {f"{tp.topic}-{tp.partition}" for tp in partitions}
        self._revoked |= revoked
        self.assignment -= revoked

    # --- batching ------------------------------------------------------------------
    def _next_batch(self, consumer: Any) -> list[Record]:
        batch: list[Record] = []
        size = payload.payload_size([], self.config.bootstrap_servers)
        partitions: set[str] = set()
        opened: float | None = None
        window = self.config.window_seconds
        while not self._stop.is_set():
            if self._revoked:
                batch = [r for r in batch if r.partition_key not in self._revoked]
                self._pending = deque(r for r in self._pending if r.partition_key not in self._revoked)
                self._revoked.clear()
            if not self._pending:
                wait = self._poll_interval if opened is None else max(0.0, opened + window - time.monotonic())
                self._fetch(consumer, wait, self.config.batch_size - len(batch))
            while self._pending and len(batch) < self.config.batch_size:
                record = self._pending[0]
                alone = payload.payload_size([record], self.config.bootstrap_servers)
                if alone > payload.MAX_PAYLOAD_BYTES:
                    if batch:
                        return batch  # deliver what came before it first
                    self._pending.popleft()
                    return [record]  # _deliver sends it on alone
                grows = record.size + (0 if record.partition_key in partitions else len(record.partition_key) + 8)
                if size + grows > payload.MAX_PAYLOAD_BYTES:
                    return batch
                self._pending.popleft()
                batch.append(record)
                partitions.add(record.partition_key)
                size += grows
                if opened is None:
                    opened = time.monotonic()
            if len(batch) >= self.config.batch_size:
                return batch
            if opened is not None and time.monotonic() >= opened + window:
                return batch
        return []

    def _fetch(self, consumer: Any, wait: float, room: int) -> None:
        first = consumer.poll(wait)
        if first is None:
            return
        messages = [first, *consumer.consume(max(0, min(room, 10_000) - 1), 0)] if room > 1 else [first]
        for message in messages:
            error = message.error()
            if error is not None:
                if error.fatal():
                    raise MappingError(f"Kafka consumer failed: {error.str()}")
                log.warning("%s: %s", self.config.logical_id, error.str())
                continue
            self._pending.append(payload.from_message(message, self.config.schema_registry))

    # --- delivery ------------------------------------------------------------------
    def _deliver(self, consumer: Any, batch: list[Record]) -> None:
        rejected = [r for r in batch if r.rejected is not None]
        if rejected:  # the schema registry kept them from the function: to the destination, never invoked
            batch = [r for r in batch if r.rejected is None]
            self._reject(rejected)
        parts = deque([_Part(batch)] if batch else [])
        while parts and not self._stop.is_set():
            part = parts[0]
            part.records = self._drop_expired(consumer, part.records)
            if not part.records:
                parts.popleft()
                continue
            if payload.payload_size(part.records, self.config.bootstrap_servers) > payload.MAX_PAYLOAD_BYTES:
                self._too_large(consumer, part.records)
                parts.popleft()
                continue
            failed = self._invoke_part(part)
            if failed is None:  # every record succeeded
                self._commit(consumer, part.records)
                self.stats.records_delivered += len(part.records)
                parts.popleft()
                continue
            if failed is not part.records:  # partial: commit what precedes each failure, retry the rest
                retried = {id(r) for r in failed}
                done = [r for r in part.records if id(r) not in retried]
                self._commit(consumer, done)
                self.stats.records_delivered += len(done)
                part.records = failed
            if self.config.bisect_on_error and len(part.records) > 1:
                half = len(part.records) // 2
                self.stats.bisects += 1
                parts.popleft()
                parts.extendleft(
                    [_Part(part.records[half:], part.retries, part.invocations, part.last_error),
                     _Part(part.records[:half], part.retries, part.invocations, part.last_error)]
                )  # fmt: skip
                continue
            part.retries += 1
            limit = self.config.retry_limit
            if limit >= 0 and part.retries > limit:
                self._give_up(consumer, part.records, RETRIES_EXHAUSTED, part.invocations, part.last_error)
                parts.popleft()
                continue
            self._stop.wait(min(self._backoff[0] * 2 ** (part.retries - 1), self._backoff[1]))
        if rejected and not parts:  # the rest of the batch is done: the rejected offsets are too
            self._commit(consumer, [r for r in rejected if r.offset >= self.stats.committed.get(r.partition_key, 0)])

    def _reject(self, records: list[Record]) -> None:
        """Records the schema registry refused, sent on as Lambda does: to the on-failure
        destination with the reason as the condition, or discarded without one."""
        for reason in sorted({r.rejected for r in records if r.rejected is not None}):
            group = [r for r in records if r.rejected == reason]
            if self.destinations.configured:
                self.destinations.send(group, reason, 0, None, self._clock() * 1000)
            else:
                log.warning("%s: %d records discarded (%s)", self.config.logical_id, len(group), reason)
            self.stats.dead_lettered += len(group)

    def _invoke_part(self, part: _Part) -> list[Record] | None:
        """None when every record succeeded, else the records to retry: `part.records` itself on a
        function error, a new list of each failed partition's tail on a partial failure."""
        event = payload.event(part.records, self.config.bootstrap_servers)
        part.invocations += 1
        self.stats.invocations += 1
        self.stats.batch_sizes = [*self.stats.batch_sizes[-99:], len(part.records)]
        try:
            response = self._invoke(event)
        except Exception as error:
            self.stats.function_errors += 1
            part.last_error = "Unhandled"
            log.warning("%s: function error, the batch will be retried: %r", self.config.logical_id, error)
            return part.records
        if not self.config.report_item_failures:
            return None
        try:
            return _failed_records(part.records, response)
        except InvalidResponse as why:
            self.stats.function_errors += 1
            part.last_error = "InvalidResponse"
            log.warning("%s: %s; the whole batch will be retried", self.config.logical_id, why)
            return part.records

    def _drop_expired(self, consumer: Any, records: list[Record]) -> list[Record]:
        age = self.config.maximum_record_age_seconds
        if age < 0:
            return records
        oldest = (self._clock() - age) * 1000
        expired = [r for r in records if r.timestamp < oldest]
        if not expired:
            return records
        self._give_up(consumer, expired, RECORD_TOO_OLD, 0, None)
        return [r for r in records if r.timestamp >= oldest]

    def _too_large(self, consumer: Any, records: list[Record]) -> None:
        if not self.destinations.configured:
            first = records[0]
            raise MappingError(
                f"record {first.partition_key}@{first.offset} is larger than Lambda's 6 MB payload and the "
                f"mapping has no on-failure destination; it stops here rather than drop the record"
            )
        self._give_up(consumer, records, PAYLOAD_TOO_LARGE, 0, None)

    def _give_up(
        self, consumer: Any, records: Sequence[Record], condition: str, invocations: int, error: str | None
    ) -> None:
        if self.destinations.configured:
            self.destinations.send(records, condition, invocations, error, self._clock() * 1000)
        else:
            log.error(
                "%s: %d records discarded (%s) and no on-failure destination keeps them",
                self.config.logical_id,
                len(records),
                condition,
            )
        self.stats.dead_lettered += len(records)
        self._commit(consumer, records)

    def _commit(self, consumer: Any, records: Sequence[Record]) -> None:
        from confluent_kafka import TopicPartition

        positions: dict[tuple[str, int], int] = {}
        for record in records:
            key = (record.topic, record.partition)
            positions[key] = max(positions.get(key, -1), record.offset + 1)
        if not positions:
            return
        offsets = [TopicPartition(topic, partition, offset) for (topic, partition), offset in positions.items()]
        consumer.commit(offsets=offsets, asynchronous=False)
        for (topic, partition), offset in positions.items():
            self.stats.committed[f"{topic}-{partition}"] = offset


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
