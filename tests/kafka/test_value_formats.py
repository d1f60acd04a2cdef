"""Avro and Protobuf values through a real broker: the local mapping with a schema registry
(as Lambda applies SchemaRegistryConfig), and the whole path from producer to Redis, where
every document must arrive whole. Protobuf values are the golden bytes protoc wrote
(tests/fixtures)."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis

from devkit.datagen import KafkaFeed
from devkit.esm.mapping import SchemaRegistry
from devkit.esm.runner import LocalMappings
from devkit.generator import EventGenerator, RawRecord
from devkit.localrun import registry_parameters
from devkit.registry import SCHEMA_IDS, function_environment
from harness.model import model_state, redis_state
from tests.golden import golden_protobuf, protobuf_json
from tests.kafka.conftest import Kafka, Recorder, wait_until
from tests.kafka.test_esm import mapping, polling
from tests.kafka.test_pipeline import PARTITIONS, log_of, parameters, topic_environment, topics


@pytest.mark.parametrize("record_format", ["JSON", "SOURCE"])
def test_a_registry_mapping_delivers_metadata_and_sends_what_it_cannot_read_to_the_destination(
    kafka: Kafka, tmp_path: Path, record_format: str
) -> None:
    topic = kafka.topic(partitions=1)
    generator = EventGenerator(seed=1, partitions=1, value_format="avro")
    orders = [generator.order() for _ in range(3)]
    encoded = [o.value for o in orders]
    assert all(encoded)
    unknown = encoded[1][:1] + (4242).to_bytes(4, "big") + encoded[1][5:]  # type: ignore[index]
    kafka.produce(
        topic,
        [(b"1", encoded[0]), (b"2", unknown), (b"3", b'{"orderid": 3}'), (b"4", encoded[2]), (b"5", None)],
    )
    recorder = Recorder()
    config = mapping(
        kafka, topic, provisioned=True, on_failure=f"file://{tmp_path}",
        schema_registry=SchemaRegistry("https://registry.example", record_format, ("VALUE",)),
    )  # fmt: skip
    with polling(config, recorder) as esm:
        wait_until(lambda: esm.stats.committed.get(f"{topic}-0") == 5, what="the commit past every record")
    assert esm.stats.dead_lettered == 2
    delivered = recorder.records()
    assert [r["offset"] for r in delivered] == [0, 3, 4]
    first, fourth, tombstone = delivered
    metadata = {"dataFormat": "AVRO", "schemaId": str(SCHEMA_IDS[("orders", "avro")])}
    assert first["valueSchemaMetadata"] == fourth["valueSchemaMetadata"] == metadata
    assert tombstone["value"] is None and "valueSchemaMetadata" not in tombstone
    value = base64.b64decode(first["value"])
    if record_format == "JSON":
        assert json.loads(value)["orderid"] == 1 and json.loads(value)["address"]["city"]
    else:
        assert value == encoded[0][5:]  # type: ignore[index]  # the source bytes, without Confluent's header
    conditions = sorted(json.loads(p.read_text())["requestContext"]["condition"] for p in tmp_path.iterdir())
    assert conditions == ["DESERIALIZATION_ERROR", "SCHEMA_NOT_FOUND"]


def encoded_twins(value_format: str) -> tuple[list[RawRecord], list[RawRecord]]:
    """Records in `value_format` and the same records with JSON values: Protobuf the golden
    bytes protoc wrote, Avro the avro library's writer's (the generator's twins draw alike)."""
    if value_format == "protobuf":
        golden = golden_protobuf()
        return [g.as_protobuf() for g in golden], [g.as_json() for g in golden]
    encoded = EventGenerator(seed=21, partitions=PARTITIONS, stores=3, skus=30, value_format=value_format)
    plain = EventGenerator(seed=21, partitions=PARTITIONS, stores=3, skus=30)
    return encoded.records(600), plain.records(600)


@pytest.mark.parametrize(
    ("value_format", "registry"),
    [("avro", None), ("protobuf", None), ("avro", "JSON"), ("protobuf", "SOURCE")],
    ids=["avro", "protobuf", "avro-registry-json", "protobuf-registry-source"],
)
def test_the_whole_path_with_values_in_confluents_wire_format(
    kafka: Kafka, valkey: Any, local_mappings: Callable[..., LocalMappings], value_format: str, registry: str | None
) -> None:
    """Producer, the template's mappings (with the template's schema registry options, or
    none) and IngestFunction (decoding itself unless the mapping hands it JSON)."""
    names = topics(kafka)
    mappings = local_mappings(
        env={} if registry == "JSON" else function_environment(value_format),
        bootstrap=kafka.bootstrap,
        parameters={**parameters(names), "RedisUrl": valkey.url, **registry_parameters(registry)},
        overrides={"batch_size": 200},
    )
    assert [c.schema_registry is not None for c in mappings.configs] == [registry is not None] * 3
    encoded, as_json = encoded_twins(value_format)
    feed = KafkaFeed({"bootstrap.servers": kafka.bootstrap}, names)
    feed.produce(encoded)
    feed.flush()
    mappings.start()
    wait_until(lambda: mappings.caught_up(feed.last_offsets), what="the mappings to catch up")
    mappings.stop()
    # the reference: the topics as Kafka holds them, each value read as its JSON twin
    twin_of = {e.value: j.value for e, j in zip(encoded, as_json, strict=True)}
    log = log_of(kafka, names)
    assert len(log) == len(encoded)
    for record in log:
        record["value"] = base64.b64encode(twin_of[base64.b64decode(record["value"])] or b"").decode()
    expected = model_state(topic_environment(names), log)
    state = redis_state(redis.Redis.from_url(valkey.url))
    assert set(state) == set(expected)
    for key, value in expected.items():
        if isinstance(value, bytes):  # documents: the decoded record, as JSON, field for field
            wanted = json.loads(value)
            assert json.loads(state[key]) == (protobuf_json(wanted) if value_format == "protobuf" else wanted), key
        else:  # stock: exact
            assert state[key] == value, key
    assert not redis.Redis.from_url(valkey.url).exists("deadletter:ingest")
