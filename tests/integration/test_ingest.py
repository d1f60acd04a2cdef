"""The ingest path against real servers: Valkey 8, Redis 7 and a 3-master cluster."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest
from redis.crc import key_slot

from cachesync.ingest import Ingestor, build_ingestor
from devkit.generator import EventGenerator, RawRecord, decode_record
from harness.model import model_state, redis_state

ROOT = Path(__file__).resolve().parents[2]
SEED_ORDER = (
    b'{"ordertime": 1497014222380, "orderid": 18, "itemid": "Item_184", '
    b'"address": {"city": "Mountain View", "state": "CA", "zipcode": 94041}}'
)


def sample(name: str) -> dict[str, Any]:
    event: dict[str, Any] = json.loads((ROOT / "events" / name).read_text())
    return event


def records_of(event: dict[str, Any]) -> list[dict[str, Any]]:
    return [r for chunk in event["records"].values() for r in chunk]


def ingestor(target: Any, **env: str) -> Ingestor:
    return build_ingestor(target.settings(**env))


def test_get_orders_18_returns_the_order_json_exactly(target: Any) -> None:
    outcome = ingestor(target).process(sample("kafka-orders.json"))
    assert (outcome.applied, outcome.duplicates, outcome.dead_lettered) == (9, 0, 0)
    assert target.client().get("orders:18") == SEED_ORDER


def test_every_sample_matches_the_reference_model(target: Any) -> None:
    ingest = ingestor(target)
    seen: list[dict[str, Any]] = []
    for name in ("kafka-orders.json", "kafka-inventory.json", "kafka-products.json", "kafka-mixed.json"):
        event = sample(name)
        ingest.process(event)
        seen += records_of(event)
    assert redis_state(target.client()) == model_state({}, seen)
    # the design's own numbers: ZADD 710 then ZINCRBY -6, then a shipment and a purchase in the mixed sample
    assert target.client().zscore("inventory:store1", "sku:0123456789") is not None


def test_a_replayed_batch_changes_nothing_in_whole_or_in_part(target: Any) -> None:
    generator = EventGenerator(seed=3, partitions=4, stores=2, skus=5)
    event = generator.batch(400)
    ingest = ingestor(target, SCRIPT_BATCH_SIZE="16")
    first = ingest.process(event)
    assert first.applied == 400 and first.duplicates == 0
    before = redis_state(target.client())

    again = ingest.process(event)
    assert (again.applied, again.duplicates) == (0, 400)

    # half of one partition, replayed together with new records on the same keys
    partition = next(iter(event["records"]))
    part = {"eventSource": "SelfManagedKafka", "records": {partition: event["records"][partition][::2]}}
    assert ingest.process(part).applied == 0
    assert redis_state(target.client()) == before

    later = generator.batch(100)
    overlap = {name: event["records"].get(name, []) + chunk for name, chunk in later["records"].items()}
    outcome = ingest.process({"eventSource": "SelfManagedKafka", "records": overlap})
    assert outcome.applied == 100
    assert redis_state(target.client()) == model_state({}, records_of(event) + records_of(later))


def test_inventory_counts_and_movements(target: Any) -> None:
    g = EventGenerator(seed=4, partitions=2)
    event = g.event(
        [
            g.inventory("count", "store1", "0123456789"),
            g.inventory("purchase", "store1", "0123456789"),
            g.inventory("shipment", "store1", "0000000001"),
        ]
    )
    units = [json.loads(decode_record(r)[1] or b"") for r in records_of(event)]
    ingest = ingestor(target)
    ingest.process(event)
    ingest.process(event)  # at-least-once delivery: the same batch again
    expected_count = next(u["units"] for u in units if u["type"] == "count")
    purchase = next(u["units"] for u in units if u["type"] == "purchase")
    assert target.client().zscore("inventory:store1", "sku:0123456789") == expected_count - purchase


def test_a_write_then_a_tombstone_in_one_batch_leaves_no_key(target: Any) -> None:
    g = EventGenerator(seed=5, partitions=3)
    order = g.order()
    key = f"orders:{(order.key or b'').decode()}"
    event = g.event([order, RawRecord("orders", order.key, None)])
    ingest = ingestor(target)
    ingest.process(event)
    assert target.client().exists(key) == 0
    # a replay of the write alone cannot resurrect the deleted key
    write_only = {"eventSource": "SelfManagedKafka", "records": {n: c[:1] for n, c in event["records"].items()}}
    assert ingest.process(write_only).applied == 0
    assert target.client().exists(key) == 0


def test_topic_ttl_applies_to_the_keys_it_writes(target: Any) -> None:
    ingestor(target, ORDERS_TTL_SECONDS="120", INVENTORY_TTL_SECONDS="60").process(sample("kafka-orders.json"))
    ingestor(target, ORDERS_TTL_SECONDS="120", INVENTORY_TTL_SECONDS="60").process(sample("kafka-inventory.json"))
    client = target.client()
    assert 100 < client.ttl("orders:18") <= 120
    assert 40 < client.ttl("inventory:store1") <= 60


def test_ttl_applies_to_each_write_when_a_run_starts_with_a_tombstone(target: Any) -> None:
    """The TTL of a partition's run used to come from its first mutation: a leading tombstone dropped it."""
    g = EventGenerator(seed=14, partitions=1)
    first, second = g.order(), g.order()
    event = g.event([RawRecord("orders", first.key, None), second, first])  # one partition, tombstone first
    outcome = ingestor(target, ORDERS_TTL_SECONDS="300").process(event)
    assert (outcome.applied, outcome.dead_lettered) == (3, 0)
    client = target.client()
    for raw in (first, second):
        assert 200 < client.ttl(f"orders:{(raw.key or b'').decode()}") <= 300
    # inventory too: a delta after a remove in the same run gets the topic's TTL
    stock = g.event([g.inventory("remove", "store9", "0000000001"), g.inventory("shipment", "store9", "0000000002")])
    ingestor(target, INVENTORY_TTL_SECONDS="60").process(stock)
    assert 40 < client.ttl("inventory:store9") <= 60


@pytest.mark.parametrize("topic", ["orders", "inventory"])
def test_each_key_keeps_its_position_per_partition(target: Any, topic: str) -> None:
    """The fence's data: for every key written, a field `<key>#<partition>` holding the offset of
    the last record of that partition applied to it; on a cluster in a hash of the key's own hash
    slot, on a standalone server in the one hash `cachesync:offsets:{positions}`."""
    g = EventGenerator(seed=8, partitions=4, stores=5)
    event = g.batch(300, [topic])
    ingestor(target).process(event)
    expected: dict[tuple[str, int], int] = {}
    for record in records_of(event):
        value = json.loads(base64.b64decode(record["value"]))
        key = f"orders:{value['orderid']}" if topic == "orders" else f"inventory:{value['store']}"
        expected[(key, record["partition"])] = max(expected.get((key, record["partition"]), -1), record["offset"])
    client = target.client()
    found: dict[tuple[str, int], int] = {}
    for name in client.scan_iter(match="cachesync:offsets:*", count=1000):
        for field, value in client.hgetall(name).items():
            key, _, partition = field.decode().rpartition("#")
            if target.cluster:
                assert key_slot(name) == key_slot(key.encode()), (name, key)
            else:
                assert name == b"cachesync:offsets:{positions}", (name, key)
            found[(key, int(partition))] = int(value)
    assert found == expected


def test_a_write_redis_refuses_is_dead_lettered_and_the_rest_applied(target: Any) -> None:
    client = target.client()
    client.set("inventory:store1", "not a sorted set")
    outcome = ingestor(target).process(sample("kafka-inventory.json"))
    assert outcome.dead_lettered > 0 and outcome.applied > 0
    letters = client.xrange("deadletter:ingest")
    assert len(letters) == outcome.dead_lettered
    assert all(b"WRONGTYPE" in fields[b"reason"] for _, fields in letters)
    assert client.exists("inventory:store2") == 1


def test_poison_records_go_to_a_capped_stream_with_the_raw_record(target: Any) -> None:
    event = sample("kafka-mixed.json")
    outcome = ingestor(target).process(event)
    assert outcome.dead_lettered == 3
    letters = target.client().xrange("deadletter:ingest")
    reasons = [fields[b"reason"].decode() for _, fields in letters]
    assert any("not valid JSON" in r for r in reasons)
    assert any("'orderid' is missing" in r for r in reasons)
    assert any("'sku'" in r for r in reasons)
    raw = {(r["topic"], r["partition"], r["offset"]): r for r in records_of(event)}
    for _, fields in letters:
        record = json.loads(fields[b"record"])
        original = raw[(record["topic"], record["partition"], record["offset"])]
        assert (record["key"], record["value"], record["headers"]) == (
            original.get("key"),
            original["value"],
            original["headers"],
        )
    # good records in the same batch were applied, the tombstone included
    assert target.client().exists("orders:1002") == 1 and target.client().exists("orders:1001") == 0


@pytest.mark.parametrize("batch_size", ["1", "1000", "1997"])
def test_many_keys_in_one_slot_group_and_across_calls(target: Any, batch_size: str) -> None:
    g = EventGenerator(seed=6, partitions=5, stores=3, skus=50)
    event = g.batch(1500)
    ingestor(target, SCRIPT_BATCH_SIZE=batch_size).process(event)
    assert redis_state(target.client()) == model_state({}, records_of(event))


def test_the_writer_keeps_order_when_partitions_interleave(target: Any) -> None:
    """Pending mutations whose partitions alternate still apply in order, and a refused
    write is reported at its own position."""
    from cachesync.projections import Mutation
    from cachesync.writer import BatchWriter

    client = target.client()
    client.set("inventory:broken", "a string, not a sorted set")
    pending = [
        (Mutation("orders:1", "S", argument=b'{"v":1}'), "orders", 0, 0),
        (Mutation("inventory:s1", "Z", "sku:a", "5"), "inventory", 1, 0),
        (Mutation("orders:1", "S", argument=b'{"v":2}'), "orders", 0, 1),
        (Mutation("inventory:broken", "I", "sku:a", "1"), "inventory", 1, 1),
        (Mutation("inventory:s1", "I", "sku:a", "-2"), "inventory", 1, 2),
        (Mutation("orders:1", "D"), "orders", 0, 2),
        (Mutation("orders:1", "S", argument=b'{"v":3}'), "orders", 0, 3),
    ]
    writer = BatchWriter(client, script_batch_size=4)
    result = writer.apply(pending)
    assert (result.applied, result.skipped) == (6, 0)
    assert [index for index, _ in result.refused] == [3]
    assert "WRONGTYPE" in result.refused[0][1]
    assert client.get("orders:1") == b'{"v":3}'
    assert client.zscore("inventory:s1", "sku:a") == 3.0
    again = writer.apply(pending)
    assert (again.applied, again.skipped, again.refused) == (0, 7, [])


def test_idle_connections_dropped_between_batches_are_replaced(target: Any) -> None:
    """Redis (or a NAT) closed the pooled connections while the function was idle."""
    import redis as redis_py

    generator = EventGenerator(seed=12, partitions=3)
    ingest = ingestor(target)
    first = generator.batch(200)
    ingest.process(first)
    servers_ = target.client().get_nodes() if target.cluster else [None]
    for node in servers_:
        admin = redis_py.Redis(host=node.host, port=node.port) if node else redis_py.Redis.from_url(target.url)
        admin.client_kill_filter(_type="normal", skipme=True)
    second = generator.batch(200)
    outcome = ingest.process(second)
    assert outcome.applied == 200
    assert redis_state(target.client()) == model_state({}, records_of(first) + records_of(second))


def test_a_batch_from_another_kafka_cluster_is_refused_not_skipped(target: Any) -> None:
    from cachesync.maintenance import SourceChanged

    g = EventGenerator(seed=12, partitions=2)
    event = g.batch(20, ["orders"])
    assert ingestor(target).process(event).applied == 20
    elsewhere = {**g.batch(20, ["orders"]), "bootstrapServers": "pkc-other.eu-west-1.aws.confluent.cloud:9092"}
    with pytest.raises(SourceChanged, match=r"was applied from Kafka at .*; this batch comes from pkc-other"):
        ingestor(target).process(elsewhere)
    # the same cluster named in another order is the same source
    servers = ",".join(reversed(event["bootstrapServers"].split(","))) + ","
    assert ingestor(target).process({**g.batch(5, ["orders"]), "bootstrapServers": servers}).applied == 5
