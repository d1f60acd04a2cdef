"""Planning: no call exceeds the 3,999 arguments ElastiCache Serverless takes in one request, a
cluster's calls stay in one hash slot, and a key's mutations split over calls are chained."""

from __future__ import annotations

from redis.crc import key_slot

from cachesync.config import MAX_REQUEST_ARGUMENTS, MAX_SCRIPT_BATCH_SIZE, Settings
from cachesync.plan import Call, Planner, pack, steps_of
from cachesync.projections import DELETE, INCREMENT, SET, Mutation
from tests.unit.flatplan import entries


def _widest(n: int) -> list[tuple[Mutation, str, int, int]]:
    # every mutation a new key with a value: the most arguments a mutation can add
    return [(Mutation(f"orders:{i}", SET, argument=b"{}", ttl=60), "orders", 0, i) for i in range(n)]


def _request_size(call: Call) -> int:
    return 2 + len(call.args())  # EVALSHA <hash>, then numkeys, keys, plan, values


def test_the_largest_allowed_batch_size_stays_within_the_argument_limit() -> None:
    assert Settings.from_env({"SCRIPT_BATCH_SIZE": str(MAX_SCRIPT_BATCH_SIZE)}).script_batch_size == 1997
    steps, _ = steps_of(_widest(5000))
    calls = pack(steps, cross_slot=True, max_mutations=MAX_SCRIPT_BATCH_SIZE, max_arguments=MAX_REQUEST_ARGUMENTS)
    sizes = [_request_size(call) for call in calls]
    assert max(sizes) <= MAX_REQUEST_ARGUMENTS
    assert sum(call.mutations for call in calls) == 5000
    # full calls: 7 arguments per new key at most (the key, its position field, the op count; the op's
    # code, offset, TTL and value)
    assert len(calls) <= 5000 * 7 // (MAX_REQUEST_ARGUMENTS - 5) + 1


def test_cluster_calls_hold_the_keys_of_one_slot_and_its_positions_hash() -> None:
    steps, _ = steps_of(_widest(300))
    for call in pack(steps, cross_slot=False, max_mutations=1000, max_arguments=MAX_REQUEST_ARGUMENTS):
        assert len({key_slot(key.encode()) for key in call.keys}) == 1


def test_a_long_ledger_splits_into_chained_calls() -> None:
    deltas = [(Mutation("inventory:s", INCREMENT, "sku:1", "1"), "inventory", 3, i) for i in range(5000)]
    steps, _ = steps_of(deltas)
    calls = pack(steps, cross_slot=True, max_mutations=1997, max_arguments=MAX_REQUEST_ARGUMENTS)
    # 4 arguments a delta (code, offset, member, delta): the request's limit cuts first
    assert [call.mutations for call in calls] == [997] * 5 + [15]
    firsts = [entries(call)[0] for call in calls]
    # each call carries `after`: the offset the key's position must have reached (the last before)
    assert [entry.after for entry in firsts] == [-1, 996, 1993, 2990, 3987, 4984]
    assert all(entry.field == "inventory:s#3" for entry in firsts)


def test_a_repeated_record_is_planned_once_and_overwrites_collapse() -> None:
    pending = [
        (Mutation("inventory:s", INCREMENT, "sku:1", "10"), "inventory", 0, 7),
        (Mutation("inventory:s", INCREMENT, "sku:1", "10"), "inventory", 0, 7),  # the same record again
        (Mutation("orders:1", SET, argument=b"a"), "orders", 0, 7),  # same offset, other topic: its own
        (Mutation("orders:1", DELETE), "orders", 0, 8),
        (Mutation("orders:1", SET, argument=b"b"), "orders", 0, 9),
    ]
    steps, repeated = steps_of(pending)
    assert repeated == 1
    ledger, order = steps
    assert [op[1] for op in ledger.ops] == [7]  # (code, offset, ...)
    assert order.ops == [(SET, 9, b"b")]  # only the last overwrite is sent
    assert order.sources[0] == [2, 3, 4]  # it stands for all three records
    (call,) = pack(steps, cross_slot=True, max_mutations=1000, max_arguments=MAX_REQUEST_ARGUMENTS)
    assert call.records == 4  # what a call that applied everything counts as applied
    # the collapsed overwrite asks for its position back (an `after` of -1 checks nothing): a replay
    # whose position falls between its records counts those at or below it as repeats
    assert {entry.key: (entry.reported, entry.after) for entry in entries(call)} == {
        "inventory:s": (False, -1),
        "orders:1": (True, -1),
    }


def test_a_key_planned_again_in_a_later_chunk_checks_the_end_of_its_earlier_step() -> None:
    planner = Planner(cross_slot=True, max_mutations=1000, max_arguments=MAX_REQUEST_ARGUMENTS)
    first = [(Mutation("inventory:s", INCREMENT, "sku:1", "1"), "inventory", 2, i) for i in range(5)]
    second = [
        (Mutation("inventory:s", INCREMENT, "sku:1", "1"), "inventory", 2, 4),  # repeats the first chunk's last
        (Mutation("inventory:s", INCREMENT, "sku:1", "1"), "inventory", 2, 5),
        (Mutation("orders:1", SET, argument=b"a"), "orders", 2, 6),
    ]
    (early,) = planner.plan(first, 0)
    (late,) = planner.plan(second, len(first))
    assert [entry.after for entry in entries(early)] == [-1]
    by_key = {entry.key: entry for entry in entries(late)}
    # a later call can run first (a resend): it waits until the earlier one has moved the position
    assert by_key["inventory:s"].after == 4 and by_key["orders:1"].after == -1
    assert [op[1] for op in by_key["inventory:s"].ops] == [5]
    assert planner.repeated == 1
    # the sources are positions in the whole batch
    assert sorted(step.sources for step, _, _ in late.steps) == [[[6]], [[7]]]
