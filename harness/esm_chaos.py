"""The local mapping's concurrency cases at random, through the real IngestFunction into a cache,
compared exactly with the reference model afterwards.

    python -m harness.esm_chaos --seconds 60 --redis cluster --timeout 0.2

For `--seconds`, generated events stream into a broker of its own while the template's three
mappings run with two pollers each, a short function Timeout, a handler that now and then
stalls before or after its writes (so invocations run past the Timeout, are abandoned and
retried while their writes still land), and every so often a rebalance or a poller's death
(so invocations of one partition overlap). Then the stream and the faults stop, the mappings
catch up, and the cache must equal the model of the whole log. Exit status 1 when it does
not, with the first keys that differ.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import redis
from redis.cluster import RedisCluster

from devkit import brokers, servers
from devkit.datagen import KafkaFeed, ensure_topics
from devkit.esm import payload
from devkit.esm.runner import LocalMappings
from devkit.generator import TOPICS, EventGenerator
from harness.model import model_state, redis_state

PARTITIONS = 3


class Stalls:
    """The handler hook: while faults are on, some calls wait before their writes, some after."""

    def __init__(self, rng: random.Random, timeout: float):
        self.rng, self.timeout = rng, timeout
        self.on = threading.Event()
        self.on.set()
        self.calls = self.stalled = 0
        self._lock = threading.Lock()

    def _pause(self, chance: float) -> None:
        with self._lock:
            stall = self.on.is_set() and self.rng.random() < chance
            length = self.rng.uniform(0, 2 * self.timeout)
            self.stalled += stall
        if stall:
            time.sleep(length)

    def __call__(self, call: Callable[[], Any], event: dict[str, Any]) -> Any:
        with self._lock:
            self.calls += 1
        self._pause(0.3)
        result = call()
        self._pause(0.2)
        return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--seconds", type=float, default=30.0, help="how long the stream and the faults last")
    parser.add_argument("--broker", choices=brokers.BROKER_KINDS, default="embedded")
    parser.add_argument("--redis", choices=("valkey", "redis7", "cluster"), default="valkey")
    parser.add_argument("--timeout", type=float, default=0.3, help="the function's Timeout, seconds")
    parser.add_argument("--pollers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="the function's environment, e.g. SCRIPT_BATCH_SIZE=10",
    )
    args = parser.parse_args(argv)
    rng = random.Random(args.seed)

    broker = brokers.start_broker(args.broker, timeout=180)
    cache: servers.ServerProcess | servers.LocalCluster
    if args.redis == "cluster":
        cache = servers.start_cluster(servers.valkey_binary())
    else:
        cache = servers.start_server(servers.redis_binary() if args.redis == "redis7" else servers.valkey_binary())
    try:
        return _run(args, rng, broker, cache)
    finally:
        cache.stop() if isinstance(cache, servers.LocalCluster) else cache.remove()
        broker.remove()


def _run(
    args: argparse.Namespace,
    rng: random.Random,
    broker: brokers.Broker,
    cache: servers.ServerProcess | servers.LocalCluster,
) -> int:
    from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

    suffix = uuid.uuid4().hex[:8]
    names = {kind: f"{kind}-{suffix}" for kind in TOPICS}
    ensure_topics({"bootstrap.servers": broker.bootstrap}, list(names.values()), PARTITIONS)
    time.sleep(1.0)  # the new topics' leaders

    stalls = Stalls(rng, args.timeout)
    mappings = LocalMappings(
        bootstrap=broker.bootstrap,
        parameters={
            "OrdersTopic": names["orders"],
            "InventoryTopic": names["inventory"],
            "ProductsTopic": names["products"],
            "KafkaConsumerGroupId": f"chaos-{suffix}",
            "RedisUrl": cache.url,
            "RedisCluster": str(args.redis == "cluster").lower(),
        },
        around_handler=stalls,
        pollers=args.pollers,
        function_timeout=args.timeout,
        backoff=(0.05, 0.5),
    )
    settings_given = dict(item.split("=", 1) for item in args.set if "=" in item)
    mappings.apply_environment(
        {"POWERTOOLS_METRICS_DISABLED": "true", "POWERTOOLS_LOG_LEVEL": "CRITICAL", **settings_given}
    )
    mappings.start()
    feed = KafkaFeed({"bootstrap.servers": broker.bootstrap}, names)
    generator = EventGenerator(seed=args.seed, partitions=PARTITIONS, stores=3, skus=40)
    faults: list[str] = []
    end = time.monotonic() + args.seconds
    while time.monotonic() < end:
        feed.produce(generator.records(40))
        feed.flush()
        if rng.random() < 0.25:
            mapping = rng.choice(mappings.pollers)
            if rng.random() < 0.5:
                mapping.rebalance()
                faults.append("rebalance")
            else:
                mapping.kill_poller(rng.randrange(mapping.poller_count))
                faults.append("poller died")
        time.sleep(0.2)
    stalls.on.clear()

    reader = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": f"chaos-reader-{suffix}"})
    parts = [TopicPartition(t, p) for t in names.values() for p in range(PARTITIONS)]
    ends = {f"{tp.topic}-{tp.partition}": reader.get_watermark_offsets(tp, timeout=10)[1] for tp in parts}
    deadline = time.monotonic() + 300
    while not all(mappings.committed().get(k, 0) >= e for k, e in ends.items()):
        if time.monotonic() > deadline or mappings.failed():
            print(f"the mappings did not catch up: {mappings.failed() or mappings.committed()}", file=sys.stderr)
            return 1
        time.sleep(0.2)
    mappings.stop()
    if not mappings.wait_idle(300):
        print("invocations still running after 300 s", file=sys.stderr)
        return 1

    log: list[dict[str, Any]] = []
    reader.assign([TopicPartition(tp.topic, tp.partition, OFFSET_BEGINNING) for tp in parts])
    while len(log) < sum(ends.values()):
        log += [payload.from_message(m).body for m in reader.consume(500, 1.0) if m.error() is None]
    reader.close()
    client = RedisCluster.from_url(cache.url) if args.redis == "cluster" else redis.Redis.from_url(cache.url)
    # the model reads the topics' names from the functions' variables, as they do
    state = redis_state(client)
    model = model_state({f"TOPIC_{kind.upper()}": name for kind, name in names.items()}, log)
    differ = sorted(k for k in state.keys() | model.keys() if state.get(k) != model.get(k))

    counted = ("invocations", "timeouts", "abandoned", "overlaps", "rebalances", "function_errors")
    summary = {
        "broker": args.broker,
        "redis": args.redis,
        "seed": args.seed,
        "environment": settings_given,
        "records": len(log),
        "calls": stalls.calls,
        "stalled": stalls.stalled,
        "faults": {name: faults.count(name) for name in sorted(set(faults))},
        "mappings": {m.config.logical_id: {c: getattr(m.stats, c) for c in counted} for m in mappings.pollers},
        "exact": not differ,
    }
    print(json.dumps(summary, indent=1))
    for key in differ[:10]:
        print(f"{key}: cache {state.get(key)!r}, model {model.get(key)!r}", file=sys.stderr)
    return 0 if not differ else 1


if __name__ == "__main__":
    os.environ.setdefault("POWERTOOLS_METRICS_DISABLED", "true")
    sys.exit(main())
