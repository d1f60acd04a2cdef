"""Planning: no call exceeds the 3,999 arguments ElastiCache Serverless takes in one request, a
cluster's calls stay in one hash slot, and a key's mutations split over calls are chained."""

from __future__ import annotations

import orjson
from redis.crc import key_slot

from cachesync.config import MAX_REQUEST_ARGUMENTS, MAX_SCRIPT_BATCH_SIZE, Settings
from cachesync.plan import Call, pack, steps_of
from cachesync.projections import DELETE, INCREMENT, SET, Mutation


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
    # full calls: 3 arguments per new key (its slot's positions hash, the key, the value) at most
    assert len(calls) <= 5000 * 3 // (MAX_REQUEST_ARGUMENTS - 4) + 1


def test_cluster_calls_hold_the_keys_of_one_slot_and_its_positions_hash() -> None:
    steps, _ = steps_of(_widest(300))
    for call in pack(steps, cross_slot=False, max_mutations=1000, max_arguments=MAX_REQUEST_ARGUMENTS):
        assert len({key_slot(key.encode()) for key in call.keys}) == 1


def test_a_long_ledger_splits_into_chained_calls() -> None:
    deltas = [(Mutation("inventory:s", INCREMENT, "sku:1", "1"), "inventory", 3, i) for i in range(5000)]
    steps, _ = steps_of(deltas)
    calls = pack(steps, cross_slot=True, max_mutations=1997, max_arguments=MAX_REQUEST_ARGUMENTS)
    assert [call.mutations for call in calls] == [1997, 1997, 1006]
    entries = [orjson.loads(call.args()[-1])[0] for call in calls]  # no values: the plan is last
    # each call carries `after`: the offset the key's position must have reached (the last before)
    assert [entry[3] for entry in entries] == [-1, 1996, 3993]
    assert all(entry[2] == "inventory:s#3" for entry in entries)


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
    assert [op[0] for op in ledger.ops] == [7]
    assert order.ops == [[9, SET, b"b", 0]]  # only the last overwrite is sent
    assert order.sources[0] == [2, 3, 4]  # it stands for all three records
