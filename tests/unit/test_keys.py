"""The key schema: names, identifiers and the cluster slot tags."""

from __future__ import annotations

from typing import Annotated

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import StringConstraints, TypeAdapter, ValidationError
from redis.crc import key_slot

from cachesync import keys


def test_the_shipped_slot_tags_hash_to_their_slots() -> None:
    assert keys._slot_tags() == keys.compute_slot_tags()  # `make events` writes the file again
    assert all(key_slot(keys.offsets_key(slot).encode()) == slot for slot in range(16384))
    assert keys.offsets_key() == "cachesync:offsets"


@pytest.mark.parametrize("name", ["cachesync:offsets", "cachesync:offsets:{460}"])
def test_offsets_keys_are_recognised(name: str) -> None:
    assert keys.is_offsets_key(name)


@pytest.mark.parametrize("value", ["", "-1", "a b", "{x}", "x*", "é", "a" * 129, "abc\n", "abc\r\n"])
def test_identifiers_that_could_name_another_key_are_refused(value: str) -> None:
    with pytest.raises(keys.InvalidIdentifier):
        keys.check_identifier(value, "id")


@settings(max_examples=300, deadline=None)
@given(st.text(st.sampled_from("aZ09._:-{} *\n\ré"), max_size=6) | st.sampled_from(["abc\n", "a" * 128, "a" * 129]))
def test_ingest_accepts_exactly_the_identifiers_the_api_accepts(value: str) -> None:
    api = TypeAdapter(Annotated[str, StringConstraints(pattern=keys.IDENTIFIER_PATTERN, max_length=128)])
    try:
        api.validate_python(value)
        api_accepts = True
    except ValidationError:
        api_accepts = False
    try:
        keys.check_identifier(value, "id")
        ingest_accepts = True
    except keys.InvalidIdentifier:
        ingest_accepts = False
    assert ingest_accepts == api_accepts, repr(value)


def test_seed_compatible_names() -> None:
    assert keys.order_key("18") == "orders:18"
    assert keys.inventory_key("store1") == "inventory:store1"
    assert keys.sku_member("0123456789") == "sku:0123456789"
    assert keys.sku_from_member("sku:0123456789") == "0123456789"
