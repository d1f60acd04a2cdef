"""The key schema: names, identifiers and the cluster slot tags."""

from __future__ import annotations

import string
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import TypeAdapter, ValidationError
from redis.crc import key_slot

from cachesync import api_schema, keys


def test_the_shipped_slot_tags_hash_to_their_slots() -> None:
    assert keys._slot_tags() == keys.compute_slot_tags()  # `make events` writes the file again
    assert all(key_slot(keys.offsets_key(slot).encode()) == slot for slot in range(16384))
    assert keys.offsets_key() == "cachesync:offsets"


@pytest.mark.parametrize("name", ["cachesync:offsets", "cachesync:offsets:{460}"])
def test_offsets_keys_are_recognised(name: str) -> None:
    assert keys.is_offsets_key(name)


# The README's rule, written out without a regular expression: 1-128 characters of ASCII
# letters, digits, '.', '_', ':' and '-', the first a letter or a digit.
ALPHANUMERIC = set(string.ascii_letters + string.digits)
ALLOWED = ALPHANUMERIC | set("._:-")


def readme_identifier(value: str) -> bool:
    return 1 <= len(value) <= 128 and value[0] in ALPHANUMERIC and all(c in ALLOWED for c in value)


@pytest.mark.parametrize("value", ["", "-1", "a b", "{x}", "x*", "é", "a" * 129, "abc\n", "abc\r\n"])
def test_identifiers_that_could_name_another_key_are_refused(value: str) -> None:
    with pytest.raises(keys.InvalidIdentifier):
        keys.check_identifier(value, "id")


@pytest.mark.parametrize("value", ["18", "store1", "0123456789", "A.b_c:d-e", "9-", "a" * 128])
def test_identifiers_the_readme_allows_are_accepted(value: str) -> None:
    assert keys.check_identifier(value, "id") == value


def _accepts(check: Callable[[str], object], value: str) -> bool:
    try:
        check(value)
    except (keys.InvalidIdentifier, ValidationError):
        return False
    return True


@settings(max_examples=300, deadline=None)
@given(st.text(st.sampled_from("aZ09._:-{} *\n\ré"), max_size=6) | st.sampled_from(["abc\n", "a" * 128, "a" * 129]))
def test_ingest_and_the_api_accept_exactly_the_readmes_identifiers(value: str) -> None:
    """The ingest check and the API's path parameters (pydantic, through Powertools), each
    against the rule as the README words it."""
    expected = readme_identifier(value)
    assert _accepts(lambda v: keys.check_identifier(v, "id"), value) == expected, repr(value)
    for parameter in (api_schema.OrderId, api_schema.Sku, api_schema.StoreId):
        assert _accepts(TypeAdapter(parameter).validate_python, value) == expected, repr(value)


def test_seed_compatible_names() -> None:
    assert keys.order_key("18") == "orders:18"
    assert keys.inventory_key("store1") == "inventory:store1"
    assert keys.sku_member("0123456789") == "sku:0123456789"
    assert keys.sku_from_member("sku:0123456789") == "0123456789"
