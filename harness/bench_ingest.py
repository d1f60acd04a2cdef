"""Ingest throughput, measured side by side in one run (a benchmark, not a test).

    python -m harness.bench_ingest [--records 10000] [--rounds 5] [--cluster]

Rows, on a standalone server or (`--cluster`) a local 3-master cluster:
- IngestFunction handler, in-process, exactly-once machinery on (new records each round);
- the same handler on a replayed batch (every record a duplicate);
- a naive consumer: decode, parse, one command per record in one redis-py pipeline (a
  ClusterPipeline on the cluster), no idempotence;
- a pure-write pipeline: the same records' commands prepared in advance, redis-py packing
  and sending them (no decoding, no parsing, no idempotence): the client library's floor;
- naive SET and naive ZINCRBY pipelines (prepared, as above), for the server's CPU per command;
- `redis-benchmark -P 100` SET (`--cluster` on the cluster), the server's own ceiling,
  when redis-benchmark is installed;
- a 100-record batch (the event source mapping's default batch size): per-invocation cost.

Each row also has the server's CPU per record (user + system, `INFO cpu` deltas summed over
the primaries, over all rounds), which is what ElastiCache Serverless bills as ECPUs.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
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


@dataclass
class Row:
    name: str
    records: int
    seconds: float  # median over the rounds
    server_cpu_us: float | None = None  # server CPU per record, over all rounds

    @property
    def per_second(self) -> float:
        return self.records / self.seconds


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
    times, used = [], 0.0
    for _ in range(rounds):
        argument = prepare()
        before = cpu.seconds()
        start = time.perf_counter()
        run(argument)
        times.append(time.perf_counter() - start)
        used += cpu.seconds() - before
    return Row(name, records, statistics.median(times), used / (records * rounds) * 1e6)


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


def pure_writes(client: redis.Redis | RedisCluster, generator: EventGenerator, records: int) -> list[Row]:
    """The batch's own commands prepared in advance, then SET only and ZINCRBY only, redis-py packing them."""
    cpu = ServerCpu(_ports(client))
    rounds = 5
    rows = [
        measure(
            "pure-write pipeline, the same commands prepared",
            records,
            rounds,
            lambda: _commands(generator.batch(records)),
            lambda commands: write(client, commands),
            cpu,
        )
    ]
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


def run(records: int, rounds: int, cluster: bool) -> list[Row]:
    target = servers.start_cluster() if cluster else servers.start_server()
    url = target.url
    env = {"REDIS_URL": url, "REDIS_CLUSTER": str(cluster).lower(), "POWERTOOLS_LOG_LEVEL": "WARNING"}
    function = describe("IngestFunction", {"RedisUrl": url})
    apply_environment(function, env)
    with contextlib.redirect_stdout(io.StringIO()):
        handler = load_handler(function)
    context = LocalContext(function)
    generator = EventGenerator(seed=1, partitions=6, stores=20, skus=2000)

    def invoke(event: dict[str, Any]) -> Any:
        with contextlib.redirect_stdout(io.StringIO()):  # keep the EMF lines out of the table
            return handler(event, context)

    client: redis.Redis | RedisCluster = RedisCluster.from_url(url) if cluster else redis.Redis.from_url(url)
    cpu = ServerCpu(_ports(client))
    invoke(generator.batch(records))  # warm: client, script load
    rows = [
        measure("IngestFunction handler, new records", records, rounds, lambda: generator.batch(records), invoke, cpu)
    ]
    replay = generator.batch(records)
    invoke(replay)
    rows.append(measure("IngestFunction handler, replayed batch", records, rounds, lambda: replay, invoke, cpu))
    naive = naive_consumer(client)
    naive(generator.batch(records))  # warm: the cluster map, connections
    name = "naive ClusterPipeline, one command per record" if cluster else "naive pipeline, one command per record"
    rows.append(measure(name, records, rounds, lambda: generator.batch(records), naive, cpu))
    rows += pure_writes(client, generator, records)
    ceiling = redis_benchmark_ceiling(target.nodes[0].port if cluster else target.port, cluster)  # type: ignore[union-attr]
    if ceiling:
        rows.append(Row("redis-benchmark -P 100 SET (ceiling)", int(ceiling), 1.0))
    small = 100
    rows.append(
        measure(
            "IngestFunction handler, 100-record batch", small, rounds * 20, lambda: generator.batch(small), invoke, cpu
        )
    )
    target.stop() if cluster else target.remove()  # type: ignore[union-attr]
    return rows


def table(rows: list[Row]) -> str:
    baseline = next((r for r in rows if r.name.startswith("naive")), None)
    pure = next((r for r in rows if r.name.startswith("pure-write")), None)
    ceiling = next((r for r in rows if r.name.startswith("redis-benchmark")), None)
    lines = [
        "| path | records | median time | records/s | vs naive | vs pure-write | of the ceiling | server CPU/record |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in rows:
        ratio = f"{row.per_second / baseline.per_second:.2f}x" if baseline else "-"
        versus_pure = f"{row.per_second / pure.per_second:.2f}x" if pure else "-"
        fraction = f"{row.per_second / ceiling.per_second:.0%}" if ceiling else "-"
        cpu = f"{row.server_cpu_us:.2f} µs" if row.server_cpu_us is not None else "-"
        lines.append(
            f"| {row.name} | {row.records:,} | {row.seconds * 1000:.1f} ms | {row.per_second:,.0f} | {ratio} "
            f"| {versus_pure} | {fraction} | {cpu} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--cluster", action="store_true", help="against a local 3-master cluster")
    args = parser.parse_args()
    print(f"cpus={os.cpu_count()} records={args.records} rounds={args.rounds} cluster={args.cluster}")
    print(table(run(args.records, args.rounds, args.cluster)))


if __name__ == "__main__":
    main()
