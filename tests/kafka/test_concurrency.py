"""The local mapping under concurrency, as Lambda's can run: real brokers, the real IngestFunction
handler and Valkey, the cache compared exactly with the reference model afterwards.

- the three mappings and each topic's partitions invoked at once;
- an invocation past the function's Timeout, abandoned and retried, whose writes land while
  its retry runs;
- two invocations of one partition overlapping after a consumer-group rebalance;
- a retry read again from Kafka that ends elsewhere than the attempt that failed (after that
  attempt's writes landed, and before any did).

A handler hook holds chosen invocations until the case has happened (never for a fixed time),
so each case is produced on purpose, and each test checks that it was.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable
from typing import Any

import redis

from devkit.datagen import KafkaFeed
from devkit.esm.runner import LocalMappings
from devkit.generator import EventGenerator
from harness.model import model_state, redis_state
from tests.conftest import Target
from tests.kafka.conftest import Kafka, wait_until
from tests.kafka.test_pipeline import PARTITIONS, log_of, parameters, produce, topic_environment, topics

DEADLINE = 180.0  # generous: a busy machine only makes the cases slower
Span = tuple[int, int]  # a partition's first and last offset in one invocation


def spans_of(event: dict[str, Any]) -> dict[str, Span]:
    return {key: (records[0]["offset"], records[-1]["offset"]) for key, records in event["records"].items()}


class Hook:
    """Wraps every call of the handler (InProcessFunction's around_handler): keeps what ran, what
    ran at once and how each call ended; `before` and `after` are the case's own."""

    def __init__(self) -> None:
        self.changed = threading.Condition()
        self.running: dict[int, dict[str, Span]] = {}
        self.widest: list[dict[str, Span]] = []  # the most calls seen running at once
        self.ended: list[tuple[dict[str, Span], str]] = []  # each call's spans and how it ended
        self._ids = itertools.count()

    def __call__(self, call: Callable[[], Any], event: dict[str, Any]) -> Any:
        spans = spans_of(event)
        ident = next(self._ids)
        with self.changed:
            self.running[ident] = spans
            if len(self.running) > len(self.widest):
                self.widest = list(self.running.values())
            self.changed.notify_all()
        outcome = "returned"
        try:
            self.before(spans)
            result = call()
            self.after(spans)
            return result
        except BaseException as error:
            outcome = type(error).__name__
            raise
        finally:
            with self.changed:
                del self.running[ident]
                self.ended.append((spans, outcome))
                self.changed.notify_all()

    def before(self, spans: dict[str, Span]) -> None:
        pass

    def after(self, spans: dict[str, Span]) -> None:
        pass

    def wait_for(self, condition: Callable[[], bool], what: str) -> None:
        with self.changed:
            if not self.changed.wait_for(condition, DEADLINE):
                raise AssertionError(f"timed out after {DEADLINE}s waiting for {what}")


def run_mappings(
    kafka: Kafka,
    valkey: Target,
    local_mappings: Callable[..., LocalMappings],
    names: dict[str, str],
    hook: Hook,
    **options: Any,
) -> LocalMappings:
    return local_mappings(
        bootstrap=kafka.bootstrap,
        parameters={**parameters(names), "RedisUrl": valkey.url},
        around_handler=hook,
        backoff=(0.05, 0.5),
        **options,
    )


def finish_and_compare(kafka: Kafka, valkey: Target, names: dict[str, str], mappings: LocalMappings) -> None:
    """Until every record produced so far is committed and no invocation (abandoned ones too)
    still runs; then the cache must be exactly the model of the log."""
    ends = {f"{t}-{p}": end for t in names.values() for p, end in kafka.end_offsets(t, PARTITIONS).items()}

    def applied_everything() -> bool:
        committed = mappings.committed()
        return all(committed.get(key, 0) >= end for key, end in ends.items())

    wait_until(applied_everything, timeout=DEADLINE, what="every record applied")
    mappings.stop()
    assert mappings.wait_idle(DEADLINE), "invocations still running"
    assert not mappings.failed()
    state = redis_state(redis.Redis.from_url(valkey.url))
    assert state == model_state(topic_environment(names), log_of(kafka, names))


def stats(mappings: LocalMappings, topic: str) -> Any:
    return next(p.stats for p in mappings.pollers if p.config.topics == (topic,))


def test_the_mappings_and_their_partitions_run_at_once(
    kafka: Kafka, valkey: Target, local_mappings: Callable[..., LocalMappings]
) -> None:
    """Three mappings of three partitions each: the first calls wait until four run together,
    which takes two topics and two partitions of one topic (one lock for all, as before, never gets there)."""

    class Together(Hook):
        def __init__(self) -> None:
            super().__init__()
            self.released = False

        def before(self, spans: dict[str, Span]) -> None:
            if not self.released:
                with self.changed:
                    self.changed.wait_for(lambda: len(self.running) >= 4, DEADLINE)
                self.released = True

    names = topics(kafka)
    produce(kafka, names, 300, seed=31)
    hook = Together()
    mappings = run_mappings(kafka, valkey, local_mappings, names, hook).start()
    finish_and_compare(kafka, valkey, names, mappings)

    together = [key for spans in hook.widest for key in spans]
    assert len(together) >= 4, hook.widest
    topics_at_once = {key.rsplit("-", 1)[0] for key in together}
    assert len(topics_at_once) >= 2, together
    assert max(sum(key.startswith(f"{t}-") for key in together) for t in topics_at_once) >= 2, together
    assert sum(p.stats.peak_concurrency for p in mappings.pollers) >= 4


def test_an_invocation_past_its_timeout_is_retried_while_its_writes_land(
    kafka: Kafka, valkey: Target, local_mappings: Callable[..., LocalMappings]
) -> None:
    """The first call of a document partition and of a stock ledger partition waits until the
    mapping, past the function's Timeout, has given up on it and its retry has begun; then both
    write at once."""
    names = topics(kafka)
    targets = {f"{names['orders']}-0", f"{names['inventory']}-0"}

    class Late(Hook):
        def __init__(self) -> None:
            super().__init__()
            self.stale: dict[str, int] = {}  # target -> the first offset of its abandoned call
            self.retried: set[str] = set()
            self.late: list[str] = []  # targets whose abandoned call went on to its handler

        def before(self, spans: dict[str, Span]) -> None:
            for key in targets & spans.keys():
                with self.changed:
                    if key not in self.stale:
                        self.stale[key] = spans[key][0]
                        self.changed.wait_for(lambda: key in self.retried, DEADLINE)  # noqa: B023
                        self.late.append(key)
                    elif spans[key][0] == self.stale[key] and key not in self.retried:
                        self.retried.add(key)
                        self.changed.notify_all()

    produce(kafka, names, 300, seed=32)
    hook = Late()
    mappings = run_mappings(kafka, valkey, local_mappings, names, hook, function_timeout=2.0).start()
    finish_and_compare(kafka, valkey, names, mappings)

    assert sorted(hook.late) == sorted(targets)  # each abandoned call went on to write
    assert stats(mappings, names["orders"]).timeouts >= 1
    assert stats(mappings, names["inventory"]).timeouts >= 1
    for key in targets:  # the retry and the abandoned call of each target both ran their handler
        calls = [outcome for spans, outcome in hook.ended if spans.get(key, (-1,))[0] == hook.stale[key]]
        assert len(calls) >= 2, (key, hook.ended)


def test_invocations_of_a_partition_overlap_after_a_rebalance(
    kafka: Kafka, valkey: Target, local_mappings: Callable[..., LocalMappings]
) -> None:
    """Two pollers per mapping. The first call of a document and of a stock ledger partition waits;
    a rebalance revokes the partitions, the pollers read them again from the committed offsets
    and invoke the same records while the first calls still wait; then both write at once."""
    names = topics(kafka)
    targets = {f"{names['orders']}-0", f"{names['inventory']}-0"}

    class Overlap(Hook):
        def __init__(self) -> None:
            super().__init__()
            self.held: dict[str, int] = {}  # target -> the first offset of its first call
            self.again: set[str] = set()

        def before(self, spans: dict[str, Span]) -> None:
            for key in targets & spans.keys():
                with self.changed:
                    if key not in self.held:
                        self.held[key] = spans[key][0]
                        self.changed.notify_all()
                        self.changed.wait_for(lambda: key in self.again, DEADLINE)  # noqa: B023
                    elif spans[key][0] == self.held[key] and key not in self.again:
                        self.again.add(key)
                        self.changed.notify_all()

    produce(kafka, names, 300, seed=33)
    hook = Overlap()
    mappings = run_mappings(kafka, valkey, local_mappings, names, hook, pollers=2).start()
    hook.wait_for(lambda: hook.held.keys() == targets, "the first calls of both targets")
    mappings.rebalance()
    hook.wait_for(lambda: hook.again == targets, "the same records invoked again after the rebalance")
    finish_and_compare(kafka, valkey, names, mappings)

    for kind in ("orders", "inventory"):
        counted = stats(mappings, names[kind])
        assert counted.rebalances >= 1 and counted.abandoned >= 1 and counted.overlaps >= 1, (kind, counted)


def test_a_retry_reads_the_batch_again_and_ends_elsewhere(
    kafka: Kafka, valkey: Target, local_mappings: Callable[..., LocalMappings]
) -> None:
    """The first call of a document partition fails after its writes landed, that of a stock
    ledger partition before any; each first has more records produced into its partition. The
    retry starts where the failed call started and takes the new records too."""
    names = topics(kafka)
    after_writes, before_writes = f"{names['orders']}-0", f"{names['inventory']}-0"
    generator = EventGenerator(seed=34, partitions=PARTITIONS, stores=3, skus=40)
    more = KafkaFeed({"bootstrap.servers": kafka.bootstrap}, names)

    def grow(key: str) -> None:
        """More records until some land in this partition."""
        topic, partition = key.rsplit("-", 1)
        before = kafka.end_offsets(topic, PARTITIONS)[int(partition)]
        while kafka.end_offsets(topic, PARTITIONS)[int(partition)] == before:
            more.produce(generator.records(30))
            more.flush()

    class FailOnce(Hook):
        def __init__(self) -> None:
            super().__init__()
            self.failed: dict[str, Span] = {}

        def before(self, spans: dict[str, Span]) -> None:
            if before_writes in spans and before_writes not in self.failed:
                self.failed[before_writes] = spans[before_writes]
                grow(before_writes)
                raise RuntimeError("failed before any write")

        def after(self, spans: dict[str, Span]) -> None:
            if after_writes in spans and after_writes not in self.failed:
                self.failed[after_writes] = spans[after_writes]
                grow(after_writes)
                raise RuntimeError("failed after its writes")

    produce(kafka, names, 300, seed=34)
    hook = FailOnce()
    # a window of its own: the retry gathers what was fetched again, whenever the fetches return
    mappings = run_mappings(kafka, valkey, local_mappings, names, hook, overrides={"window_seconds": 0.5}).start()
    hook.wait_for(lambda: len(hook.failed) == 2, "both failures and the records produced after them")
    finish_and_compare(kafka, valkey, names, mappings)

    for key, (first, last) in hook.failed.items():
        retries = [spans[key] for spans, outcome in hook.ended if outcome == "returned" and key in spans]
        retry = next(span for span in retries if span[0] == first)
        assert retry[1] > last, (key, (first, last), retry)
    assert hook.failed.keys() == {after_writes, before_writes}
    assert stats(mappings, names["orders"]).function_errors >= 1
