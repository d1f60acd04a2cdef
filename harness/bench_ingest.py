"""Ingest throughput, measured side by side in one run (a benchmark, not a test).

    python -m harness.bench_ingest [--records 10000] [--rounds 5] [--cluster]

Rows:
- IngestFunction handler, in-process, exactly-once machinery on (new records each round);
- the same handler on a replayed batch (every record a duplicate);
- a naive consumer: decode, parse, one command per record in one redis-py pipeline, no idempotence;
- `redis-benchmark -P 100` SET, the server's own ceiling, when redis-benchmark is installed;
- a 100-record batch (the event source mapping's default batch size): per-invocation cost.
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

from devkit import servers
from devkit.generator import EventGenerator
from devkit.sam import LocalContext, apply_environment, describe, load_handler


@dataclass
class Row:
    name: str
    records: int
    seconds: float  # median over the rounds

    @property
    def per_second(self) -> float:
        return self.records / self.seconds


def median_time(rounds: int, prepare: Callable[[], Any], run: Callable[[Any], Any]) -> float:
    times = []
    for _ in range(rounds):
        argument = prepare()
        start = time.perf_counter()
        run(argument)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def naive_consumer(client: redis.Redis) -> Callable[[dict[str, Any]], None]:
    """What a hand-written consumer does: one command per record, pipelined, no idempotence."""

    def consume(event: dict[str, Any]) -> None:
        pipe = client.pipeline(transaction=False)
        for chunk in event["records"].values():
            for record in chunk:
                value = base64.b64decode(record["value"])
                document = json.loads(value)
                topic = record["topic"]
                if topic == "orders":
                    pipe.set(f"orders:{document['orderid']}", value)
                elif topic == "products":
                    pipe.set(f"products:{document['sku']}", value)
                elif document["type"] == "count":
                    pipe.zadd(f"inventory:{document['store']}", {f"sku:{document['sku']}": document["units"]})
                else:
                    delta = document["units"] if document["type"] == "shipment" else -document["units"]
                    pipe.zincrby(f"inventory:{document['store']}", delta, f"sku:{document['sku']}")
        pipe.execute()

    return consume


def redis_benchmark_ceiling(port: int, requests: int = 200_000) -> float | None:
    binary = shutil.which("redis-benchmark")
    if binary is None:
        return None
    output = subprocess.run(
        [binary, "-p", str(port), "-t", "set", "-n", str(requests), "-P", "100", "-q", "-r", "100000"],
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

    invoke(generator.batch(records))  # warm: client, script load
    rows = [
        Row(
            "IngestFunction handler, new records",
            records,
            median_time(rounds, lambda: generator.batch(records), invoke),
        )
    ]
    replay = generator.batch(records)
    invoke(replay)
    rows.append(Row("IngestFunction handler, replayed batch", records, median_time(rounds, lambda: replay, invoke)))
    if not cluster:
        naive = naive_consumer(redis.Redis.from_url(url))
        rows.append(
            Row(
                "naive pipeline, one command per record",
                records,
                median_time(rounds, lambda: generator.batch(records), naive),
            )
        )
        ceiling = redis_benchmark_ceiling(target.port)  # type: ignore[union-attr]
        if ceiling:
            rows.append(Row("redis-benchmark -P 100 SET (ceiling)", int(ceiling), 1.0))
    small = 100
    rows.append(
        Row(
            "IngestFunction handler, 100-record batch",
            small,
            median_time(rounds * 20, lambda: generator.batch(small), invoke),
        )
    )
    target.stop() if cluster else target.remove()  # type: ignore[union-attr]
    return rows


def table(rows: list[Row]) -> str:
    baseline = next((r for r in rows if r.name.startswith("naive")), None)
    lines = ["| path | records | median time | records/s | vs naive |", "| --- | ---: | ---: | ---: | ---: |"]
    for row in rows:
        ratio = f"{row.per_second / baseline.per_second:.2f}x" if baseline else "-"
        lines.append(
            f"| {row.name} | {row.records:,} | {row.seconds * 1000:.1f} ms | {row.per_second:,.0f} | {ratio} |"
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
