"""Avro and Protobuf values through the ingest path, against a real Valkey.

Each format is checked against the same records produced as JSON (the reference
model reads the JSON twin, never the code under test): straight from a producer
in Confluent's wire format or plain, and as a mapping with a schema registry
delivers them (EventRecordFormat SOURCE and JSON). Protobuf values are the golden
bytes protoc wrote (tests/fixtures), never encoded here with the function's own
message classes; Avro values are the avro library's writer's.
"""

from __future__ import annotations

import base64
import copy
import json
from typing import Any

import pytest

from cachesync.config import ConfigError, Settings
from cachesync.ingest import build_ingestor
from devkit.esm import registry as esm_registry
from devkit.esm.mapping import SchemaRegistry
from devkit.generator import EventGenerator, RawRecord
from devkit.registry import SCHEMA_FILES, SCHEMA_IDS, ValueEncoder, function_environment
from harness.model import model_state, redis_state
from tests.golden import golden_protobuf, protobuf_json

AVRO_RECORDS = 400


def records_of(event: dict[str, Any]) -> list[dict[str, Any]]:
    return [r for chunk in event["records"].values() for r in chunk]


def twins(value_format: str, confluent: bool = True) -> tuple[dict[str, Any], dict[str, Any], int]:
    """The same batch twice, JSON values and values in `value_format`, and its size: Protobuf
    the golden records, Avro a generated batch."""
    if value_format == "protobuf":
        golden = golden_protobuf()
        as_json = EventGenerator(partitions=3).event([g.as_json() for g in golden])
        encoded = EventGenerator(partitions=3).event([g.as_protobuf(confluent) for g in golden])
        return as_json, encoded, len(golden)
    as_json = EventGenerator(seed=5, partitions=3, stores=3, skus=20).batch(AVRO_RECORDS)
    generator = EventGenerator(seed=5, partitions=3, stores=3, skus=20, value_format=value_format, confluent=confluent)
    return as_json, generator.batch(AVRO_RECORDS), AVRO_RECORDS


def expected_state(json_event: dict[str, Any], value_format: str) -> dict[str, Any]:
    state = model_state({}, records_of(json_event))
    if value_format != "protobuf":
        return state
    return {
        key: json.dumps(protobuf_json(json.loads(value)), separators=(",", ":")).encode()
        if isinstance(value, bytes)
        else value
        for key, value in state.items()
    }


def comparable(state: dict[str, Any]) -> dict[str, Any]:
    # documents as parsed JSON: the decoded value is re-encoded, so spacing may differ from a producer's
    return {k: json.loads(v) if isinstance(v, bytes) else v for k, v in state.items()}


def letters(valkey: Any) -> list[dict[str, Any]]:
    return [
        {k.decode(): v.decode() for k, v in fields.items()} for _, fields in valkey.client().xrange("deadletter:ingest")
    ]


@pytest.mark.parametrize("value_format", ["avro", "protobuf"])
@pytest.mark.parametrize("confluent", [True, False], ids=["confluent", "plain"])
def test_values_apply_as_their_json_twins_would(valkey: Any, value_format: str, confluent: bool) -> None:
    as_json, encoded, count = twins(value_format, confluent)
    wire = "confluent" if confluent else "plain"
    env = function_environment(value_format, wire)
    if not confluent:  # plain bytes carry no schema id: one schema per topic, for any record
        env |= {name: value.split("=", 1)[1] for name, value in env.items() if name.endswith("_VALUE_SCHEMA")}
    outcome = build_ingestor(valkey.settings(**env)).process(encoded)
    assert (outcome.applied, outcome.dead_lettered) == (count, 0), outcome.reasons
    assert comparable(redis_state(valkey.client())) == comparable(expected_state(as_json, value_format))
    orders = valkey.client().mget(valkey.client().keys("orders:*"))
    assert orders and all(v.startswith(b"{") for v in orders)  # stored as JSON, not as the bytes that came


@pytest.mark.parametrize("value_format", ["avro", "protobuf"])
@pytest.mark.parametrize("record_format", ["SOURCE", "JSON"])
def test_a_registry_mappings_records_apply_in_both_record_formats(
    valkey: Any, value_format: str, record_format: str
) -> None:
    as_json, encoded, count = twins(value_format)
    delivered = copy.deepcopy(encoded)
    registry = SchemaRegistry("https://registry.example", record_format, ("VALUE",))
    for record in records_of(delivered):
        assert esm_registry.apply(registry, record) is None
        assert record["valueSchemaMetadata"]["dataFormat"] == value_format.upper()
    # SOURCE leaves the decoding to the function; JSON hands it JSON, which it reads as any JSON value
    env = function_environment(value_format) if record_format == "SOURCE" else {}
    outcome = build_ingestor(valkey.settings(**env)).process(delivered)
    assert (outcome.applied, outcome.dead_lettered) == (count, 0), outcome.reasons
    assert comparable(redis_state(valkey.client())) == comparable(expected_state(as_json, value_format))


@pytest.mark.parametrize("value_format", ["avro", "protobuf"])
def test_undecodable_values_are_dead_lettered_with_lambdas_reasons_and_the_rest_applied(
    valkey: Any, value_format: str
) -> None:
    generator = EventGenerator(seed=8, partitions=2, value_format=value_format)
    if value_format == "protobuf":
        golden = golden_protobuf()
        good = [g.as_protobuf() for g in golden if g.kind == "orders"][:5]
        product = next(g.as_protobuf() for g in golden if g.kind == "products").value
    else:
        good = [generator.order() for _ in range(5)]
        document = {"sku": "0123456789", "name": "n", "description": "d", "price": 1.0, "currency": "USD"}
        product = ValueEncoder(value_format).encode("products", document | {"category": "toys"})
    order = good[0].value
    assert order is not None and product is not None
    orders_id = SCHEMA_IDS[("orders", value_format)].to_bytes(4, "big")
    bad = [
        RawRecord("orders", b"900", order[:1] + (999).to_bytes(4, "big") + order[5:]),  # an id no one registered
        RawRecord("orders", b"901", order[: len(order) // 2]),  # truncated
        RawRecord("orders", b"902", b'{"orderid": 902}'),  # JSON where Confluent's wire format belongs
        RawRecord("orders", b"903", product[:1] + orders_id + product[5:]),  # a product under the orders schema
    ]
    event = generator.event([good[0], *bad, *good[1:]])
    outcome = build_ingestor(valkey.settings(**function_environment(value_format))).process(event)
    assert (outcome.applied, outcome.dead_lettered) == (5, 4)
    by_key = {json.loads(letter["record"])["key"]: letter["reason"] for letter in letters(valkey)}
    assert len(by_key) == 4
    assert by_key[base64.b64encode(b"900").decode()].startswith("SCHEMA_NOT_FOUND: schema id 999")
    assert by_key[base64.b64encode(b"901").decode()].startswith("DESERIALIZATION_ERROR: ")
    assert by_key[base64.b64encode(b"902").decode()].startswith("DESERIALIZATION_ERROR: the value is not in Confluent")
    # a product's body read with the orders schema does not decode
    wrong_schema = (
        f"DESERIALIZATION_ERROR: {value_format} value does not decode with orders.{SCHEMA_FILES[value_format][1:]}"
    )
    assert by_key[base64.b64encode(b"903").decode()].startswith(wrong_schema)
    assert sorted(int(k.decode().split(":")[1]) for k in valkey.client().keys("orders:*")) == [1, 2, 3, 4, 5]


def test_source_records_with_another_format_or_an_unknown_id_are_dead_lettered(valkey: Any) -> None:
    generator = EventGenerator(seed=2, partitions=1, value_format="avro")
    event = generator.event([generator.order() for _ in range(3)])
    registry = SchemaRegistry("https://registry.example", "SOURCE", ("VALUE",))
    first, second, third = records_of(event)
    for record in (first, second, third):
        esm_registry.apply(registry, record)
    second["valueSchemaMetadata"] = {"dataFormat": "PROTOBUF", "schemaId": "1"}
    third["valueSchemaMetadata"] = {"dataFormat": "AVRO", "schemaId": "77"}
    outcome = build_ingestor(valkey.settings(**function_environment("avro"))).process(event)
    assert (outcome.applied, outcome.dead_lettered) == (1, 2)
    assert outcome.reasons == [
        "DESERIALIZATION_ERROR: the value is PROTOBUF, the topic's values are AVRO",
        "SCHEMA_NOT_FOUND: schema id 77 is not one of the topic's (1)",
    ]


@pytest.mark.parametrize("value_format", ["avro", "protobuf"])
def test_a_replayed_batch_changes_nothing(valkey: Any, value_format: str) -> None:
    _, encoded, count = twins(value_format)
    ingest = build_ingestor(valkey.settings(**function_environment(value_format)))
    assert ingest.process(encoded).applied == count
    before = redis_state(valkey.client())
    again = ingest.process(encoded)
    assert (again.applied, again.duplicates, again.dead_lettered) == (0, count, 0)
    assert redis_state(valkey.client()) == before


def test_a_registry_validated_key_in_json_is_read_as_its_text(valkey: Any) -> None:
    generator = EventGenerator(seed=3, partitions=1)
    order = generator.order()
    tombstone = RawRecord("orders", b'"1"', None)  # Lambda's JSON form of a string key
    event = generator.event([order, tombstone])
    records_of(event)[1]["keySchemaMetadata"] = {"dataFormat": "AVRO", "schemaId": "9"}
    outcome = build_ingestor(valkey.settings()).process(event)
    assert (outcome.applied, outcome.dead_lettered) == (2, 0)
    assert valkey.client().get("orders:1") is None


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"ORDERS_VALUE_FORMAT": "thrift"}, "must be one of json, avro, protobuf"),
        ({"ORDERS_VALUE_FORMAT": "avro"}, "need a schema file"),
        ({"ORDERS_VALUE_FORMAT": "avro", "ORDERS_VALUE_SCHEMA": "/nonexistent.avsc"}, "cannot be read"),
        ({"ORDERS_VALUE_FORMAT": "avro", "ORDERS_VALUE_SCHEMA": "orders.binpb"}, "not an Avro schema"),
        ({"ORDERS_VALUE_FORMAT": "protobuf", "ORDERS_VALUE_SCHEMA": "orders.avsc"}, "not a Protobuf"),
        ({"ORDERS_VALUE_FORMAT": "protobuf", "ORDERS_VALUE_SCHEMA": "orders.binpb#cachesync.Nope"}, "no message"),
        ({"ORDERS_VALUE_FORMAT": "avro", "ORDERS_VALUE_SCHEMA": "1=orders.avsc,1=orders.avsc"}, "given twice"),
        ({"ORDERS_VALUE_FORMAT": "avro", "ORDERS_VALUE_SCHEMA": "orders.avsc,2=orders.avsc"}, "a schema id each"),
        ({"ORDERS_VALUE_FORMAT": "avro", "ORDERS_VALUE_SCHEMA": "x=orders.avsc"}, "whole number"),
        (
            {"ORDERS_VALUE_FORMAT": "avro", "ORDERS_VALUE_SCHEMA": "orders.avsc", "ORDERS_VALUE_WIRE_FORMAT": "glue"},
            "wire format must be one of confluent, plain",
        ),
    ],
)
def test_a_value_format_that_cannot_work_stops_the_configuration(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Settings.from_env(env)


def test_an_invalid_avro_schema_stops_the_configuration(tmp_path: Any) -> None:
    schema = tmp_path / "broken.avsc"
    schema.write_text('{"type": "record", "name": "x", "fields": [{"name": "a", "type": "nope"}]}')
    with pytest.raises(ConfigError, match="not a valid Avro schema"):
        Settings.from_env({"ORDERS_VALUE_FORMAT": "avro", "ORDERS_VALUE_SCHEMA": str(schema)})


def test_a_topic_entry_names_its_value_format_and_the_environment_overrides_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from cachesync import config

    entries = [dict(entry) for entry in config.topic_entries()]
    orders = next(entry for entry in entries if entry["name"] == "orders")
    orders |= {"value_format": "protobuf", "value_schema": "4=orders.binpb", "value_wire_format": "plain"}
    monkeypatch.setattr(config, "topic_entries", lambda: tuple(entries))
    value_format = Settings.from_env({}).topic("orders").value_format  # type: ignore[union-attr]
    assert value_format is not None and (value_format.kind, value_format.confluent) == ("protobuf", False)
    assert value_format.schemas[0].schema_id == "4" and value_format.schemas[0].message == "cachesync.Order"
    assert Settings.from_env({"ORDERS_VALUE_FORMAT": "json"}).topic("orders").value_format is None  # type: ignore[union-attr]
