"""Projections of the hash, json and stream kinds, TTL headers and Debezium record keys."""

from __future__ import annotations

import pytest

from cachesync.config import DEBEZIUM, HASH, JSON, MERGE, STREAM, TopicConfig
from cachesync.poison import PoisonRecord
from cachesync.projections import (
    DELETE,
    HASH_MERGE,
    HASH_REPLACE,
    JSON_MERGE,
    JSON_SET,
    SET,
    STREAM_ADD,
    Mutation,
    project,
    record_key_identifier,
    record_ttl,
)

PEOPLE = TopicConfig("people", HASH, "people", "people", "id")
PATCHES = TopicConfig("patches", HASH, "patches", "patches", "id", on_update=MERGE, ttl_header="ttl")
CARTS = TopicConfig("carts", JSON, "carts", "carts", "id")
CUSTOMERS = TopicConfig("customers", HASH, "customers", "customers", "id", envelope=DEBEZIUM)


def test_a_hash_holds_strings_as_they_are_and_the_rest_as_json_text() -> None:
    value = (
        b'{"id": 7, "name": "Zo\\u00eb", "tags": ["a"], "n": null, "ok": true, "big": 123456789012345678901234567890}'
    )
    assert project(PEOPLE, b"7", value) == Mutation(
        "people:7",
        HASH_REPLACE,
        argument=(
            b"id",
            b"7",
            b"name",
            "Zoë".encode(),
            b"tags",
            b'["a"]',
            b"ok",
            b"true",
            b"big",
            b"123456789012345678901234567890",
        ),
    )
    merged = project(PATCHES, b"7", b'{"id": 7, "n": null}', ttl=30)
    assert merged == Mutation("patches:7", HASH_MERGE, argument=(b"id", b"7"), ttl=30, removed=(b"n",))
    assert project(PEOPLE, b"7", None) == Mutation("people:7", DELETE)


def test_json_and_streams() -> None:
    assert project(CARTS, b"1", b'{"id": 1}') == Mutation("carts:1", JSON_SET, argument=b'{"id": 1}')
    merging = TopicConfig("carts", JSON, "carts", "carts", "id", on_update=MERGE)
    assert project(merging, b"1", b'{"id": 1}').code == JSON_MERGE
    stream = TopicConfig("a", STREAM, "a", "a", "user", max_length=10)
    assert project(stream, b"u", b'{"user": "u", "x": null}') == Mutation(
        "a:u", STREAM_ADD, argument=(b"user", b"u"), max_length=10
    )
    with pytest.raises(PoisonRecord, match="lone surrogate"):
        project(PEOPLE, b"1", b'{"id": 1, "s": "\\ud800"}')


def test_a_ttl_header_last_wins_and_bad_ones_are_poison() -> None:
    assert record_ttl(PATCHES, [{"ttl": [54]}, {"other": [49]}, {"ttl": [49, 50]}]) == 12
    assert record_ttl(PATCHES, [{"other": [49]}]) is None
    assert record_ttl(PATCHES, None) is None
    for bad in ([{"ttl": [45, 49]}], [{"ttl": [49, 46, 53]}], [{"ttl": "12"}], [{"ttl": [57] * 12}]):
        with pytest.raises(PoisonRecord, match="header 'ttl' must be a whole number of seconds"):
            record_ttl(PATCHES, bad)


def test_debezium_record_keys_with_and_without_the_wrapper() -> None:
    assert record_key_identifier(CUSTOMERS, b'{"id": 1001}') == "1001"
    assert record_key_identifier(CUSTOMERS, b'{"schema": {"type": "struct"}, "payload": {"id": 1001}}') == "1001"
    assert record_key_identifier(CUSTOMERS, b"1001") == "1001"
    assert record_key_identifier(CUSTOMERS, b"cust-9") == "cust-9"
    assert record_key_identifier(CUSTOMERS, b'{"code": 1}') is None
    tombstone = project(CUSTOMERS, b'{"schema": {}, "payload": {"id": 5}}', None)
    assert tombstone == Mutation("customers:5", DELETE)
    document = TopicConfig("d", "document", "d", "d", "id", envelope=DEBEZIUM)
    written = project(document, b'{"id": 5}', b'{"op": "r", "after": {"id": 5, "a": [1]}, "before": null}')
    assert written == Mutation("d:5", SET, argument=b'{"id":5,"a":[1]}')
    for value, reason in (
        (b'{"op": "x"}', "Debezium op 'x' is not one of c, r, u, d, t"),
        (b'{"after": {}}', "has no `op`"),
        (b'{"op": "c", "after": null}', "needs the `after` row, got null"),
        (b'{"op": "t", "source": {"db": "shop", "schema": "public", "table": "t"}}', "truncate of shop.public.t"),
        (b"[]", "a Debezium change event is a JSON object, got list"),
    ):
        with pytest.raises(PoisonRecord, match=reason.replace("(", r"\(")):
            project(document, b'{"id": 5}', value)
    with pytest.raises(PoisonRecord, match="the record key has no field 'id'"):
        project(CUSTOMERS, b'{"code": 1}', b'{"op": "d", "before": null}')
