"""docs/topics-examples.toml's entries (a Debezium table into hashes, a stream, merged JSON
carts) with the default table: configured, applied from the sample events, generated, given
their commands and contract rows; the samples in events/ are what `make events` writes."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cachesync import config
from cachesync.config import Settings
from cachesync.ingest import build_ingestor
from devkit import acl, generator, samples, topics
from devkit.generator import EventGenerator
from harness.model_kinds import KindsModel, redis_kinds_state
from tests.integration.kindslog import use_table

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "docs" / "topics-examples.toml"


@pytest.fixture
def with_examples(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    path = use_table(monkeypatch, tmp_path / "topics.toml", config.TOPICS_FILE.read_text() + EXAMPLES.read_text())
    monkeypatch.setattr(generator, "ENTRIES", {e["name"]: e for e in config.topic_entries()})
    yield path
    config.topic_entries.cache_clear()


def _sample(name: str) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((ROOT / "events" / name).read_text())
    return loaded


def test_the_samples_are_what_make_events_writes() -> None:
    assert _sample("kafka-customers.json") == json.loads(json.dumps(samples.customers()))
    assert _sample("kafka-activity.json") == json.loads(json.dumps(samples.activity()))


@pytest.mark.usefixtures("with_examples")
def test_the_customers_sample_streams_a_mysql_table_into_hashes(target: Any) -> None:
    ingest = build_ingestor(target.settings())
    outcome = ingest.process(_sample("kafka-customers.json"))
    # four snapshot rows, an update, a delete and its tombstone; the truncate is dead-lettered
    assert (outcome.applied, outcome.dead_lettered, outcome.key_mismatches) == (7, 1, 0)
    assert "truncate of inventory.customers" in outcome.reasons[0]
    client = target.client()
    assert client.hgetall("customers:1004") == {
        b"id": b"1004",
        b"first_name": b"Anne Marie",
        b"last_name": b"Kretchmar",
        b"email": b"annek@noanswer.org",
    }
    assert client.exists("customers:1002") == 0
    assert sorted(k.decode() for k in client.scan_iter("customers:*")) == [
        "customers:1001",
        "customers:1003",
        "customers:1004",
    ]
    assert ingest.process(_sample("kafka-customers.json")).applied == 0


@pytest.mark.usefixtures("with_examples")
def test_the_activity_sample_appends_each_action_once(target: Any) -> None:
    ingest = build_ingestor(target.settings())
    assert ingest.process(_sample("kafka-activity.json")).applied == 5
    assert ingest.process(_sample("kafka-activity.json")).applied == 0
    client = target.client()
    assert [f[b"action"] for _, f in client.xrange("activity:u1")] == [b"view", b"cart", b"buy"]
    assert 0 < client.ttl("activity:u1") <= 3600 and client.ttl("activity:u2") == -1


def test_generated_records_of_the_examples_converge_to_the_model(with_examples: Path, valkey: Any) -> None:
    source = EventGenerator(seed=9, partitions=3, skus=5, topic_names={"customers": "dbserver1.inventory.customers"})
    raws = source.records(300, ["customers", "activity"])
    event = source.event(raws)
    ingest = build_ingestor(valkey.settings())
    ingest.process(event)
    ingest.process(event)
    records = [r for chunk in event["records"].values() for r in chunk]
    model = KindsModel(EXAMPLES).apply_all(records)
    assert redis_kinds_state(valkey.client()) == model.state
    assert any(name.startswith("customers:") for name in model.state) and not model.poison


@pytest.mark.usefixtures("with_examples")
def test_the_examples_get_their_commands_key_patterns_and_contract_rows() -> None:
    settings = Settings.from_env({})
    ingest = acl.ingest_rule(settings)
    for command in ("hset", "hdel", "xadd", "json.merge", "json.set", "exists"):
        assert command in ingest.commands
    for pattern in ("customers:*", "activity:*", "carts:*"):
        assert pattern in ingest.key_patterns and pattern in acl.maintenance_rule(settings).key_patterns
    readme, regions, comment = topics.TARGETS[1]
    table = topics.render(readme.read_text(), regions, comment)
    assert "| `dbserver1.inventory.customers` | hash |" in table
    assert "`XADD activity:<user> MAXLEN ~ 1000 *`" in table
    assert "`JSON.MERGE carts:<cart> $ <value>`" in table
