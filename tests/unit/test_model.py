"""The reference model reads the data contract itself: topics.toml and the environment's
overrides, as the README describes them, never through cachesync.config."""

from __future__ import annotations

import json

import pytest

from cachesync.config import Settings
from devkit.generator import EventGenerator, RawRecord
from harness.model import DataContract, ReferenceModel, model_state

OVERRIDES = {
    "TOPIC_ORDERS": "shop.orders",
    "ORDERS_KEY_PREFIX": "order",
    "ORDERS_KEY_FIELD": "id",
    "PRODUCTS_TTL_SECONDS": "3600",
    "INVENTORY_SCHEMA": '{"type": "object", "required": ["store", "sku"]}',
    "MAX_VALUE_BYTES": "2048",
}


def test_the_contract_without_overrides_is_the_readmes_table() -> None:
    contract = DataContract.read({})
    described = {
        topic: (c.name, c.kind, c.key_prefix, c.key_field, c.ttl_seconds, c.schema)
        for topic, c in contract.topics.items()
    }
    assert described == {
        "orders": ("orders", "document", "orders", "orderid", 0, None),
        "inventory": ("inventory", "stock_ledger", "inventory", "store", 0, None),
        "products": ("products", "document", "products", "sku", 0, None),
    }
    assert contract.max_value_bytes == 1_048_576


def test_the_environment_overrides_an_entry() -> None:
    contract = DataContract.read(OVERRIDES)
    assert set(contract.topics) == {"shop.orders", "inventory", "products"}
    orders = contract.topics["shop.orders"]
    assert (orders.key_prefix, orders.key_field, orders.ttl_seconds) == ("order", "id", 0)
    assert contract.topics["products"].ttl_seconds == 3600
    assert contract.topics["inventory"].schema == {"type": "object", "required": ["store", "sku"]}
    assert contract.max_value_bytes == 2048


@pytest.mark.parametrize("env", [{}, OVERRIDES], ids=["defaults", "overrides"])
def test_the_functions_configuration_reads_the_same_contract(env: dict[str, str]) -> None:
    """Two independent readings of one table: a bug in either shows here."""
    contract = DataContract.read(env)
    settings = Settings.from_env(env)
    theirs = {
        t.topic: (t.name, t.kind, t.key_prefix, t.key_field, t.ttl_seconds, json.loads(t.schema) if t.schema else None)
        for t in settings.topics
    }
    ours = {
        t.topic: (t.name, t.kind, t.key_prefix, t.key_field, t.ttl_seconds, t.schema) for t in contract.topics.values()
    }
    assert theirs == ours
    assert settings.max_value_bytes == contract.max_value_bytes


def test_the_model_applies_the_overrides_it_is_given() -> None:
    g = EventGenerator(seed=1, topic_names={"orders": "shop.orders"})
    order = RawRecord("shop.orders", b"7", b'{"id": "7", "orderid": 99}')
    product = g.product()
    event = g.event([order, product])
    records = [r for chunk in event["records"].values() for r in chunk]
    model = ReferenceModel(OVERRIDES)
    for record in records:
        model.apply(record)
    sku = json.loads(product.value or b"")["sku"]
    assert set(model.state) == {"order:7", f"products:{sku}"}
    assert model.expiring == {f"products:{sku}"}
    # without the overrides the renamed topic has no projection at all
    with pytest.raises(AssertionError, match=r"no projection for topic 'shop\.orders'"):
        model_state({}, records)


def test_settings_that_change_the_contract_are_refused_rather_than_read() -> None:
    assert DataContract.of(Settings.from_env({"REDIS_URL": "redis://cache:6379/0"})) == DataContract.read({})
    with pytest.raises(ValueError, match="give the model the environment"):
        ReferenceModel(Settings.from_env({"ORDERS_TTL_SECONDS": "60"}))
