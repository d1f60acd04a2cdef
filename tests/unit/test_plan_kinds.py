"""Planning the hash, json and stream kinds: which writes collapse, how their fields become
arguments, and that a call never takes more arguments than one request holds."""

from __future__ import annotations

import orjson

from cachesync.config import MAX_RECORD_FIELDS, MAX_REQUEST_ARGUMENTS
from cachesync.plan import Call, pack, steps_of
from cachesync.projections import DELETE, HASH_MERGE, HASH_REPLACE, JSON_MERGE, JSON_SET, STREAM_ADD, Mutation


def _calls(pending: list[tuple[Mutation, str, int, int]], max_mutations: int = 1000) -> list[Call]:
    steps, _ = steps_of(pending)
    return pack(steps, cross_slot=True, max_mutations=max_mutations, max_arguments=MAX_REQUEST_ARGUMENTS)


def test_hash_replaces_collapse_and_merges_appends_and_json_sets_do_not() -> None:
    fields = (b"a", b"1")
    pending = [
        (Mutation("h:1", HASH_REPLACE, argument=fields), "h", 0, 0),
        (Mutation("h:1", DELETE), "h", 0, 1),
        (Mutation("h:1", HASH_REPLACE, argument=(b"b", b"2"), ttl=5), "h", 0, 2),
        (Mutation("m:1", HASH_MERGE, argument=fields, removed=(b"z",)), "m", 0, 0),
        (Mutation("m:1", HASH_MERGE, argument=fields), "m", 0, 1),
        (Mutation("s:1", STREAM_ADD, argument=fields, max_length=100), "s", 0, 0),
        (Mutation("s:1", STREAM_ADD, argument=fields), "s", 0, 1),
        (Mutation("j:1", JSON_SET, argument=b"{}"), "j", 0, 0),
        (Mutation("j:1", JSON_SET, argument=b'{"a":1}'), "j", 0, 1),
        (Mutation("n:1", JSON_MERGE, argument=b"{}"), "n", 0, 0),
    ]
    (call,) = _calls(pending)
    plan = orjson.loads(call.args()[1 + len(call.keys)])
    ops = {call.keys[entry[1] - 1]: entry[4] for entry in plan}
    values = call.args()[2 + len(call.keys) :]
    # ARGV[1] is the plan; values from ARGV[2]: an op's index minus 2 is its place in `values`
    assert ops["h:1"] == [[2, "H", 2, 1, 5]]  # only the last replace, its fields and TTL
    assert values[0:2] == (b"b", b"2")
    assert [op[1] for op in ops["m:1"]] == ["M", "M"]
    first_merge = ops["m:1"][0]
    assert first_merge[3:5] == [1, 1] and values[first_merge[2] - 2 : first_merge[2] + 1] == (b"a", b"1", b"z")
    assert [op[1] for op in ops["s:1"]] == ["X", "X"] and ops["s:1"][0][4] == 100
    assert [op[1] for op in ops["j:1"]] == ["J", "J"]
    assert len(values) == 2 + 3 + 2 + 2 + 2 + 2 + 1


def test_wide_writes_are_counted_argument_by_argument() -> None:
    widest = tuple(b"f" for _ in range(2 * MAX_RECORD_FIELDS))
    pending = [(Mutation(f"h:{i}", HASH_REPLACE, argument=widest), "h", 0, i) for i in range(5)]
    calls = _calls(pending)
    assert len(calls) == 5  # one record of the widest fills a request
    assert all(2 + len(call.args()) <= MAX_REQUEST_ARGUMENTS for call in calls)
    narrow = [(Mutation(f"h:{i}", HASH_REPLACE, argument=(b"f", b"v") * 10), "h", 0, i) for i in range(1000)]
    calls = _calls(narrow)
    assert all(2 + len(call.args()) <= MAX_REQUEST_ARGUMENTS for call in calls)
    assert sum(call.mutations for call in calls) == 1000 and len(calls) > 1
