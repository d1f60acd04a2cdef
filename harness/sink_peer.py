"""A plain at-least-once Redis sink, one process: the peer of `make bench-connect` where the Kafka
Connect Redis sink's source is absent (harness.connect_peer).

    python -m harness.sink_peer --bootstrap 127.0.0.1:9092 --redis redis://127.0.0.1:6379/0 \\
        --group peer --topic orders=orders --topic inventory=inventory --topic products=products

What a Kafka Connect Redis sink task does, without Connect: consume a batch,
write it to Redis in one pipeline, then commit the batch's offsets (after the
write, synchronously: the most a sink can do for at-least-once). With
`--commit-interval N` it commits at most every N seconds instead, as Connect
commits a sink's offsets every `offset.flush.interval.ms` (60 s by default),
and once more when stopped. Documents
are `SET <prefix>:<id> <value>` (a tombstone `DEL`), which a replay rewrites
to the same value. Stock events are the Datagen inventory contract's deltas
(`ZINCRBY`, `ZADD` for a stock take, `ZREM`), which no Redis sink connector
offers; a replay after a crash between write and commit applies them again.
SIGTERM stops it after the batch in hand; SIGKILL is the crash.
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from typing import Any

import redis

from harness.bench_kafka import _naive_command

BATCH = 500  # records per consume, as the local mappings' default batch size


def run(bootstrap: str, redis_url: str, group: str, topics: dict[str, str], commit_interval: float = 0.0) -> int:
    """`topics`: topic name -> its kind (orders, inventory, products)."""
    from confluent_kafka import Consumer

    stopping = False

    def stop(*_: Any) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    client = redis.Redis.from_url(redis_url)
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": group,
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            # as the local mappings: static membership, so a restarted sink takes its partitions
            # back at once instead of waiting for the killed one's session to time out
            "group.instance.id": f"{group}-sink",
            "session.timeout.ms": 10_000,
            "heartbeat.interval.ms": 1_000,
        }
    )
    consumer.subscribe(list(topics))
    committed_at, uncommitted = time.monotonic(), False
    try:
        while not stopping:
            written = _write_batch(consumer, client, topics)
            uncommitted = uncommitted or written
            if uncommitted and time.monotonic() - committed_at >= commit_interval:
                consumer.commit(asynchronous=False)
                committed_at, uncommitted = time.monotonic(), False
        if uncommitted:  # a clean stop commits what was written, as Connect does
            consumer.commit(asynchronous=False)
    finally:
        consumer.close()
    return 0


def _write_batch(consumer: Any, client: redis.Redis, topics: dict[str, str]) -> bool:
    """What has arrived, up to a batch, as soon as anything has (as a sink task's poll returns),
    written in one pipeline; False when nothing came."""
    first = consumer.poll(0.1)
    if first is None:
        return False
    messages = [m for m in [first, *consumer.consume(BATCH - 1, 0)] if m.error() is None]
    if not messages:
        return False
    pipe = client.pipeline(transaction=False)
    for message in messages:
        topic, key, value = message.topic(), message.key(), message.value()
        kind = topics[str(topic)]
        if value is None:
            if kind != "inventory" and key is not None:
                pipe.delete(f"{kind}:{key.decode()}")
        else:
            _naive_command(pipe, kind, value)
    pipe.execute()
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="A plain at-least-once Redis sink (commit after write).")
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--redis", required=True, help="redis://host:port/0")
    parser.add_argument("--group", required=True)
    parser.add_argument("--topic", action="append", required=True, metavar="KIND=NAME", help="e.g. orders=orders")
    parser.add_argument("--commit-interval", type=float, default=0.0, help="seconds between commits (0: each batch)")
    args = parser.parse_args(argv)
    topics: dict[str, str] = {}
    for pair in args.topic:
        kind, _, name = pair.partition("=")
        if kind not in ("orders", "inventory", "products") or not name:
            parser.error(f"--topic {pair!r}: want orders=NAME, inventory=NAME or products=NAME")
        topics[name] = kind
    return run(args.bootstrap, args.redis, args.group, topics, args.commit_interval)


if __name__ == "__main__":
    sys.exit(main())
