"""Ingest throughput, measured side by side in one run (a benchmark, not a test).

    python -m harness.bench_ingest [--records 10000] [--rounds 5] [--cluster] [--no-replicas]

The server: a standalone primary with one replica attached (REPLICAOF), or (`--cluster`)
a local cluster of 3 primaries with one replica each; `--no-replicas` leaves the replicas out.

Rows:
- IngestFunction handler, in-process, every write fenced, on new records: with WAIT (the
  default where the primary has replicas: each batch waits until one replica holds its writes)
  and with WAIT off (`REDIS_WAIT_REPLICAS=0`);
- the same handler on a replayed batch (every record a duplicate);
- a naive consumer: decode, parse, one command per record in one redis-py pipeline (a
  ClusterPipeline on the cluster), no idempotence;
- a pure-write pipeline: the same records' commands prepared in advance, redis-py packing
  and sending them (no decoding, no parsing, no idempotence): the client library's floor;
- naive SET and naive ZINCRBY pipelines (prepared, as above), for the server's CPU per command;
- `redis-benchmark -P 100` SET (`--cluster` on the cluster), the server's own ceiling,
  when redis-benchmark is installed;
- a 100-record batch (the event source mapping's default batch size), with WAIT and without:
  per-invocation cost.

The handler's two settings, the naive and the pure-write pipelines run in turn within each
round, so that a busy spell on a shared machine falls on all of them alike. Each row also has
the server's CPU per record (user + system, `INFO cpu` deltas summed over the primaries, over
all rounds), which is what ElastiCache Serverless bills as ECPUs.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import gc
import io
import json
import os
import re
import shutil
import statistics
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis
from redis.cluster import RedisCluster

from devkit import servers
from devkit.generator import EventGenerator
from devkit.sam import LocalContext, apply_environment, describe, load_handler

PURE_WRITE = "pure-write pipeline, the same commands prepared"
HANDLER_WAIT = "IngestFunction handler, new records, WAIT for 1 replica"
HANDLER_NO_WAIT = "IngestFunction handler, new records, WAIT off"
HANDLER_NO_REPLICA = "IngestFunction handler, new records, no replica (no WAIT)"
HANDLERS = (HANDLER_WAIT, HANDLER_NO_WAIT, HANDLER_NO_REPLICA)
SMALL_BATCH = "IngestFunction handler, 100-record batch"


@dataclass
class Row:
    name: str
    records: int
    seconds: float  # median over the rounds
    server_cpu_us: float | None = None  # server CPU per record, over all rounds
    # this process's CPU per record, over all rounds: steadier than the time on a busy machine
    client_cpu_us: float | None = None

    @property
    def per_second(self) -> float:
        return self.records / self.seconds


@dataclass
class Case:
    """One path to time: `prepare` (untimed) makes its argument, `run` is timed."""

    name: str
    records: int
    prepare: Callable[[], Any]
    run: Callable[[Any], Any]


class ServerCpu:
    """used_cpu_user + used_cpu_sys, summed over the given servers (a cluster's primaries)."""

    def __init__(self, ports: list[int]):
        self._clients = [redis.Redis(port=port) for port in ports]

    def seconds(self) -> float:
        return sum(float(i["used_cpu_user"]) + float(i["used_cpu_sys"]) for i in (c.info("cpu") for c in self._clients))


def measure(
    name: str, records: int, rounds: int, prepare: Callable[[], Any], run: Callable[[Any], Any], cpu: ServerCpu
) -> Row:
    """The median time of `rounds` runs, and the server CPU they used per record."""
    return measure_in_turn([Case(name, records, prepare, run)], rounds, cpu)[0]


def measure_in_turn(cases: list[Case], rounds: int, cpu: ServerCpu) -> list[Row]:
    """Each case once per round, one after the other, so that a busy spell hits them alike:
    each one's median time and its server CPU per record."""
    times: dict[str, list[float]] = {case.name: [] for case in cases}
    used, own = dict.fromkeys(times, 0.0), dict.fromkeys(times, 0.0)
    for _ in range(rounds):
        for case in cases:
            argument = case.prepare()
            before = cpu.seconds()
            start, start_cpu = time.perf_counter(), time.process_time()
            case.run(argument)
            times[case.name].append(time.perf_counter() - start)
            own[case.name] += time.process_time() - start_cpu
            used[case.name] += cpu.seconds() - before
    per_record = {name: 1e6 / (case.records * rounds) for name, case in zip(times, cases, strict=True)}
    return [
        Row(
            case.name,
            case.records,
            statistics.median(times[case.name]),
            used[case.name] * per_record[case.name],
            own[case.name] * per_record[case.name],
        )
        for case in cases
    ]


# --- the servers ------------------------------------------------------------------
@dataclass
class Target:
    """The server(s) measured: where clients start, the primaries' ports, and each primary's replicas."""

    url: str
    primaries: list[int]
    replicas: int
    cluster: bool
    stop: Callable[[], None]


def start_target(cluster: bool, replicas: bool, binary: str | None = None) -> Target:
    """A standalone primary, or a 3-primary cluster, each primary with one replica when `replicas`."""
    if cluster:
        local = servers.start_cluster(binary, replicas=int(replicas))
        try:
            if replicas:
                what = "every node's CLUSTER SLOTS listing a replica per primary"
                servers.wait_for(lambda: _replicas_listed(local), what, 60.0, errors=(redis.exceptions.RedisError,))
        except BaseException:
            local.stop()
            raise
        return Target(local.url, [node.port for node in local.nodes], int(replicas), True, local.stop)
    primary = servers.start_server(binary)
    started = [primary]
    try:
        if replicas:
            started.append(servers.start_replica(primary))
    except BaseException:
        primary.remove()
        raise

    def stop() -> None:
        for server in reversed(started):
            server.remove()

    return Target(primary.url, [primary.port], int(replicas), False, stop)


def _replicas_listed(local: servers.LocalCluster) -> bool:
    """Clients learn a primary's replicas from CLUSTER SLOTS, and the handler waits where they are."""
    for node in local.members():
        ranges = node.command("CLUSTER", "SLOTS")
        if not ranges or any(len(holders) < 4 for holders in ranges):  # start, end, primary, a replica
            return False
    return True


def _waits(ports: list[int]) -> int:
    """WAIT commands the primaries have run so far."""
    stats = (redis.Redis(port=port).info("commandstats").get("cmdstat_wait", {}) for port in ports)
    return sum(int(stat.get("calls", 0)) for stat in stats)


def _check_waits(name: str, handler: Callable[[Any], Any], event: dict[str, Any], target: Target) -> None:
    """The row's name says whether its batches wait for a replica: one batch must show it."""
    before = _waits(target.primaries)
    handler(event)
    waited = _waits(target.primaries) - before
    if (name == HANDLER_WAIT) != (waited > 0):
        raise RuntimeError(f"{name}: a batch sent {waited} WAIT commands")


# --- the handler --------------------------------------------------------------------
def ingest_handler(url: str, cluster: bool, environment: dict[str, str] | None = None) -> Callable[[Any], Any]:
    """IngestFunction's handler with the template's environment plus `environment`, as `sam local
    invoke` runs it, called with the Lambda context; its EMF lines kept out of the output.

    Each call loads the handler module anew (its own cached Ingestor, built on the first
    invocation from the settings then in force), so handlers of different settings live side by
    side: warm each one (invoke it once) before building the next."""
    from cachesync import config

    env = {
        "REDIS_URL": url,
        "REDIS_CLUSTER": str(cluster).lower(),
        "POWERTOOLS_LOG_LEVEL": "WARNING",
        "REDIS_WAIT_REPLICAS": "",  # unset: wait where the primary has replicas
        **(environment or {}),
    }
    function = describe("IngestFunction", {"RedisUrl": url})
    apply_environment(function, env)
    config.settings.cache_clear()  # the settings are read once per process, on first use
    with contextlib.redirect_stdout(io.StringIO()):
        handler = load_handler(function)
    context = LocalContext(function)

    def invoke(event: dict[str, Any]) -> Any:
        with contextlib.redirect_stdout(io.StringIO()):  # keep the EMF lines out of the table
            return handler(event, context)

    return invoke


def _commands(event: dict[str, Any]) -> list[tuple[Any, ...]]:
    """One command per record, as a hand-written consumer writes it (no idempotence)."""
    commands: list[tuple[Any, ...]] = []
    for chunk in event["records"].values():
        for record in chunk:
            value = base64.b64decode(record["value"])
            document = json.loads(value)
            topic = record["topic"]
            if topic == "orders":
                commands.append(("SET", f"orders:{document['orderid']}", value))
            elif topic == "products":
                commands.append(("SET", f"products:{document['sku']}", value))
            elif document["type"] == "count":
                commands.append(("ZADD", f"inventory:{document['store']}", document["units"], f"sku:{document['sku']}"))
            else:
                delta = document["units"] if document["type"] == "shipment" else -document["units"]
                commands.append(("ZINCRBY", f"inventory:{document['store']}", delta, f"sku:{document['sku']}"))
    return commands


def naive_consumer(client: redis.Redis | RedisCluster) -> Callable[[dict[str, Any]], None]:
    """What a hand-written consumer does: decode, parse, one command per record, pipelined, no idempotence."""

    def consume(event: dict[str, Any]) -> None:
        write(client, _commands(event))

    return consume


def write(client: redis.Redis | RedisCluster, commands: list[tuple[Any, ...]]) -> None:
    """The commands in one redis-py pipeline (ClusterPipeline on a cluster: one per node)."""
    pipe: Any = (
        client.pipeline(transaction=False) if isinstance(client, redis.Redis) else client.pipeline()  # type: ignore[no-untyped-call]
    )
    for command in commands:
        pipe.execute_command(*command)
    pipe.execute()


def command_costs(client: redis.Redis | RedisCluster, generator: EventGenerator, records: int) -> list[Row]:
    """SET only and ZINCRBY only, prepared in advance, redis-py packing them: each command's own server CPU."""
    cpu = ServerCpu(_ports(client))
    rounds = 5
    rows = []
    value = b'{"ordertime":1497014222380,"orderid":18,"itemid":"Item_184","address":{"city":"Mountain View"}}'
    rows.append(
        measure(
            "naive SET pipeline (prepared)",
            records,
            rounds,
            lambda: [("SET", f"orders:{generator.random.randint(1, 10**6)}", value) for _ in range(records)],
            lambda commands: write(client, commands),
            cpu,
        )
    )
    rows.append(
        measure(
            "naive ZINCRBY pipeline (prepared)",
            records,
            rounds,
            lambda: [
                (
                    "ZINCRBY",
                    f"inventory:store{generator.random.randint(1, 20)}",
                    1,
                    f"sku:{generator.random.randint(1, 2000)}",
                )
                for _ in range(records)
            ],
            lambda commands: write(client, commands),
            cpu,
        )
    )
    return rows


def _ports(client: redis.Redis | RedisCluster) -> list[int]:
    if isinstance(client, RedisCluster):
        return [int(node.port) for node in client.get_primaries()]  # type: ignore[no-untyped-call]
    return [int(client.connection_pool.connection_kwargs["port"])]


def redis_benchmark_ceiling(port: int, cluster: bool = False, requests: int = 200_000) -> float | None:
    binary = shutil.which("redis-benchmark")
    if binary is None:
        return None
    output = subprocess.run(
        [binary, "-p", str(port), "-t", "set", "-n", str(requests), "-P", "100", "-q", "-r", "100000"]
        + (["--cluster"] if cluster else []),
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout
    # the final line reads "SET: 1234567.00 requests per second, p50=..." (progress lines say "rps=")
    found = re.findall(r"SET: ([0-9.]+) requests per second", output)
    return float(found[-1]) if found else None


def run(records: int, rounds: int, cluster: bool, replicas: bool = True, freeze: bool = True) -> list[Row]:
    target = start_target(cluster, replicas)
    try:
        return _run(target, records, rounds, freeze)
    finally:
        target.stop()


def _run(target: Target, records: int, rounds: int, freeze: bool) -> list[Row]:
    url, cluster = target.url, target.cluster
    generator = EventGenerator(seed=1, partitions=6, stores=20, skus=2000)
    describe("IngestFunction", {"RedisUrl": url})  # the SAM CLI's modules, imported before the freeze
    if freeze:
        # Objects alive now (the SAM CLI's template providers, the generator) are in no Lambda
        # process; frozen, the collector's full passes skip them, as Lambda's never meet them.
        # The handler's own modules and state, loaded below, are collected as in Lambda.
        gc.collect()
        gc.freeze()
    handlers: dict[str, Callable[[Any], Any]] = {}
    for name, environment in (
        [(HANDLER_WAIT, {}), (HANDLER_NO_WAIT, {"REDIS_WAIT_REPLICAS": "0"})]
        if target.replicas
        else [(HANDLER_NO_REPLICA, {})]
    ):
        handlers[name] = ingest_handler(url, cluster, environment)
        handlers[name](generator.batch(records))  # warm: client, script load, replicas seen
    default = next(iter(handlers.values()))  # as deployed: WAIT where there are replicas
    for name, handler in handlers.items():
        _check_waits(name, handler, generator.batch(records), target)

    client: redis.Redis | RedisCluster = RedisCluster.from_url(url) if cluster else redis.Redis.from_url(url)
    cpu = ServerCpu(target.primaries)
    naive = naive_consumer(client)
    naive(generator.batch(records))  # warm: the cluster map, connections
    naive_name = (
        "naive ClusterPipeline, one command per record" if cluster else "naive pipeline, one command per record"
    )
    cases = [Case(name, records, lambda: generator.batch(records), handler) for name, handler in handlers.items()]
    cases += [
        Case(naive_name, records, lambda: generator.batch(records), naive),
        Case(PURE_WRITE, records, lambda: _commands(generator.batch(records)), lambda c: write(client, c)),
    ]
    rows = measure_in_turn(cases, rounds, cpu)
    replay = generator.batch(records)
    default(replay)
    rows.append(measure("IngestFunction handler, replayed batch", records, rounds, lambda: replay, default, cpu))
    rows += command_costs(client, generator, records)
    ceiling = redis_benchmark_ceiling(target.primaries[0], cluster)
    if ceiling:
        rows.append(Row("redis-benchmark -P 100 SET (ceiling)", int(ceiling), 1.0))
    small = 100
    rows += measure_in_turn(
        [
            Case(
                f"{SMALL_BATCH}{name.removeprefix('IngestFunction handler, new records')}",
                small,
                lambda: generator.batch(small),
                handler,
            )
            for name, handler in handlers.items()
        ],
        rounds * 20,
        cpu,
    )
    client.close()
    return rows


def table(rows: list[Row]) -> str:
    baseline = next((r for r in rows if r.name.startswith("naive")), None)
    pure = next((r for r in rows if r.name.startswith("pure-write")), None)
    ceiling = next((r for r in rows if r.name.startswith("redis-benchmark")), None)
    lines = [
        "| path | records | median time | records/s | vs naive | vs pure-write | of the ceiling | server CPU/record "
        "| client CPU/record |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in rows:
        ratio = f"{row.per_second / baseline.per_second:.2f}x" if baseline else "-"
        versus_pure = f"{row.per_second / pure.per_second:.2f}x" if pure else "-"
        fraction = f"{row.per_second / ceiling.per_second:.0%}" if ceiling else "-"
        cpu = f"{row.server_cpu_us:.2f} µs" if row.server_cpu_us is not None else "-"
        client = f"{row.client_cpu_us:.2f} µs" if row.client_cpu_us is not None else "-"
        lines.append(
            f"| {row.name} | {row.records:,} | {row.seconds * 1000:.1f} ms | {row.per_second:,.0f} | {ratio} "
            f"| {versus_pure} | {fraction} | {cpu} | {client} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--cluster", action="store_true", help="against a local 3-master cluster")
    parser.add_argument("--no-replicas", action="store_true", help="primaries without replicas (so no WAIT)")
    parser.add_argument(
        "--no-gc-freeze", action="store_true", help="leave the harness's own objects to the collector's full passes"
    )
    args = parser.parse_args()
    print(
        f"cpus={os.cpu_count()} records={args.records} rounds={args.rounds} cluster={args.cluster} "
        f"replicas={not args.no_replicas} gc-freeze={not args.no_gc_freeze}"
    )
    print(table(run(args.records, args.rounds, args.cluster, not args.no_replicas, not args.no_gc_freeze)))


if __name__ == "__main__":
    main()
