"""Reads a fence.lua call's flat plan back, as the script walks it (fence.lua's header), so the
planning tests can name what each entry carries."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cachesync.plan import Call

# arguments after code, offset and TTL, by code: a fixed count, or a function of the next ones
_FIXED = {"S": 1, "D": 0, "I": 2, "Z": 2, "R": 1, "J": 1, "N": 1}


@dataclass
class Entry:
    hash: str
    key: str
    field: str
    after: int  # -1: none
    ops: list[tuple[Any, ...]]  # (code upper case, offset, ttl, arguments...)
    reported: bool  # in the call's `after` block, so fence.lua answers its position


def entries(call: Call) -> list[Entry]:
    args = list(call.args())
    numkeys = args[0]
    keys, plan = args[1 : 1 + numkeys], args[1 + numkeys :]
    positions, data_keys = keys[0], keys[1:]
    checks, p = int(plan[0]), 1
    afters: dict[int, int] = {}
    for _ in range(checks):
        afters[int(plan[p])] = int(plan[p + 1])
        p += 2
    fields = plan[p : p + len(data_keys)]
    p += len(data_keys)
    found: list[Entry] = []
    while p < len(plan):
        e = len(found) + 1
        count = 1
        if isinstance(plan[p], int):  # an op count, when more than one; else the op's code
            count = int(plan[p])
            p += 1
        ops = []
        for _ in range(count):
            code, offset = plan[p], int(plan[p + 1])
            p += 2
            ttl = 0
            if code.islower():
                code, ttl = code.upper(), int(plan[p])
                p += 1
            if code in _FIXED:
                width = _FIXED[code]
            elif code == "H":
                width = 1 + 2 * int(plan[p])
            elif code == "M":
                width = 2 + 2 * int(plan[p]) + int(plan[p + 1])
            else:  # X: maxlen, n, pairs
                width = 2 + 2 * int(plan[p + 1])
            ops.append((code, offset, ttl, *plan[p : p + width]))
            p += width
        found.append(Entry(positions, data_keys[e - 1], fields[e - 1], afters.get(e, -1), ops, e in afters))
    assert len(found) == len(data_keys), "one entry per data key"
    return found
