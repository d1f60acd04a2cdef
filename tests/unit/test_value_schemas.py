"""The bundled value schemas: the Protobuf descriptor sets are what their .proto files compile
to, and the Avro and Protobuf schemas describe the same documents the generator writes as JSON."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from cachesync.config import Settings
from cachesync.values import BUNDLED_SCHEMAS, to_json
from devkit import value_schemas
from devkit.generator import EventGenerator
from devkit.registry import ValueEncoder, function_environment
from tests.golden import golden_protobuf, protobuf_json


def test_the_descriptor_sets_are_current() -> None:
    assert sorted(p.stem for p in BUNDLED_SCHEMAS.glob("*.proto")) == ["inventory", "orders", "products"]
    assert value_schemas.stale() == [], "run make value-schemas"
    assert value_schemas.main(["--check"]) == 0


def test_a_stale_descriptor_set_is_reported(tmp_path: Path) -> None:
    (tmp_path / "orders.proto").write_text((BUNDLED_SCHEMAS / "orders.proto").read_text())
    (tmp_path / "orders.binpb").write_bytes(b"")
    assert [p.name for p in value_schemas.stale(tmp_path)] == ["orders.binpb"]


@pytest.mark.parametrize("value_format", ["avro", "protobuf"])
def test_every_generated_document_round_trips_through_the_bundled_schemas(value_format: str) -> None:
    settings = Settings.from_env(function_environment(value_format))
    plain = EventGenerator(seed=12, stores=3, skus=30)
    encoded = EventGenerator(seed=12, stores=3, skus=30, value_format=value_format)
    # the twins draw the same random numbers: the same documents, in JSON and in the format
    for want, got in zip(plain.records(300), encoded.records(300), strict=True):
        kind = want.topic
        assert got.value is not None and want.value is not None
        topic = settings.topic(kind)
        assert topic is not None and topic.value_format is not None
        document = json.loads(to_json(topic.value_format, base64.b64encode(got.value).decode(), got.value, None))
        expected = json.loads(want.value)
        if value_format == "protobuf":  # 64-bit integers are strings in Protobuf's JSON mapping
            expected = json.loads(json.dumps(expected), object_hook=_int64_as_text)
        assert document == expected, kind


def test_protocs_golden_bytes_decode_to_their_documents_and_the_generator_writes_the_same_bytes() -> None:
    """Against bytes no code of cachesync made (tests/fixtures): the function's decoding, and the
    encoder the generator and `make run VALUES=protobuf` write with."""
    settings = Settings.from_env(function_environment("protobuf"))
    encoder = ValueEncoder("protobuf")
    golden = golden_protobuf()
    assert {g.kind for g in golden} == {"orders", "inventory", "products"}
    for record in golden:
        topic = settings.topic(record.kind)
        assert topic is not None and topic.value_format is not None
        value = record.as_protobuf().value
        assert value is not None
        decoded = to_json(topic.value_format, base64.b64encode(value).decode(), value, None)
        assert json.loads(decoded) == protobuf_json(record.document)
        assert encoder.encode(record.kind, record.document) == value, record.document


def _int64_as_text(document: dict[str, object]) -> dict[str, object]:
    return {k: str(v) if k in ("ordertime", "zipcode", "eventtime") else v for k, v in document.items()}


def test_the_generator_writes_confluents_wire_format_or_plain_bytes(tmp_path: Path) -> None:
    from devkit import generator

    for flags, header in (([], b"\x00\x00\x00\x00\x01"), (["--plain"], None)):
        out = tmp_path / "event.json"
        generator.main(["--records", "5", "--topics", "orders", "--value-format", "avro", *flags, "--out", str(out)])
        records = [r for rs in json.loads(out.read_text())["records"].values() for r in rs]
        values = [base64.b64decode(r["value"]) for r in records]
        assert len(values) == 5
        if header is not None:
            assert all(v.startswith(header) for v in values)  # magic byte 0, orders' local schema id 1
        else:
            assert not any(v.startswith(b"\x00\x00\x00\x00") for v in values) and not values[0].startswith(b"{")
