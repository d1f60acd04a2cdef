"""Planning: a batch's mutations into fenced script calls. Pure: no Redis, no I/O.

Every key keeps its applied position, per Kafka partition, in a hash of its own
hash slot (`keys.positions_key`, field `keys.position_field`). A step is one
key's mutations from one partition; the script (fence.lua) applies those whose
offset is past the position and moves the position, in one atomic step. So a
replay, an overlap (two invocations of one partition at once), or a call that
reaches Redis late, after its sender gave up and a newer batch was applied,
changes nothing: the position already says newer.

- A record (topic, partition, offset) seen twice in a batch is planned once.
- Overwrites of a key in a row keep only the last: the earlier ones would be
  overwritten within the same call anyway. An overwrite leaves the key exactly as
  its record says, TTL included (SET, DEL, a hash's DEL + HSET); merges, stream
  appends and stock events never collapse, nor does JSON.SET, which the server may
  refuse for a value it cannot hold (the key must then keep the write before it).
- Values travel as arguments of their own, never inside the plan's JSON: a SET's
  or a JSON document's value is one, a hash write or a stream entry takes two per
  field (and a merge one more per field it removes). Each call's arguments are
  counted against the request limit.
- The steps of one slot go out in calls of that slot only, so a cluster can run
  them (`cross_slot=False`); a standalone server takes any mix (`cross_slot=True`).
  Both topologies plan the same steps; only their packing differs.
- A step too long for one call continues in the next, which checks that the key's
  position reached the end of the part before (`after`): calls run independently,
  and a refused call (out of memory) must stop the rest of its key's mutations.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson
from redis.crc import key_slot

from cachesync import keys
from cachesync.projections import (
    ASSIGN,
    DELETE,
    HASH_MERGE,
    HASH_REPLACE,
    INCREMENT,
    JSON_MERGE,
    JSON_SET,
    REMOVE,
    SET,
    STREAM_ADD,
    Mutation,
)

# (mutation, topic, partition, offset): the Kafka coordinates that make a mutation idempotent.
# A plain tuple: one is built for every record.
Pending = tuple[Mutation, str, int, int]

# JSON_SET is no overwrite here: the server may refuse a value (a number out of RedisJSON's range),
# and a refused write must leave the key as the records before it made it
OVERWRITES = (SET, DELETE, HASH_REPLACE)
# ops whose value is one argument of the call (op[2] before packing)
ONE_VALUE = (SET, JSON_SET, JSON_MERGE)
# ops whose fields are arguments of the call, two per field (op[2] before packing)
FIELD_OPS = (HASH_REPLACE, HASH_MERGE, STREAM_ADD)

# Arguments a call spends before its keys and values: EVALSHA, the hash, numkeys, the plan.
CALL_OVERHEAD_ARGUMENTS = 4


class Step:
    """One key's mutations from one partition, in offset order."""

    __slots__ = ("key", "last", "ops", "position", "slot", "sources")

    def __init__(self, slot: int, key: str, position: str):
        self.slot = slot
        self.key = key
        self.position = position  # the key's position field for this partition
        # [offset, code, a, b, ttl]; values and fields become ARGV indexes when packed (_add)
        self.ops: list[list[Any]] = []
        # per op, the pending positions it stands for (several for collapsed overwrites)
        self.sources: list[list[int]] = []
        self.last = -1  # the offset of its last record


@dataclass
class Call:
    """One fence.lua call: steps of one slot (cluster) or of any slots (standalone)."""

    slot: int  # the slot of its first step: where a cluster sends it
    keys: list[str] = field(default_factory=list)
    values: list[bytes | str] = field(default_factory=list)
    entries: list[list[Any]] = field(default_factory=list)  # [hash index, key index, field, after, ops]
    steps: list[tuple[Step, int, int]] = field(default_factory=list)  # (step, first op, end op) carried here
    mutations: int = 0
    _index: dict[str, int] = field(default_factory=dict)

    def key_index(self, name: str) -> int:
        index = self._index.get(name)
        if index is None:
            self.keys.append(name)
            index = self._index[name] = len(self.keys)
        return index

    @property
    def arguments(self) -> int:
        return CALL_OVERHEAD_ARGUMENTS + len(self.keys) + len(self.values)

    def args(self) -> tuple[Any, ...]:
        """numkeys, the keys, the plan and the values: what follows EVAL <script> or EVALSHA <hash>."""
        return (len(self.keys), *self.keys, orjson.dumps(self.entries), *self.values)


def steps_of(pending: list[Pending]) -> tuple[list[Step], int]:
    """The batch's steps in first-seen order, and how many records repeated one already seen.

    A partition's records come in offset order, so a record at or below its step's last
    offset repeats one (the same topic, partition and offset is the same record, so the
    same key)."""
    steps: dict[tuple[str, int], Step] = {}
    repeated = 0
    for position, (mutation, _, partition, offset) in enumerate(pending):
        key = mutation.key
        step = steps.get((key, partition))
        if step is None:
            step = steps[(key, partition)] = Step(key_slot(key.encode()), key, keys.position_field(key, partition))
        elif offset <= step.last:
            repeated += 1
            continue
        step.last = offset
        op = _op(mutation, offset)
        if op[1] in OVERWRITES and step.ops and step.ops[-1][1] in OVERWRITES:
            step.ops[-1] = op  # the later overwrite wins within the call: the earlier is never sent
            step.sources[-1].append(position)
        else:
            step.ops.append(op)
            step.sources.append([position])
    return list(steps.values()), repeated


def _op(m: Mutation, offset: int) -> list[Any]:
    code = m.code
    if code in ONE_VALUE or code == HASH_REPLACE:
        return [offset, code, m.argument, m.ttl]  # the value (fields) become ARGV indexes when packed
    if code in (INCREMENT, ASSIGN):
        return [offset, code, m.member, m.argument, m.ttl]
    if code == REMOVE:
        return [offset, code, m.member]
    if code == HASH_MERGE:
        return [offset, code, m.argument, m.ttl, m.removed]
    if code == STREAM_ADD:
        return [offset, code, m.argument, m.ttl, m.max_length]
    return [offset, code]


def _cost(op: list[Any]) -> int:
    """The arguments an op's values take in its call."""
    code = op[1]
    if code in ONE_VALUE:
        return 1
    if code in FIELD_OPS:
        return len(op[2]) + (len(op[4]) if code == HASH_MERGE else 0)
    return 0


def pack(steps: list[Step], *, cross_slot: bool, max_mutations: int, max_arguments: int) -> list[Call]:
    """The calls that carry these steps, in an order that keeps each key's mutations in order."""
    by_slot: dict[int, list[Step]] = {}
    for step in steps:
        by_slot.setdefault(step.slot, []).append(step)
    calls: list[Call] = []
    call: Call | None = None
    for slot, slot_steps in by_slot.items():
        if call is not None and not cross_slot:
            calls.append(call)
            call = None
        positions = keys.positions_key(slot)
        for step in slot_steps:
            ops = step.ops
            if call is None:
                call = Call(slot)
            # most steps are one key's few ops: all of them into this call when they fit
            values = sum(_cost(op) for op in ops)
            if call.mutations + len(ops) <= max_mutations and call.arguments + 2 + values <= max_arguments:
                _add(call, step, positions, 0, len(ops), -1)
                continue
            start, after = 0, -1
            while start < len(ops):
                if call is None:
                    call = Call(slot)
                room = _room(call, step, positions, start, max_mutations, max_arguments)
                if room == 0:
                    calls.append(call)
                    call = None
                    continue
                end = start + room
                _add(call, step, positions, start, end, after)
                after = ops[end - 1][0]
                start = end
    if call is not None:
        calls.append(call)
    return calls


def _room(call: Call, step: Step, positions: str, start: int, max_mutations: int, max_arguments: int) -> int:
    """How many of the step's ops from `start` fit in the call (0: none)."""
    free_mutations = max_mutations - call.mutations
    # a new call always takes at least one op, so a step always makes progress
    new_keys = (positions not in call._index) + (step.key not in call._index)
    free_arguments = max_arguments - call.arguments - new_keys
    if free_mutations <= 0 or free_arguments <= 0:
        return 0
    room = 0
    for op in step.ops[start:]:
        cost = _cost(op)
        if cost > max_arguments - CALL_OVERHEAD_ARGUMENTS - 2:
            # never fits any call: the projections keep a record's fields below this (MAX_RECORD_FIELDS)
            raise ValueError(f"a mutation of {step.key} takes {cost} arguments, more than one request holds")
        if room == free_mutations or cost > free_arguments:
            break
        free_arguments -= cost
        room += 1
    return room


def _add(call: Call, step: Step, positions: str, start: int, end: int, after: int) -> None:
    hash_index = call.key_index(positions)
    key_index = call.key_index(step.key)
    ops: list[list[Any]] = []
    values = call.values
    for op in step.ops[start:end] if start or end < len(step.ops) else step.ops:
        code = op[1]
        if code == SET or code in ONE_VALUE:
            values.append(op[2])
            # fence.lua reads ARGV: the plan is ARGV[1], values from ARGV[2]
            ops.append([op[0], code, len(values) + 1, op[3]] if op[3] else [op[0], code, len(values) + 1])
        elif code in FIELD_OPS:
            first, fields = len(values) + 2, op[2]
            values.extend(fields)
            packed = [op[0], code, first, len(fields) // 2]
            if code == HASH_MERGE:
                values.extend(op[4])
                packed.append(len(op[4]))
            elif code == STREAM_ADD:
                packed.append(op[4])
            if op[3]:
                packed.append(op[3])
            ops.append(packed)
        elif len(op) == 5 and not op[4]:
            ops.append(op[:4])  # a sorted-set op without a TTL: leave it out
        else:
            ops.append(op)
    call.entries.append([hash_index, key_index, step.position, after, ops])
    call.steps.append((step, start, end))
    call.mutations += end - start
