"""Generated events into Kafka, like Confluent's Datagen source connector (ORDERS quickstart).

    python -m devkit.datagen --bootstrap 127.0.0.1:9092 --topics orders --max-interval 500
    python -m devkit.datagen --bootstrap 127.0.0.1:9092 --seed-data     # what `make run` starts with

Record keys follow the data contract, so that one Redis key's updates stay in
one partition: orders by `orderid`, products by `sku`, inventory by
`<store>:<sku>`. Keys are partitioned with Java's murmur2, as Confluent's own
producers do (librdkafka's default is CRC32). Like Datagen's `max.interval`,
`--max-interval` waits a random time up to that many milliseconds between
records.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any

from devkit.generator import TOPICS, EventGenerator, RawRecord
from devkit.registry import VALUE_FORMATS

LOW_STOCK_SKUS = 12  # store1 SKUs seeded below 10 units, so ?below=10 has something to show
SEED_PARTITIONS = 6  # as the seed's `orders` topic


def ensure_topics(settings: dict[str, Any], topics: Sequence[str], partitions: int = SEED_PARTITIONS) -> list[str]:
    """Creates the topics that do not exist yet; returns those it created."""
    from confluent_kafka import KafkaError, KafkaException
    from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

    admin = AdminClient(settings)
    existing = set(admin.list_topics(timeout=10).topics)
    missing = [t for t in topics if t not in existing]
    if missing:
        for future in admin.create_topics([NewTopic(t, partitions, 1) for t in missing]).values():
            try:
                future.result(30)
            except KafkaException as error:  # created meanwhile by another client: it exists, as asked
                if error.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                    raise
    return missing


class KafkaFeed:
    """Produces generated records into Kafka and remembers, per partition, the last offset written."""

    def __init__(self, settings: dict[str, Any], topic_names: dict[str, str] | None = None):
        from confluent_kafka import Producer

        self.topic_names = {t: t for t in TOPICS} | (topic_names or {})
        self._producer = Producer(
            {**settings, "partitioner": "murmur2_random", "linger.ms": 5, "acks": "all", "enable.idempotence": True}
        )
        self.last_offsets: dict[tuple[str, int], int] = {}
        self.produced = 0
        self.errors: list[str] = []
        self._lock = threading.Lock()
        self._closed = False

    def produce(self, records: Sequence[RawRecord]) -> None:
        for raw in records:
            topic = self.topic_names.get(raw.topic, raw.topic)
            extra: dict[str, Any] = {"timestamp": raw.timestamp} if raw.timestamp is not None else {}
            while True:
                try:
                    self._producer.produce(
                        topic,
                        key=raw.key,
                        value=raw.value,
                        headers=list(raw.headers),
                        on_delivery=self._delivered,
                        **extra,
                    )
                    break
                except BufferError:  # the local queue is full: let it drain
                    if self._closed:
                        raise RuntimeError("the feed is closed") from None
                    self._producer.poll(0.1)
        self._producer.poll(0)

    def flush(self, timeout: float = 30.0) -> None:
        if self._producer.flush(timeout):
            raise RuntimeError(f"Kafka did not take every record within {timeout:g} s")
        if self.errors:
            raise RuntimeError(f"Kafka refused records: {self.errors[0]}")

    def close(self, timeout: float = 5.0) -> None:
        """Delivers what is queued (for up to `timeout`), drops the rest and disconnects: before the
        broker stops, or its client would keep reconnecting and logging each refusal. Once."""
        if self._closed:
            return
        self._closed = True
        self._producer.flush(timeout)
        self._producer.purge()
        self._producer.flush(0)  # serves the purged records' callbacks
        self._producer.close()

    def _delivered(self, error: Any, message: Any) -> None:
        with self._lock:
            if error is not None:
                self.errors.append(error.str())
                return
            self.produced += 1
            key = (message.topic(), message.partition())
            self.last_offsets[key] = max(self.last_offsets.get(key, -1), message.offset())


def seed_records(generator: EventGenerator, orders: int, movements: int) -> tuple[list[RawRecord], list[str]]:
    """The local run's starting data: every product, a stock take of every SKU in every store,
    orders, stock movements, and a dozen SKUs left below 10 units in store1 (returned)."""
    g = generator

    def counted(store: str, sku: str, units: int) -> RawRecord:
        g.stock[(store, sku)] = units  # the generator's running count: later purchases take no more
        return stock_take(store, sku, units, g)

    records: list[RawRecord] = [g.product(sku) for sku in g.skus]
    records += [counted(store, sku, g.random.randint(20, 500)) for store in g.stores for sku in g.skus]
    records += [g.order() for _ in range(orders)]
    records += [g.inventory() for _ in range(movements)]
    # last, so the movements above cannot lift it back up
    low_stock = g.random.sample(g.skus, LOW_STOCK_SKUS)
    records += [counted("store1", sku, g.random.randint(0, 9)) for sku in low_stock]
    return records, low_stock


def stock_take(store: str, sku: str, units: int, generator: EventGenerator | None = None) -> RawRecord:
    """A stock take, encoded as the generator's values are (JSON without one)."""
    value = {"type": "count", "store": store, "sku": sku, "units": units, "eventtime": int(time.time() * 1000)}
    if generator is not None:
        return RawRecord("inventory", f"{store}:{sku}".encode(), generator.encode("inventory", value))
    encoded = json.dumps(value, separators=(",", ":")).encode()
    return RawRecord("inventory", f"{store}:{sku}".encode(), encoded)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Produce generated orders, inventory and product events into Kafka.")
    parser.add_argument("--bootstrap", default=os.environ.get("KAFKA_BOOTSTRAP"), help="host:port")
    parser.add_argument("--topics", default="orders", help="comma-separated: orders,inventory,products")
    parser.add_argument("--max-interval", type=float, default=500, help="most ms between records (Datagen's)")
    parser.add_argument("--count", type=int, default=0, help="records to produce (0: until Ctrl-C)")
    parser.add_argument("--seed-data", action="store_true", help="produce make run's starting data and stop")
    parser.add_argument("--seed", type=int, default=7, help="random seed")
    parser.add_argument(
        "--value-format",
        choices=VALUE_FORMATS,
        default="json",
        help="JSON, or Avro / Protobuf in Confluent's wire format (the local registry's schema ids)",
    )
    parser.add_argument(
        "--create-topics", action="store_true", help=f"create missing topics ({SEED_PARTITIONS} partitions)"
    )
    args = parser.parse_args(argv)
    if not args.bootstrap:
        parser.error("give --bootstrap host:port or set KAFKA_BOOTSTRAP")
    topics = [t.strip() for t in args.topics.split(",") if t.strip()]
    if set(topics) - set(TOPICS):
        parser.error(f"unknown topics {sorted(set(topics) - set(TOPICS))}; known: {', '.join(TOPICS)}")
    settings = {"bootstrap.servers": args.bootstrap}
    if args.create_topics or args.seed_data:
        ensure_topics(settings, TOPICS if args.seed_data else topics)
    generator = EventGenerator(seed=args.seed, partitions=SEED_PARTITIONS, value_format=args.value_format)
    feed = KafkaFeed(settings)
    if args.seed_data:
        records, _ = seed_records(generator, orders=2000, movements=2000)
        feed.produce(records)
        feed.flush()
        print(f"produced {feed.produced} records into {args.bootstrap}", file=sys.stderr)
        return 0
    sent = 0
    try:
        while not args.count or sent < args.count:
            feed.produce(generator.records(1, topics))
            sent += 1
            time.sleep(generator.random.uniform(0, args.max_interval) / 1000)
    except KeyboardInterrupt:
        pass
    feed.flush()
    print(f"produced {feed.produced} records into {args.bootstrap}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
