"""Planning the hash, json and stream kinds: which writes collapse, how their fields become
arguments, and that a call never takes more arguments than one request holds."""

from __future__ import annotations

from cachesync.config import MAX_RECORD_FIELDS, MAX_REQUEST_ARGUMENTS
from cachesync.plan import Call, pack, steps_of
from cachesync.projections import DELETE, HASH_MERGE, HASH_REPLACE, JSON_MERGE, JSON_SET, STREAM_ADD, Mutation
from tests.unit.flatplan import entries


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
    ops = {entry.key: entry.ops for entry in entries(call)}
    # (code, offset, ttl, then the code's arguments: counts, fields and values as received)
    assert ops["h:1"] == [("H", 2, 5, 1, b"b", b"2")]  # only the last replace, its fields and TTL
    assert [op[0] for op in ops["m:1"]] == ["M", "M"]
    assert ops["m:1"][0][3:] == (1, 1, b"a", b"1", b"z")  # one pair set, one field removed
    assert [op[0] for op in ops["s:1"]] == ["X", "X"] and ops["s:1"][0][3] == 100  # MAXLEN ~ 100
    assert ops["j:1"] == [("J", 0, 0, b"{}"), ("J", 1, 0, b'{"a":1}')]
    assert ops["n:1"] == [("N", 0, 0, b"{}")]


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
