"""The side-by-side benchmark's verdict: Redis against the reference model, after a replay.

`make bench-connect` itself (brokers, workers, SIGKILLs) is a benchmark, not a test; this checks the
comparison it reports on a small stream, and that it rewrites only its own section of the document.
"""

from __future__ import annotations

import base64
import json
from typing import Any

from devkit.generator import EventGenerator
from harness.bench_connect import SECTION_END, SECTION_START, carried_over, compare, with_section
from harness.model import ReferenceModel, model_state


def _stream() -> list[dict[str, Any]]:
    event = EventGenerator(seed=21, partitions=3, skus=20, stores=2).batch(400)
    return [record for records in event["records"].values() for record in records]


def _replayed(records: list[dict[str, Any]], again: list[dict[str, Any]]) -> dict[str, Any]:
    """What an at-least-once sink leaves: every record once, then `again` applied a second time."""
    model = ReferenceModel({})
    for record in [*records, *again]:
        model.apply(record)
    return model.state


def _value(record: dict[str, Any]) -> dict[str, Any]:
    document: dict[str, Any] = json.loads(base64.b64decode(record["value"]))
    return document


def test_each_record_once_matches_the_model() -> None:
    records = _stream()
    verdict = compare(model_state({}, records), _replayed(records, []))
    assert verdict["documents"] > 0 and verdict["stock_entries"] > 0
    assert verdict["documents_wrong"] == verdict["stock_entries_wrong"] == 0


def test_a_replayed_stock_delta_is_counted_twice_and_documents_converge() -> None:
    records = _stream()
    shipments = [r for r in records if r["topic"] == "inventory" and _value(r)["type"] == "shipment"]
    purchase = next(r for r in records if r["topic"] == "inventory" and _value(r)["type"] == "purchase")
    documents = [r for r in records if r["topic"] in ("orders", "products")][-50:]
    # a replayed tail: the last shipment (stock up), a purchase (stock down) and documents written again
    shipment = shipments[-1]
    again = [*documents, purchase, shipment]
    verdict = compare(model_state({}, records), _replayed(records, again))
    units = _value(shipment)["units"] - _value(purchase)["units"]
    same_entry = (_value(shipment)["store"], _value(shipment)["sku"]) == (
        _value(purchase)["store"],
        _value(purchase)["sku"],
    )
    assert verdict["documents_wrong"] == 0
    assert verdict["stock_entries_wrong"] == (1 if same_entry else 2)
    if same_entry:
        assert verdict["stock_units_net"] == units
    else:
        assert verdict["stock_units_off"] == _value(shipment)["units"] + _value(purchase)["units"]
        assert verdict["stock_units_net"] == units


def test_the_section_is_appended_once_then_replaced_and_the_rest_kept() -> None:
    document = "# Performance\n\n| a | b |\n\n## How to read it\n\ntext\n"
    first = with_section(document, f"{SECTION_START}\nrun 1\n{SECTION_END}\n")
    assert first.startswith(document.rstrip("\n")) and first.count(SECTION_START) == 1
    second = with_section(first, f"{SECTION_START}\nrun 2\n{SECTION_END}\n")
    assert "run 1" not in second and "run 2" in second
    assert second.replace("run 2", "run 1") == first


def test_a_rewritten_document_keeps_the_section() -> None:
    section = f"{SECTION_START}\nside by side\n{SECTION_END}\n"
    previous = with_section("# Performance\n\nold table\n", section)
    rewritten = carried_over(previous, "# Performance\n\nnew table\n")
    assert "new table" in rewritten and "old table" not in rewritten and rewritten.endswith(section)
    assert carried_over("# Performance\n", "# new\n") == "# new\n"
