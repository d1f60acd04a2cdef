"""Planning: a batch's mutations into fenced script calls. Pure: no Redis, no I/O.

Every key keeps its applied position, per Kafka partition, in a positions hash
(`keys.positions_key`, field `keys.position_field`): its slot's on a cluster, the
one hash of every key on a standalone server. A step is one
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
- The plan is flat: every op is a few arguments of the call (its code, offset,
  TTL if any, then its member, value or fields as received), which fence.lua walks
  in order; nothing is encoded as JSON. Each call's arguments are counted against
  the request limit.
- The steps of one slot go out in calls of that slot only, so a cluster can run
  them (`cross_slot=False`); a standalone server takes any mix (`cross_slot=True`).
  Either way a call has one positions hash, read with one HMGET and written with one
  HSET. Both topologies plan the same steps; only their packing differs.
- A step too long for one call continues in the next, which checks that the key's
  position reached the end of the part before (`after`): calls run independently,
  and a refused call (out of memory) must stop the rest of its key's mutations.
- A batch can be planned in chunks (`Planner`), each sent while the next is planned:
  a key's step in a later chunk checks the end of its step in the chunk before in
  the same way, so no call can move a key past mutations an earlier call carries.
"""

from __future__ import annotations

from typing import Any

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
# an op's code in lower case carries a TTL (fence.lua)
_WITH_TTL = {code: code.lower() for code in (SET, INCREMENT, ASSIGN, HASH_REPLACE, HASH_MERGE, JSON_SET, JSON_MERGE)}
_WITH_TTL[STREAM_ADD] = STREAM_ADD.lower()
_OVERWRITE_CODES = frozenset({*OVERWRITES, *(_WITH_TTL[code] for code in OVERWRITES if code in _WITH_TTL)})

# Arguments a call spends before its entries: EVALSHA, the script's hash, numkeys, the positions hash,
# the count of `after` checks.
CALL_OVERHEAD_ARGUMENTS = 5
# Arguments of an entry besides its ops, at most: its key (KEYS), its position field and its op count
# (sent only when more than one).
ENTRY_ARGUMENTS = 3
# and when it carries an `after` check: the entry and the offset
AFTER_ARGUMENTS = 2

# One op as fence.lua reads it: code (lower case: a TTL follows), offset[, ttl], then the code's own
# arguments (member, value, fields). A tuple: one is built for every record.
Op = tuple[Any, ...]


class Step:
    """One key's mutations from one partition, in offset order."""

    __slots__ = ("after", "key", "last", "ops", "position", "records", "slot", "sources")

    def __init__(self, slot: int, key: str, position: str, after: int, op: Op, source: int, offset: int):
        """A step begun with its first op: `source` is the op's pending position, `offset` its record's."""
        self.slot = slot
        self.key = key
        self.position = position  # the key's position field for this partition
        self.ops: list[Op] = [op]
        # per op, the pending positions it stands for (several for collapsed overwrites)
        self.sources: list[list[int]] = [[source]]
        self.last = offset  # the offset of its last record
        self.records = 1  # the records its ops stand for
        # the offset the key's position must have reached first: the end of this key's step in an
        # earlier chunk of the batch (-1: none)
        self.after = after

    def records_in(self, start: int, end: int) -> int:
        """The records its ops [start, end) stand for."""
        return self.records if not start and end == len(self.ops) else sum(map(len, self.sources[start:end]))


class Call:
    """One fence.lua call: steps of one slot (cluster) or of any slots (standalone), and the one
    positions hash of their keys."""

    def __init__(self, slot: int, positions: str):
        self.slot = slot  # the slot of its first step: where a cluster sends it
        self.keys: list[str] = [positions]  # the positions hash, then each entry's key
        self.afters: list[Any] = []  # (entry, after) of the entries that check an `after`
        self.fields: list[str] = []  # per entry, its position field
        self.argv: list[Any] = []  # per entry, its op count (when more than one) and ops
        self.steps: list[tuple[Step, int, int]] = []  # (step, first op, end op) carried here
        self.mutations = 0
        self.records = 0  # the records its ops stand for
        self.arguments = CALL_OVERHEAD_ARGUMENTS

    def args(self) -> tuple[Any, ...]:
        """numkeys, the keys and the plan: what follows EVAL <script> or EVALSHA <hash>."""
        return (len(self.keys), *self.keys, len(self.afters) // 2, *self.afters, *self.fields, *self.argv)


def steps_of(pending: list[Pending]) -> tuple[list[Step], int]:
    """The batch's steps in first-seen order, each with its key's slot, and how many records repeated
    one already seen."""
    planner = Planner(cross_slot=False, max_mutations=1, max_arguments=1)
    return planner.steps(pending, 0), planner.repeated


class Planner:
    """Plans a batch chunk by chunk: each chunk's calls can go out while the next is planned."""

    def __init__(self, *, cross_slot: bool, max_mutations: int, max_arguments: int):
        self.cross_slot, self.max_mutations, self.max_arguments = cross_slot, max_mutations, max_arguments
        self.repeated = 0  # records that repeated one already seen
        self._lasts: dict[tuple[str, int], int] = {}  # (key, partition) -> its last offset in earlier chunks

    def plan(self, pending: list[Pending], first: int) -> list[Call]:
        """The calls of one chunk; `first` is the position of its first record in the whole batch."""
        return pack(
            self.steps(pending, first),
            cross_slot=self.cross_slot,
            max_mutations=self.max_mutations,
            max_arguments=self.max_arguments,
        )

    def steps(self, pending: list[Pending], first: int) -> list[Step]:
        """One chunk's steps in first-seen order.

        A partition's records come in offset order, so a record at or below the last offset
        planned for its key and partition repeats one (the same topic, partition and offset is
        the same record, so the same key)."""
        steps: dict[tuple[str, int], Step] = {}
        lasts = self._lasts
        overwrites = _OVERWRITE_CODES
        cross_slot = self.cross_slot
        for position, (mutation, _, partition, offset) in enumerate(pending, first):
            key = mutation.key
            step = steps.get(at := (key, partition))
            if step is None:
                earlier = lasts.get(at, -1)
                if offset <= earlier:
                    self.repeated += 1
                    continue
            elif offset <= step.last:
                self.repeated += 1
                continue
            # a document's SET without a TTL, most records, built here: no call
            if mutation.code == SET and not mutation.ttl:
                op: Op = (SET, offset, mutation.argument)
            else:
                op = _op(mutation, offset)
            if step is None:  # most records of a backlog are a key's only one in the chunk
                # a standalone server's calls take any keys: only a cluster's need the slot
                slot = 0 if cross_slot else key_slot(key.encode())
                steps[at] = Step(slot, key, keys.position_field(key, partition), earlier, op, position, offset)
                continue
            step.last = offset
            step.records += 1
            ops = step.ops
            if op[0] in overwrites and ops[-1][0] in overwrites:
                ops[-1] = op  # the later overwrite wins within the call: the earlier is never sent
                step.sources[-1].append(position)
            else:
                ops.append(op)
                step.sources.append([position])
        for at, step in steps.items():
            lasts[at] = step.last
        return list(steps.values())


def _op(m: Mutation, offset: int) -> Op:
    code, ttl = m.code, m.ttl
    if code in (SET, JSON_SET, JSON_MERGE):
        return (_WITH_TTL[code], offset, ttl, m.argument) if ttl else (code, offset, m.argument)
    if code == DELETE:
        return (code, offset)
    if code in (INCREMENT, ASSIGN):
        return (_WITH_TTL[code], offset, ttl, m.member, m.argument) if ttl else (code, offset, m.member, m.argument)
    if code == REMOVE:
        return (code, offset, m.member)
    fields: Any = m.argument
    if code == HASH_REPLACE:
        head: Op = (code, offset, len(fields) // 2)
    elif code == HASH_MERGE:
        head = (code, offset, len(fields) // 2, len(m.removed))
        fields = (*fields, *m.removed)
    elif code == STREAM_ADD:
        head = (code, offset, m.max_length, len(fields) // 2)
    else:
        raise ValueError(f"unknown mutation code {code!r}")
    if ttl:
        head = (_WITH_TTL[code], offset, ttl, *head[2:])
    return (*head, *fields)


def pack(steps: list[Step], *, cross_slot: bool, max_mutations: int, max_arguments: int) -> list[Call]:
    """The calls that carry these steps, in an order that keeps each key's mutations in order."""
    by_slot: dict[int, list[Step]] = {}
    if cross_slot:
        # a standalone server: any keys under the one positions hash. A call's documents (one SET
        # without a TTL each) go first, so fence.lua sets them all with one MSET before any other
        # write; steps of different keys are independent, and a key's steps from different
        # partitions have no order between them (as in Kafka)
        plain: list[Step] = []
        others: list[Step] = []
        for step in steps:
            (plain if len(step.ops) == 1 and step.ops[0][0] == SET else others).append(step)
        by_slot[0] = plain + others
    else:
        for step in steps:
            by_slot.setdefault(step.slot, []).append(step)
    calls: list[Call] = []
    call: Call | None = None
    for slot, slot_steps in by_slot.items():
        if call is not None and not cross_slot:
            calls.append(call)
            call = None
        positions = keys.STANDALONE_POSITIONS_KEY if cross_slot else keys.positions_key(slot)
        for step in slot_steps:
            ops = step.ops
            if call is None:
                call = Call(slot, positions)
            # most steps are one key's few ops: all of them into this call when they fit
            checked = _checked(step, 0, step.after)
            width = ENTRY_ARGUMENTS + (AFTER_ARGUMENTS if checked else 0) + sum(map(len, ops))
            if call.mutations + len(ops) <= max_mutations and call.arguments + width <= max_arguments:
                _add(call, step, 0, len(ops), step.after, checked)
                continue
            start, after = 0, step.after
            while start < len(ops):
                if call is None:
                    call = Call(slot, positions)
                room = _room(call, step, start, after, max_mutations, max_arguments)
                if room == 0:
                    calls.append(call)
                    call = None
                    continue
                end = start + room
                _add(call, step, start, end, after, _checked(step, start, after))
                after = ops[end - 1][1]
                start = end
    if call is not None:
        calls.append(call)
    return calls


def _room(call: Call, step: Step, start: int, after: int, max_mutations: int, max_arguments: int) -> int:
    """How many of the step's ops from `start` fit in the call (0: none)."""
    free_mutations = max_mutations - call.mutations
    entry = ENTRY_ARGUMENTS + (AFTER_ARGUMENTS if _checked(step, start, after) else 0)
    free_arguments = max_arguments - call.arguments - entry
    if free_mutations <= 0 or free_arguments <= 0:
        return 0
    room = 0
    for op in step.ops[start:]:
        cost = len(op)
        if cost > max_arguments - CALL_OVERHEAD_ARGUMENTS - ENTRY_ARGUMENTS - AFTER_ARGUMENTS:
            # never fits any call: the projections keep a record's fields below this (MAX_RECORD_FIELDS)
            raise ValueError(f"a mutation of {step.key} takes {cost} arguments, more than one request holds")
        if room == free_mutations or cost > free_arguments:
            break
        free_arguments -= cost
        room += 1
    return room


def _checked(step: Step, start: int, after: int) -> bool:
    """Whether the entry from op `start` goes in the call's `after` block, whose entries fence.lua
    answers with the position it read: when its key's position must have reached `after` first,
    or when its first op stands for several records (overwrites collapsed), so the writer can
    count those at or below the position as repeats."""
    return after >= 0 or len(step.sources[start]) > 1


def _add(call: Call, step: Step, start: int, end: int, after: int, checked: bool) -> None:
    """Ops [start, end) of the step as the call's next entry; `checked`: `_checked` of them."""
    entry = len(call.steps) + 1  # fence.lua counts from 1
    call.keys.append(step.key)
    call.fields.append(step.position)
    argv = call.argv
    width = len(argv)
    if checked:
        call.afters += (entry, after)
        call.arguments += AFTER_ARGUMENTS
    if end - start > 1:  # one op needs no count (fence.lua)
        argv.append(end - start)
    for op in step.ops[start:end] if start or end < len(step.ops) else step.ops:
        argv += op
    call.arguments += 2 + len(argv) - width
    call.steps.append((step, start, end))
    call.mutations += end - start
    call.records += step.records_in(start, end)
