"""topics.toml is the one place a topic is declared: a new entry of an existing kind reaches
the configuration, the projection, the cache users' key patterns, the template's parameters
and mappings, the README's contract table and the generator, with nothing else edited."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cachesync import config
from cachesync.config import ConfigError, Settings
from cachesync.ingest import build_ingestor
from devkit import acl, generator, topics
from devkit.generator import EventGenerator
from tests.template.cfn import expand

PRICES = """
[[topic]]
name = "prices"
kind = "document"
topic = "shop.prices"
key_prefix = "prices"
key_field = "sku"
record_key = "the sku"
ttl_seconds = 0
contract = 'a JSON object with `sku` and `price`'
example = '{"sku": "0123456789", "price": 17.5, "currency": "USD"}'
"""


def use_table(monkeypatch: pytest.MonkeyPatch, path: Path, text: str) -> None:
    path.write_text(text)
    monkeypatch.setattr(config, "TOPICS_FILE", path)
    config.topic_entries.cache_clear()


@pytest.fixture
def with_prices(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    use_table(monkeypatch, tmp_path / "topics.toml", config.TOPICS_FILE.read_text() + PRICES)
    monkeypatch.setattr(generator, "ENTRIES", {e["name"]: e for e in config.topic_entries()})
    yield
    config.topic_entries.cache_clear()


def test_the_shipped_template_and_readme_are_written_from_the_table() -> None:
    assert topics.stale() == [], "run `make topics`"


@pytest.mark.usefixtures("with_prices")
def test_a_new_document_topic_is_configured_applied_and_replayed_exactly_once(valkey: Any) -> None:
    settings = valkey.settings()
    prices = settings.topic("shop.prices")
    assert prices is not None and (prices.name, prices.kind, prices.key_prefix) == ("prices", "document", "prices")
    assert valkey.settings(TOPIC_PRICES="eu.prices").topic("eu.prices") is not None  # renamed at deploy time

    source = EventGenerator(seed=3, topic_names={"prices": "shop.prices"})
    event = source.event([source.document("prices") for _ in range(5)])
    values = {json.loads(_value(r))["sku"]: _value(r) for chunk in event["records"].values() for r in chunk}
    ingestor = build_ingestor(settings)
    first = ingestor.process(event)
    assert (first.applied, first.dead_lettered) == (5, 0)
    for sku, value in values.items():  # the last value of each sku, as produced
        assert valkey.client().get(f"prices:{sku}") == value
    again = ingestor.process(event)
    assert (again.applied, again.duplicates) == (0, 5)


def _value(record: dict[str, Any]) -> bytes:
    return base64.b64decode(record["value"])


@pytest.mark.usefixtures("with_prices")
def test_a_new_topic_reaches_the_cache_users_key_patterns() -> None:
    settings = Settings.from_env({})
    for rule in (acl.ingest_rule, acl.api_rule, acl.maintenance_rule):
        assert "prices:*" in rule(settings).key_patterns


@pytest.mark.usefixtures("with_prices")
def test_a_new_topic_gets_a_parameter_a_mapping_and_a_contract_row_from_make_topics() -> None:
    from samtranslator.yaml_helper import yaml_parse

    path, regions, comment = topics.TARGETS[0]
    written = yaml_parse(topics.render(path.read_text(), regions, comment))
    assert written["Parameters"]["PricesTopic"]["Default"] == "shop.prices"
    expanded = expand(written)
    mapping = expanded["Resources"]["PricesMapping"]["Properties"]
    assert mapping["Topics"] == [{"Ref": "PricesTopic"}]
    assert mapping["SelfManagedKafkaEventSourceConfig"]["ConsumerGroupId"]["Fn::Sub"][1] == {"Entry": "prices"}
    assert mapping["FunctionName"] == {"Ref": "IngestFunction"}
    variables = written["Globals"]["Function"]["Environment"]["Variables"]
    assert variables["TOPIC_PRICES"] == {"Ref": "PricesTopic"}
    assert "~prices:*" in expanded["Resources"]["IngestCacheUser"]["Properties"]["AccessString"]

    readme, regions, comment = topics.TARGETS[1]
    assert "| `shop.prices` | document | a JSON object with `sku` and `price` | `SET prices:<sku>" in topics.render(
        readme.read_text(), regions, comment
    )


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ('name = "orders"\nkind = "document"\ntopic = "x"\nkey_prefix = "x"\nkey_field = "id"', "must be unique"),
        ('name = "x"\nkind = "counter"\ntopic = "x"\nkey_prefix = "x"\nkey_field = "id"', "kind must be one of"),
        ('name = "Prices"\nkind = "document"\ntopic = "x"\nkey_prefix = "x"\nkey_field = "id"', "lower case"),
        ('name = "x"\nkind = "document"\ntopic = "x"\nkey_field = "id"', "needs `key_prefix`"),
    ],
)
def test_a_broken_entry_is_a_configuration_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, entry: str, message: str
) -> None:
    use_table(monkeypatch, tmp_path / "topics.toml", config.TOPICS_FILE.read_text() + "\n[[topic]]\n" + entry + "\n")
    try:
        with pytest.raises(ConfigError, match=message):
            Settings.from_env({})
    finally:
        config.topic_entries.cache_clear()
