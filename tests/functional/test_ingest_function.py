"""IngestFunction as the template declares it: `make invoke`, the real handler, logs and EMF metrics."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import redis

from devkit.generator import EventGenerator, RawRecord

ROOT = Path(__file__).resolve().parents[2]
SEED_ORDER = (
    b'{"ordertime": 1497014222380, "orderid": 18, "itemid": "Item_184", '
    b'"address": {"city": "Mountain View", "state": "CA", "zipcode": 94041}}'
)


def run(args: list[str], url: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args],
        cwd=ROOT,
        env={**os.environ, "REDIS_URL": url},
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_make_invoke_writes_the_order_and_prints_the_response(valkey: Any) -> None:
    result = subprocess.run(
        ["make", "-s", "invoke", "FUNCTION=IngestFunction", "EVENT=events/kafka-orders.json"],
        cwd=ROOT,
        env={**os.environ, "REDIS_URL": valkey.url},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"records": 9, "applied": 9, "duplicates": 0, "deadLettered": 0}
    assert redis.Redis.from_url(valkey.url).get("orders:18") == SEED_ORDER


def test_handler_logs_offset_ranges_and_emits_the_five_metrics(valkey: Any) -> None:
    event = EventGenerator(seed=9, partitions=2).batch(50, ["orders"])
    result = run(["-m", "devkit.invoke", "IngestFunction", "-"], valkey.url, json.dumps(event))
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]
    log = next(line for line in lines if line.get("message") == "batch applied")
    expected = {f"orders-{p}": len(records) for p, records in enumerate(event["records"].values())}
    assert {name: span["records"] for name, span in log["partitions"].items()} == {
        name: len(event["records"][name]) for name in event["records"]
    }
    assert sum(expected.values()) == 50
    emf = next(line for line in lines if "_aws" in line)
    names = {m["Name"] for m in emf["_aws"]["CloudWatchMetrics"][0]["Metrics"]}
    assert names == {"RecordsApplied", "DuplicatesSkipped", "RecordsDeadLettered", "FreshnessLagMs", "KeyMismatch"}
    assert emf["RecordsApplied"] == [50.0] and emf["DuplicatesSkipped"] == [0.0] and emf["KeyMismatch"] == [0.0]
    assert not any(line.get("message", "").startswith("KeyMismatch") for line in lines)


def test_records_keyed_against_the_rule_are_applied_and_reported_as_key_mismatch(valkey: Any) -> None:
    g = EventGenerator(seed=10, partitions=2)
    order, stock = g.order(), g.inventory("shipment", "store1", "0000000001")
    raws = [
        RawRecord("orders", b"not-the-orderid", order.value),
        RawRecord("inventory", b"store1", stock.value),  # the store alone: one SKU's moves may spread out
        RawRecord("orders", None, g.order().value),
        g.order(),  # keyed by its orderid, as the rule asks
    ]
    result = run(["-m", "devkit.invoke", "IngestFunction", "-"], valkey.url, json.dumps(g.event(raws)))
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["applied"] == 4
    lines = [json.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]
    emf = next(line for line in lines if "_aws" in line)
    assert emf["KeyMismatch"] == [3.0]
    warning = next(line for line in lines if line.get("message", "").startswith("KeyMismatch"))
    assert warning["level"] == "WARNING" and warning["keyMismatches"] == 3
    assert any("record key 'store1', expected 'store1:0000000001'" in e for e in warning["examples"])
    assert any("record key none" in e for e in warning["examples"])
    assert emf["FreshnessLagMs"] and all(0 <= lag < 60_000 for lag in emf["FreshnessLagMs"])


def test_a_non_kafka_event_fails_the_invocation_with_a_clear_error(valkey: Any) -> None:
    result = run(["-m", "devkit.invoke", "IngestFunction", "-"], valkey.url, json.dumps({"eventSource": "aws:sqs"}))
    assert result.returncode != 0
    assert "is not a Kafka event source" in result.stderr


@pytest.mark.parametrize("topics", ["orders", "orders,inventory,products"])
def test_the_generator_writes_events_of_n_records(tmp_path: Path, topics: str) -> None:
    out = tmp_path / "event.json"
    args = ["-m", "devkit.generator", "--records", "250", "--topics", topics, "--partitions", "4", "--out", str(out)]
    result = run([*args, "--seed", "5"], "redis://unused")
    assert result.returncode == 0, result.stderr
    event = json.loads(out.read_text())
    records = [r for chunk in event["records"].values() for r in chunk]
    assert event["eventSource"] == "SelfManagedKafka" and len(records) == 250
    assert {r["topic"] for r in records} <= set(topics.split(","))
    for name, chunk in event["records"].items():
        assert [r["offset"] for r in chunk] == list(range(len(chunk)))
        assert all(f"{r['topic']}-{r['partition']}" == name for r in chunk)
    again = tmp_path / "again.json"
    run([*args[:-1], str(again), "--seed", "5"], "redis://unused")
    strip = lambda e: [(r["key"], r["value"]) for c in e["records"].values() for r in c]  # noqa: E731
    assert strip(json.loads(again.read_text())) == strip(event)  # same seed, same records


def test_avro_values_through_the_handler_with_the_dead_letter_reasons_in_the_log(valkey: Any, tmp_path: Path) -> None:
    from devkit.registry import function_environment

    generator = EventGenerator(seed=4, partitions=2, value_format="avro")
    orders = [generator.order() for _ in range(4)]
    assert orders[0].value is not None
    truncated = RawRecord("orders", b"99", orders[0].value[:9])
    event = generator.event([*orders, truncated])
    env_vars = tmp_path / "env.json"
    env_vars.write_text(json.dumps({"IngestFunction": function_environment("avro")}))
    result = run(
        ["-m", "devkit.invoke", "IngestFunction", "-", "--env-vars", str(env_vars)], valkey.url, json.dumps(event)
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"records": 5, "applied": 4, "duplicates": 0, "deadLettered": 1}
    lines = [json.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]
    log = next(line for line in lines if line.get("message") == "batch applied")
    [reason] = log["deadLetterReasons"]
    assert reason.startswith("DESERIALIZATION_ERROR: avro value does not decode with orders.avsc")
    stored = json.loads(redis.Redis.from_url(valkey.url).get("orders:1") or b"null")
    assert stored["orderid"] == 1 and set(stored) == {"ordertime", "orderid", "itemid", "orderunits", "address"}
