"""Golden Protobuf values written by protoc (tests/fixtures/README.md says how), for the
suites that check the function's decoding: their bytes come from no code of cachesync."""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from devkit.generator import RawRecord
from devkit.registry import SCHEMA_IDS

FIXTURE = Path(__file__).parent / "fixtures" / "protobuf-values.jsonl"
# Protobuf's JSON mapping writes 64-bit integers as strings
PROTOBUF_INT64 = {"ordertime", "zipcode", "eventtime"}


@dataclass(frozen=True)
class Golden:
    kind: str  # orders | inventory | products
    key: bytes
    document: dict[str, Any]
    body: bytes  # the message as protoc encoded it

    def as_json(self) -> RawRecord:
        return RawRecord(self.kind, self.key, json.dumps(self.document, separators=(",", ":")).encode())

    def as_protobuf(self, confluent: bool = True) -> RawRecord:
        """The value as a producer writes it: in Confluent's wire format (magic byte 0, the local
        registry's schema id, message index 0: the file's first message) or the body alone."""
        header = b"\x00" + SCHEMA_IDS[(self.kind, "protobuf")].to_bytes(4, "big") + b"\x00"
        return RawRecord(self.kind, self.key, header + self.body if confluent else self.body)


@cache
def golden_protobuf() -> tuple[Golden, ...]:
    rows = [json.loads(line) for line in FIXTURE.read_text().splitlines()]
    return tuple(Golden(r["kind"], r["key"].encode(), r["json"], base64.b64decode(r["protobuf"])) for r in rows)


def protobuf_json(document: Any) -> Any:
    """A JSON document as Protobuf's JSON mapping writes it back."""
    if isinstance(document, dict):
        return {k: str(v) if k in PROTOBUF_INT64 else protobuf_json(v) for k, v in document.items()}
    return document
