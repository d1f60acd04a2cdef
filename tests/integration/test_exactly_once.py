"""Property: whatever mix of overlapping, replayed and interleaved batches arrives,
Redis ends up as if each (topic, partition, offset) had been applied once, in partition order."""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cachesync.ingest import build_ingestor
from devkit.generator import EventGenerator, RawRecord
from harness.model import model_state, redis_state
from tests.integration.kindslog import PARTITIONS, log_of


def topic_log(seed: int, size: int) -> dict[tuple[str, int], list[dict[str, Any]]]:
    """A small Kafka log: few keys so records collide, tombstones and stock takes included."""
    g = EventGenerator(seed=seed, partitions=PARTITIONS, stores=2, skus=3)
    raws: list[RawRecord] = []
    for _ in range(size):
        roll = g.random.random()
        if roll < 0.35:
            raws.append(g.inventory())
        elif roll < 0.5:
            raws.append(g.product())
        elif roll < 0.6:
            raws.append(g.inventory("remove"))
        else:
            g.next_order_id = g.random.randint(1, 6)  # reuse order ids: rewrites and tombstones collide
            order = g.order()
            raws.append(order if g.random.random() < 0.75 else RawRecord("orders", order.key, None))
    return log_of(raws)


def deliveries(log: dict[tuple[str, int], list[dict[str, Any]]], draw: Any) -> list[dict[str, Any]]:
    """Batches as an at-least-once consumer may see them: each partition's slice starts at or
    before the next undelivered offset (a replay or an overlap), never after it (no gaps)."""
    delivered = dict.fromkeys(log, 0)
    batches = []
    for _ in range(draw(st.integers(1, 6))):
        records: dict[str, list[dict[str, Any]]] = {}
        for tp in draw(st.permutations(list(log))):
            if not draw(st.booleans()):
                continue
            start = draw(st.integers(0, delivered[tp]))
            end = draw(st.integers(start, len(log[tp])))
            if end > start:
                records[f"{tp[0]}-{tp[1]}"] = log[tp][start:end]
                delivered[tp] = max(delivered[tp], end)
        batches.append({"eventSource": "SelfManagedKafka", "records": records})
    # the consumer eventually catches up with every partition
    tail = {f"{tp[0]}-{tp[1]}": log[tp][delivered[tp] :] for tp in log if delivered[tp] < len(log[tp])}
    batches.append({"eventSource": "SelfManagedKafka", "records": tail})
    return batches


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    seed=st.integers(0, 10_000),
    size=st.integers(1, 60),
    script_batch=st.sampled_from(["1", "3", "1000"]),
    data=st.data(),
)
def test_any_delivery_converges_to_the_reference_model(
    target: Any, seed: int, size: int, script_batch: str, data: st.DataObject
) -> None:
    target.flush()
    log = topic_log(seed, size)
    ingest = build_ingestor(target.settings(SCRIPT_BATCH_SIZE=script_batch))
    for batch in deliveries(log, data.draw):
        ingest.process(batch)
    every_record = [record for records in log.values() for record in records]
    assert redis_state(target.client()) == model_state({}, every_record)
