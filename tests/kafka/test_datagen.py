"""The producer puts keys where Confluent's own (Java) producers would, and keys follow the data contract."""

from __future__ import annotations

import json

from devkit.datagen import KafkaFeed, ensure_topics
from devkit.generator import TOPICS, EventGenerator, murmur2, partition_for
from tests.kafka.conftest import Kafka


def test_murmur2_matches_kafkas_own_test_vectors() -> None:
    # org.apache.kafka.common.utils.UtilsTest#testMurmur2
    vectors = {b"21": -973932308, b"foobar": -790332482, b"a-little-bit-long-string": -985981536}
    vectors |= {
        b"a-little-bit-longer-string": -1486304829,
        b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": -58897971,
    }
    assert {key: murmur2(key) for key in vectors} == vectors


def test_records_land_where_the_java_partitioner_puts_their_keys_and_keys_follow_the_contract(kafka: Kafka) -> None:
    names = {kind: f"{kind}-{kafka.topic(1)}" for kind in TOPICS}
    settings = {"bootstrap.servers": kafka.bootstrap}
    assert sorted(ensure_topics(settings, list(names.values()), partitions=6)) == sorted(names.values())
    assert ensure_topics(settings, list(names.values()), partitions=6) == []  # already there
    feed = KafkaFeed(settings, names)
    feed.produce(EventGenerator(seed=3).records(300))
    feed.flush()
    seen = 0
    for kind, topic in names.items():
        for message in kafka.read_all(topic, sum(kafka.end_offsets(topic, 6).values())):
            seen += 1
            assert message.partition() == partition_for(message.key(), 6, 0)
            value = json.loads(message.value())
            expected = {"orders": str(value.get("orderid")), "products": value.get("sku")}
            expected["inventory"] = f"{value.get('store')}:{value.get('sku')}"
            assert message.key().decode() == expected[kind]
    assert seen == 300


def test_the_seed_and_the_stream_never_sell_stock_a_store_does_not_have() -> None:
    from devkit.datagen import seed_records

    generator = EventGenerator(seed=7, partitions=6)
    records, low = seed_records(generator, orders=100, movements=2000)
    records += generator.records(3000, ["inventory"])
    on_hand: dict[tuple[str, str], int] = {}
    for raw in records:
        if raw.topic != "inventory" or raw.value is None:
            continue
        event = json.loads(raw.value)
        where = (event["store"], event["sku"])
        if event["type"] in ("count", "remove"):
            on_hand[where] = event.get("units", 0)
        else:
            on_hand[where] = on_hand.get(where, 0) + (
                event["units"] if event["type"] == "shipment" else -event["units"]
            )
        assert on_hand[where] >= 0, (where, event)
    assert len(low) == 12
