"""Golden Protobuf values for the value-format suites, written by protoc itself.

    .venv/bin/python -m harness.golden_values      # writes tests/fixtures/protobuf-values.jsonl

The suites would otherwise encode their Protobuf records with the same message classes the
function decodes with (cachesync.values builds both from the bundled descriptor sets), so a
wrong descriptor or message name would cancel out. Here the generator's JSON documents are
written out in Protobuf's text format by hand, and protoc (grpcio-tools, requirements-dev.txt)
compiles the bundled `.proto` sources, not the `.binpb` sets, and encodes them with
`--encode`. Nothing in cachesync is imported.

Each line of the file: the topic's entry (`kind`), the record key, the JSON document, and the
message body protoc wrote (base64; Confluent's header is the tests' to add).
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from devkit.generator import EventGenerator, RawRecord

ROOT = Path(__file__).resolve().parents[1]
PROTO_SOURCES = ROOT / "layers" / "shared" / "cachesync" / "value_schemas"
FIXTURE = ROOT / "tests" / "fixtures" / "protobuf-values.jsonl"
MESSAGES = {"orders": "cachesync.Order", "inventory": "cachesync.InventoryEvent", "products": "cachesync.Product"}
SEED, RECORDS = 5, 300  # three stores and twenty SKUs: stock events meet the same keys often


def text_format(document: dict[str, Any], indent: str = "") -> str:
    """A JSON document of these schemas in Protobuf's text format: strings, whole numbers,
    floats and nested messages are all they hold."""
    lines = []
    for name, value in document.items():
        if isinstance(value, dict):
            lines += [f"{indent}{name} {{", text_format(value, indent + "  "), f"{indent}}}"]
        elif isinstance(value, str):
            assert value.isascii() and value.isprintable(), value
            lines.append(f"{indent}{name}: {_quoted(value)}")
        elif isinstance(value, bool):
            raise ValueError(f"{name}: no boolean fields in these schemas")
        else:
            lines.append(f"{indent}{name}: {value!r}")
    return "\n".join(lines)


def _quoted(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def protoc_encode(kind: str, documents: list[dict[str, Any]]) -> list[bytes]:
    """Each document encoded by protoc as its topic's message: all of a topic in one call, as
    the repeated field of a wrapper message, whose items are then split apart."""
    message = MESSAGES[kind]
    with tempfile.TemporaryDirectory() as folder:
        wrapper = Path(folder) / "golden.proto"
        wrapper.write_text(
            f'syntax = "proto3";\nimport "{kind}.proto";\nmessage Golden {{ repeated {message} item = 1; }}\n'
        )
        text = "\n".join(f"item {{\n{text_format(d, '  ')}\n}}" for d in documents)
        done = subprocess.run(
            [sys.executable, "-m", "grpc_tools.protoc", f"-I{PROTO_SOURCES}", f"-I{folder}", "--encode=Golden",
             "golden.proto"],
            input=text.encode(),
            capture_output=True,
            check=True,
        )  # fmt: skip
    return split_repeated(done.stdout, field=1)


def split_repeated(encoded: bytes, field: int) -> list[bytes]:
    """The items of a repeated message field: each is its tag, a varint length, the bytes."""
    items, at = [], 0
    while at < len(encoded):
        tag, at = _varint(encoded, at)
        assert tag == (field << 3) | 2, f"unexpected tag {tag} at byte {at}"
        length, at = _varint(encoded, at)
        items.append(encoded[at : at + length])
        at += length
    return items


def _varint(data: bytes, at: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        byte = data[at]
        value |= (byte & 0x7F) << shift
        at, shift = at + 1, shift + 7
        if not byte & 0x80:
            return value, at


def _document(**fields: Any) -> bytes:
    return json.dumps(fields, separators=(",", ":")).encode()


def main() -> None:
    generator = EventGenerator(seed=SEED, partitions=3, stores=3, skus=20)
    raws = generator.records(RECORDS)
    # what the random mix may lack: a stock take of 0 units (proto3 sends it only because `units`
    # is optional), a remove without units, and a name that text format must escape
    first, second = generator.skus[:2]
    raws += [
        RawRecord("inventory", f"store1:{first}".encode(), _document(type="count", store="store1", sku=first,
                                                                      eventtime=1497014222380, units=0)),
        RawRecord("inventory", f"store2:{second}".encode(), _document(type="remove", store="store2", sku=second,
                                                                       eventtime=1497014222381)),
        RawRecord("products", first.encode(), _document(sku=first, name='The "Deluxe" kit \\ 2', description="d",
                                                        price=12.5, currency="USD", category="toys")),
    ]  # fmt: skip
    documents = [json.loads(raw.value or b"") for raw in raws]
    encoded: dict[int, bytes] = {}
    for kind in MESSAGES:
        mine = [n for n, raw in enumerate(raws) if raw.topic == kind]
        for n, body in zip(mine, protoc_encode(kind, [documents[n] for n in mine]), strict=True):
            encoded[n] = body
    lines = [
        json.dumps(
            {
                "kind": raw.topic,
                "key": (raw.key or b"").decode(),
                "json": documents[n],
                "protobuf": base64.b64encode(encoded[n]).decode(),
            },
            separators=(",", ":"),
        )
        for n, raw in enumerate(raws)
    ]
    FIXTURE.parent.mkdir(exist_ok=True)
    FIXTURE.write_text("\n".join(lines) + "\n")
    print(f"wrote {len(lines)} records to {FIXTURE.relative_to(ROOT)}", file=sys.stderr)


if __name__ == "__main__":
    main()
