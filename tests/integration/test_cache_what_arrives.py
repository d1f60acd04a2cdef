"""Cache what arrives: a document needs only to be a JSON object with a usable key
field; whatever else it holds is cached byte for byte (real Valkey)."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cachesync.ingest import build_ingestor
from devkit.generator import EventGenerator, RawRecord
from harness.model import model_of, redis_expiring, redis_state
from tests.integration.test_ingest import records_of

IDENTIFIERS = st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9._:-]{0,127}\Z") | st.integers(min_value=0)
# any JSON: numbers of any size, any strings (lone surrogates included), nested
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)


@st.composite
def documents(draw: st.DrawFn, key_field: str) -> bytes:
    document = draw(st.dictionaries(st.text(max_size=10), JSON, max_size=6))
    document[key_field] = draw(IDENTIFIERS)
    items = list(document.items())
    draw(st.randoms()).shuffle(items)  # the key field anywhere
    style = draw(st.sampled_from([(", ", ": "), (",", ":"), (" , ", " :  ")]))
    text = json.dumps(dict(items), separators=style, ensure_ascii=draw(st.booleans()))
    return (" " * draw(st.integers(0, 2)) + text + draw(st.sampled_from(["", "\n", " \t"]))).encode(
        "utf-8", "surrogatepass"
    )


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(orders=st.lists(documents("orderid"), min_size=1, max_size=8), products=st.lists(documents("sku"), max_size=4))
def test_any_json_object_with_a_valid_key_field_is_cached_as_sent(
    valkey: Any, orders: list[bytes], products: list[bytes]
) -> None:
    valkey.flush()
    env = {"ORDERS_TTL_SECONDS": "600"}
    settings_ = valkey.settings(**env)
    raws, last = [], {}
    for topic, field, values in (("orders", "orderid", orders), ("products", "sku", products)):
        for value in values:
            identifier = str(json.loads(value.decode("utf-8", "surrogatepass"))[field])
            # keyed as the contract asks: one Redis key's writes in one partition, in order
            raws.append(RawRecord(topic, identifier.encode(), value))
            last[f"{topic}:{identifier}"] = value  # the last write of a key wins
    event = EventGenerator(seed=1, partitions=3).event(raws)
    outcome = build_ingestor(settings_).process(event)
    assert (outcome.dead_lettered, outcome.key_mismatches) == (0, 0)
    client = valkey.client()
    for key, value in last.items():
        assert client.get(key) == value
    model = model_of(env, records_of(event))
    assert redis_state(client) == model.state
    assert redis_expiring(client) == model.expiring == {k for k in last if k.startswith("orders:")}


def test_the_seeds_order_as_printed_is_cached_and_served(valkey: Any) -> None:
    seed = (
        b'{"ordertime": 1497014222380, "orderid": 18, "itemid": "Item_184", '
        b'"address": {"city": "Mountain View", "state": "CA", "zipcode": 94041}}'
    )
    g = EventGenerator(seed=2)
    outcome = build_ingestor(valkey.settings()).process(g.event([RawRecord("orders", b"18", seed)]))
    assert (outcome.applied, outcome.dead_lettered, outcome.key_mismatches) == (1, 0, 0)
    assert valkey.client().get("orders:18") == seed
