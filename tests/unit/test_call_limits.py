"""No script call exceeds the 3,999 arguments ElastiCache Serverless takes in one request."""

from __future__ import annotations

import redis

from cachesync import keys
from cachesync.config import MAX_REQUEST_ARGUMENTS, MAX_SCRIPT_BATCH_SIZE, Settings
from cachesync.projections import INCREMENT, SET, Mutation
from cachesync.writer import BatchWriter, guard_commands


def _widest(n: int) -> list[tuple[Mutation, str, int]]:
    # every mutation a new key with a value: the most arguments a mutation can add
    return [(Mutation(f"orders:{i}", SET, argument=b"{}", ttl=60), "orders/0", i) for i in range(n)]


def test_the_largest_allowed_batch_size_stays_within_the_argument_limit() -> None:
    assert Settings.from_env({"SCRIPT_BATCH_SIZE": str(MAX_SCRIPT_BATCH_SIZE)}).script_batch_size == 1997
    writer = BatchWriter(redis.Redis(), MAX_SCRIPT_BATCH_SIZE)
    calls = list(writer._calls(enumerate(_widest(5000)), keys.offsets_key()))
    sizes = [len(call.command()) for call in calls]
    assert max(sizes) == MAX_REQUEST_ARGUMENTS and len(calls) == 3


def test_a_writer_built_with_a_larger_size_clamps_it() -> None:
    writer = BatchWriter(redis.Redis(), 10_000)
    calls = list(writer._calls(enumerate(_widest(5000)), keys.offsets_key()))
    assert all(len(call.command()) <= MAX_REQUEST_ARGUMENTS for call in calls)
    # deltas on one key add no arguments, but the count of mutations is bounded all the same
    deltas = [(Mutation("inventory:s", INCREMENT, "sku:1", "1"), "inventory/0", i) for i in range(5000)]
    assert max(len(c.positions) for c in writer._calls(enumerate(deltas), keys.offsets_key())) == 1997


def test_the_guard_of_many_partitions_stays_within_the_argument_limit() -> None:
    partitions = [(f"orders/{p}", "41", "", "", '{"orders:1":42}') for p in range(5000)]
    commands = guard_commands(partitions, "f" * 32, 120_000)
    assert max(len(command) for command in commands) <= MAX_REQUEST_ARGUMENTS
    assert sum((len(command) - 6) // 7 for command in commands) == 5000  # every partition, once
