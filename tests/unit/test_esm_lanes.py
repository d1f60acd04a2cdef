"""A poller's lanes without a broker: batches cut from what is fetched, and the bytes a lane holds."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from devkit.esm.mapping import MappingConfig
from devkit.esm.payload import MAX_PAYLOAD_BYTES, Record, encoded_size, lambda_record
from devkit.esm.poller import LocalEventSourceMapping, _Lane, _Poller


@pytest.fixture
def poller() -> Iterator[_Poller]:
    config = MappingConfig(
        "OrdersMapping", "IngestFunction", ("orders",), ("b:9092",), "g", batch_size=4, window_seconds=0.0
    )
    mapping = LocalEventSourceMapping(config, lambda event: None, {"bootstrap.servers": "b:9092"})
    with open(os.devnull) as member_lock:
        yield _Poller(mapping, 0, "member", member_lock)


def fetched(lane: _Lane, partition: int, offset: int, value: bytes) -> Record:
    body = lambda_record("orders", partition, offset, 1_700_000_000_000, b"k", value)
    record = Record("orders", partition, offset, body["timestamp"], body, encoded_size(body))
    lane.pending.append(record)
    lane.pending_bytes += record.size
    return record


def test_batches_keep_the_fetch_order_and_the_lane_counts_the_bytes_it_still_holds(poller: _Poller) -> None:
    lane = _Lane()
    records = [fetched(lane, n % 2, n // 2, b"x" * n) for n in range(11)]
    batches = []
    while (batch := poller._next_batch(lane, now=0.0)) is not None:
        batches.append(batch)
        assert lane.pending_bytes == sum(r.size for r in lane.pending)
    assert [len(b) for b in batches] == [4, 4, 3]
    assert [r for b in batches for r in b] == records
    assert lane.pending_bytes == 0 and lane.opened is None


def test_a_reread_drops_the_partitions_records_and_their_bytes(poller: _Poller) -> None:
    lane = _Lane()
    for n in range(6):
        fetched(lane, n % 2, n // 2, b"y" * (n + 1))
    poller._reread(lane, [lane.pending[1]])  # partition 1 is read again from its first record
    assert [r.partition for r in lane.pending] == [0, 0, 0]
    assert lane.pending_bytes == sum(r.size for r in lane.pending)


def test_a_record_too_large_for_any_payload_goes_alone_after_those_before_it(poller: _Poller) -> None:
    lane = _Lane()
    small = fetched(lane, 0, 0, b"z")
    large = fetched(lane, 0, 1, b"z" * MAX_PAYLOAD_BYTES)
    assert poller._next_batch(lane, now=0.0) == [small]
    assert poller._next_batch(lane, now=0.0) == [large]
    assert lane.pending_bytes == 0
