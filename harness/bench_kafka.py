"""Through Kafka: freshness and sustained throughput of the deployed path, run locally.

    python -m harness.bench_kafka [--records 50000] [--probes 100] [--window 0 --window 0.5]

- Freshness: while `make run`'s stack streams (embedded broker, the template's
  mappings into IngestFunction, the API server), probe orders are produced
  into Kafka one at a time; each probe's freshness is the arrival of its first
  200 from `GET /orders/{id}` minus the record's produce timestamp. Measured
  with the mappings' batching window at each `--window`.
- Rebuild (`--rebuild N`): the time `make rebuild` takes for all three topics
  holding N generated records, after the mappings applied them once.
- Throughput: `--records` generated records produced as fast as the producer
  goes into a broker whose mappings (IngestFunction) are already consuming:
  records/s from the first send to the last commit. The baseline, in the same
  run on the same records: a plain confluent-kafka consumer that decodes each
  record and sends one Redis command for it (no exactly-once), committing
  after each pipeline.
"""

from __future__ import annotations

import argparse
import http.client
import json
import sys
import time
import uuid
from typing import Any
from urllib.parse import urlsplit

import redis

from devkit import servers
from devkit.brokers import start_broker
from devkit.datagen import KafkaFeed, ensure_topics
from devkit.generator import TOPICS, EventGenerator
from devkit.localrun import LocalRun


def freshness(window: float, probes: int = 100, rate: float = 50.0) -> dict[str, Any]:
    run = LocalRun(port=0, rate=rate, orders=200, movements=200, window_seconds=window).start()
    try:
        assert run.feed is not None and run.server is not None
        address = urlsplit(run.url)
        connection = http.client.HTTPConnection(address.hostname or "127.0.0.1", address.port, timeout=5)
        signed_in = {"Authorization": f"Bearer {run.staff_token}"}  # orders need staff: they carry no owner
        for path in ("/orders/0", "/orders/1"):  # a 404 and a 200 first: a route's first request is cold start
            connection.request("GET", path, headers=signed_in)
            connection.getresponse().read()
        samples: list[float] = []
        for _ in range(probes):
            order = run.generator.order()
            assert order.key is not None
            produced_ms = int(time.time() * 1000)
            run.feed.produce([order.__class__(order.topic, order.key, order.value, timestamp=produced_ms)])
            run.feed.flush()
            path = f"/orders/{order.key.decode()}"
            deadline = time.monotonic() + 10
            while True:
                connection.request("GET", path, headers=signed_in)
                response = connection.getresponse()
                response.read()
                if response.status == 200:
                    samples.append(time.time() * 1000 - produced_ms)
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{path} never became visible")
            time.sleep(0.01)
        connection.close()
    finally:
        run.stop()
    ordered = sorted(samples)

    def at(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    slowest = sorted(range(len(samples)), key=samples.__getitem__)[-3:]
    return {
        "window": window,
        "probes": len(samples),
        "rate": rate,
        "p50_ms": at(0.5),
        "p99_ms": at(0.99),
        "slowest": [(i, round(samples[i], 1)) for i in slowest],
    }


def throughput(records: int) -> dict[str, Any]:
    broker = start_broker("embedded")
    valkey = servers.start_server()
    try:
        return {
            "records": records,
            "mappings": _through_mappings(broker.bootstrap, valkey, records),
            "naive": _through_naive_consumer(broker.bootstrap, valkey, records),
        }
    finally:
        broker.remove()
        valkey.remove()


def rebuild(records: int) -> dict[str, Any]:
    """Seconds `make rebuild` takes for every topic of `records` generated records, after the
    mappings applied them once (the same broker, the same Redis)."""
    from cachesync.config import Settings
    from cachesync.connection import get_client
    from devkit import ops

    broker = start_broker("embedded")
    valkey = servers.start_server()
    try:
        names = _topics(broker.bootstrap)
        mappings = _mappings(broker.bootstrap, valkey, names, "rebuild")
        feed = KafkaFeed({"bootstrap.servers": broker.bootstrap}, names)
        feed.produce(EventGenerator(seed=11, partitions=6).records(records))
        feed.flush(120)
        mappings.start()
        while not mappings.caught_up(feed.last_offsets):
            time.sleep(0.05)
        mappings.stop()
        ingest = mappings.functions["IngestFunction"]
        settings = Settings.from_env()
        client = get_client(settings)
        started = time.perf_counter()
        for poller in mappings.pollers:
            ops.rebuild(client, settings, poller.config, {"bootstrap.servers": broker.bootstrap}, ingest, say=_quiet)
        return {"records": records, "seconds": time.perf_counter() - started}
    finally:
        broker.remove()
        valkey.remove()


def _quiet(_: str) -> None:
    pass


def _topics(bootstrap: str) -> dict[str, str]:
    suffix = uuid.uuid4().hex[:6]
    names = {kind: f"{kind}-{suffix}" for kind in TOPICS}
    ensure_topics({"bootstrap.servers": bootstrap}, list(names.values()), partitions=6)
    return names


def _mappings(bootstrap: str, valkey: servers.ServerProcess, names: dict[str, str], group: str) -> Any:
    """The template's mappings of these topics, into IngestFunction on `valkey`, environment applied."""
    from devkit.esm.runner import LocalMappings

    parameters = {"OrdersTopic": names["orders"], "InventoryTopic": names["inventory"]}
    parameters |= {"ProductsTopic": names["products"], "KafkaConsumerGroupId": f"{group}-{names['orders']}"}
    mappings = LocalMappings(bootstrap=bootstrap, parameters={**parameters, "RedisUrl": valkey.url})
    quiet = {"POWERTOOLS_METRICS_DISABLED": "true", "POWERTOOLS_LOG_LEVEL": "ERROR"}
    mappings.apply_environment({"REDIS_URL": valkey.url, **quiet})
    return mappings


def _through_mappings(bootstrap: str, valkey: servers.ServerProcess, records: int) -> float:
    redis.Redis(port=valkey.port).flushall()
    names = _topics(bootstrap)
    mappings = _mappings(bootstrap, valkey, names, "bench")
    mappings.start()
    try:
        time.sleep(2)  # the groups have joined: time the records, not the join
        feed = KafkaFeed({"bootstrap.servers": bootstrap}, names)
        generated = EventGenerator(seed=9, partitions=6).records(records)
        started = time.perf_counter()
        feed.produce(generated)
        feed.flush(120)
        while True:
            if mappings.caught_up(feed.last_offsets):
                return records / (time.perf_counter() - started)
            if time.perf_counter() - started > 600:
                raise RuntimeError("the mappings did not catch up within 600 s")
            time.sleep(0.005)
    finally:
        mappings.stop()


def _through_naive_consumer(bootstrap: str, valkey: servers.ServerProcess, records: int) -> float:
    from confluent_kafka import Consumer

    client = redis.Redis(port=valkey.port)
    client.flushall()
    names = _topics(bootstrap)
    kinds = {name: kind for kind, name in names.items()}
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"naive-{names['orders']}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    consumer.subscribe(list(names.values()))
    try:
        deadline = time.monotonic() + 30
        while not consumer.assignment() and time.monotonic() < deadline:
            consumer.poll(0.1)
        feed = KafkaFeed({"bootstrap.servers": bootstrap}, names)
        generated = EventGenerator(seed=9, partitions=6).records(records)
        started = time.perf_counter()
        feed.produce(generated)
        feed.flush(120)
        applied = 0
        while applied < records:
            messages = consumer.consume(500, 1.0)
            pipe = client.pipeline(transaction=False)
            for message in messages:
                topic, value = message.topic(), message.value()
                if message.error() is None and topic is not None and value is not None:
                    _naive_command(pipe, kinds[topic], value)
                    applied += 1
            pipe.execute()
            if messages:
                consumer.commit(asynchronous=False)
            if time.perf_counter() - started > 600:
                raise RuntimeError("the naive consumer did not catch up within 600 s")
        return records / (time.perf_counter() - started)
    finally:
        consumer.close()


def _naive_command(pipe: Any, kind: str, raw: bytes) -> None:
    value = json.loads(raw)
    if kind == "orders":
        pipe.set(f"orders:{value['orderid']}", raw)
    elif kind == "products":
        pipe.set(f"products:{value['sku']}", raw)
    else:
        key, member = f"inventory:{value['store']}", f"sku:{value['sku']}"
        if value["type"] == "count":
            pipe.zadd(key, {member: value["units"]})
        elif value["type"] == "remove":
            pipe.zrem(key, member)
        else:
            pipe.zincrby(key, value["units"] if value["type"] == "shipment" else -value["units"], member)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--records", type=int, default=50_000)
    parser.add_argument("--probes", type=int, default=100)
    parser.add_argument("--window", type=float, action="append", help="batching windows to measure (0 and 0.5)")
    parser.add_argument("--rebuild", type=int, default=0, help="also time a rebuild of this many records")
    args = parser.parse_args(argv)
    result: dict[str, Any] = {
        "freshness": [freshness(w, args.probes) for w in (args.window or [0.0, 0.5])],
        "throughput": throughput(args.records),
    }
    if args.rebuild:
        result["rebuild"] = rebuild(args.rebuild)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
