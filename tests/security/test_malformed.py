"""Malformed events, generated: every record of a Kafka batch ends in Redis or in the
dead-letter sink with a reason, whatever is broken in it; only a payload that is not a
Kafka batch at all is refused (InvalidEvent), and nothing else raises."""

from __future__ import annotations

import base64
import json
import re
from typing import Any

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cachesync import keys
from cachesync.ingest import InvalidEvent, build_ingestor
from devkit.generator import EventGenerator

MAX_VALUE_BYTES = 4096  # small, so "huge" values are cheap to generate
BASE = [r for rs in EventGenerator(seed=9, partitions=3, stores=2, skus=5).batch(40)["records"].values() for r in rs]
RECORD_FIELDS = ("topic", "partition", "offset", "timestamp", "timestampType", "key", "value", "headers")
VALUE_FIELDS = ("orderid", "ordertime", "itemid", "orderunits", "address", "sku", "name", "price", "type", "store")
VALUE_FIELDS += ("units", "description", "zipcode")
ALLOWED_KEY = re.compile(r"^(orders|products|inventory):[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")

junk = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.binary(max_size=12).map(lambda b: b.decode("latin-1")),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=4), st.integers(), max_size=2),
)


@st.composite
def broken_value(draw: st.DrawFn, raw: str | None) -> Any:
    """The record's value, broken in one of the ways producers and networks break values."""
    kind = draw(st.sampled_from(["truncate", "garbage", "not_json", "json_field", "json_type", "huge", "junk"]))
    if kind == "truncate" and isinstance(raw, str) and raw:
        return raw[: draw(st.integers(0, max(0, len(raw) - 1)))]
    if kind == "garbage":
        return draw(st.text(alphabet="abc=+/!@ \n\u00e9", min_size=1, max_size=40))
    if kind == "not_json":
        return base64.b64encode(draw(st.binary(max_size=64))).decode()
    document = _document(raw) if kind in ("json_field", "json_type") else None
    if document is not None:
        name = draw(st.sampled_from(VALUE_FIELDS))
        if kind == "json_field":
            document.pop(name, None)
        else:
            document[name] = draw(junk)
        return base64.b64encode(json.dumps(document, allow_nan=True).encode()).decode()
    if kind == "huge":
        size = draw(st.integers(MAX_VALUE_BYTES - 64, MAX_VALUE_BYTES * 3))
        return base64.b64encode(b'{"orderid": 1, "pad": "' + b"x" * size + b'"}').decode()
    return draw(junk)


def _document(raw: Any) -> dict[str, Any] | None:
    try:
        document = json.loads(base64.b64decode(raw, validate=True))
    except (TypeError, ValueError):
        return None
    return document if isinstance(document, dict) else None


@st.composite
def broken_record(draw: st.DrawFn) -> Any:
    if draw(st.integers(0, 30)) == 0:
        return draw(junk)  # not even an object
    record = dict(draw(st.sampled_from(BASE)))
    for _ in range(draw(st.integers(0, 3))):
        action = draw(st.sampled_from(["drop", "retype", "value", "value", "key", "offset"]))
        name = draw(st.sampled_from(RECORD_FIELDS))
        if action == "drop":
            record.pop(name, None)
        elif action == "retype":
            record[name] = draw(junk)
        elif action == "value":
            record["value"] = draw(broken_value(record.get("value")))
        elif action == "key":
            record["key"] = draw(st.one_of(junk, st.binary(max_size=200).map(lambda b: base64.b64encode(b).decode())))
        else:
            record["offset"] = draw(st.one_of(st.integers(-5, 2**63), junk))
    return record


batches = st.dictionaries(st.text(max_size=12), st.lists(broken_record(), max_size=12), min_size=1, max_size=4).map(
    lambda records: {"eventSource": "SelfManagedKafka", "bootstrapServers": "b:9092", "records": records}
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(event=batches)
def test_every_broken_record_is_applied_or_dead_lettered_with_a_reason(valkey: Any, event: dict[str, Any]) -> None:
    valkey.flush()
    ingest = build_ingestor(valkey.settings(MAX_VALUE_BYTES=str(MAX_VALUE_BYTES)))
    outcome = ingest.process(event)
    total = sum(len(records) for records in event["records"].values())
    assert outcome.records == total
    assert outcome.applied + outcome.duplicates + outcome.dead_lettered == total

    client = redis.Redis.from_url(valkey.url, decode_responses=True)
    letters = client.xrange("deadletter:ingest")
    assert len(letters) == outcome.dead_lettered
    for _, fields in letters:
        assert fields["reason"].strip(), fields
        json.loads(fields["record"])  # the raw record travels with it, as JSON
    for key in client.scan_iter():
        assert ALLOWED_KEY.match(key) or keys.is_offsets_key(key) or key == "deadletter:ingest", key


not_kafka = st.one_of(
    junk,
    st.fixed_dictionaries({"eventSource": st.one_of(junk, st.sampled_from(["aws:sqs", "aws:s3", ""]))}),
    st.fixed_dictionaries({"eventSource": st.just("SelfManagedKafka"), "records": junk}),
    st.fixed_dictionaries(
        {"eventSource": st.just("SelfManagedKafka"), "records": st.dictionaries(st.text(max_size=5), junk, min_size=1)}
    ),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(event=not_kafka)
def test_a_payload_that_is_not_a_kafka_batch_is_refused_as_such(valkey: Any, event: Any) -> None:
    ingest = build_ingestor(valkey.settings())
    try:
        outcome = ingest.process(event)
    except InvalidEvent as error:
        assert str(error)
    else:  # it happened to be a Kafka batch: of junk records, each dead-lettered
        assert outcome.applied == 0 and outcome.dead_lettered == outcome.records


def test_out_of_range_coordinates_are_dead_lettered_not_crashing(valkey: Any) -> None:
    """Found by the property above: a 65-bit offset crashed the writer."""
    good = dict(BASE[0])
    records = [
        {**good, "offset": 2**64},
        {**good, "offset": 2**53 + 1},
        {**good, "partition": 2**31},
        {**good, "partition": -1},
        {**good, "offset": 2**53},  # the largest offset compared exactly: applied
    ]
    outcome = build_ingestor(valkey.settings()).process({"eventSource": "SelfManagedKafka", "records": {"x": records}})
    assert (outcome.applied, outcome.dead_lettered) == (1, 4)
    assert all("partition must be 0 to" in reason for reason in outcome.reasons[:4])


def test_an_event_source_of_the_wrong_type_is_an_invalid_event(valkey: Any) -> None:
    """Found by the property above: an unhashable eventSource raised TypeError."""
    ingest = build_ingestor(valkey.settings())
    for source in (["SelfManagedKafka"], {"name": "SelfManagedKafka"}, 7, None):
        with pytest.raises(InvalidEvent, match="not a Kafka event source"):
            ingest.process({"eventSource": source, "records": {}})
