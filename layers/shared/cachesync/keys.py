"""The Redis key schema: the one place that knows how keys are named.

Data keys keep the names of the original design (`orders:18`,
`inventory:store1` with members `sku:<sku>`), so existing readers keep working.

Each data key has a companion `{<key>}:offsets` hash that records, per Kafka
topic-partition, the last offset applied to that key. The braces make Redis
Cluster hash only `<key>`, so the companion lives in the same slot as the data
key and one script can update both atomically (no CROSSSLOT).
"""

from __future__ import annotations

import re

# Identifiers that may appear in a key: no braces (hash tags), no spaces or
# glob characters, so no input can name another key or a pattern.
IDENTIFIER = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")
IDENTIFIER_PATTERN = IDENTIFIER.pattern

SKU_MEMBER_PREFIX = "sku:"
OFFSETS_SUFFIX = ":offsets"


class InvalidIdentifier(ValueError):
    pass


def check_identifier(value: str, what: str) -> str:
    if not IDENTIFIER.match(value):
        raise InvalidIdentifier(
            f"{what} {value[:64]!r} is not a valid identifier "
            "(1-128 characters: letters, digits, '.', '_', ':', '-'; starting with a letter or digit)"
        )
    return value


def data_key(prefix: str, identifier: str) -> str:
    return f"{prefix}:{identifier}"


def order_key(order_id: str, prefix: str = "orders") -> str:
    return data_key(prefix, order_id)


def product_key(sku: str, prefix: str = "products") -> str:
    return data_key(prefix, sku)


def inventory_key(store: str, prefix: str = "inventory") -> str:
    return data_key(prefix, store)


def sku_member(sku: str) -> str:
    return SKU_MEMBER_PREFIX + sku


def sku_from_member(member: str) -> str:
    return member[len(SKU_MEMBER_PREFIX) :] if member.startswith(SKU_MEMBER_PREFIX) else member


def offsets_key(key: str) -> str:
    """The companion hash of applied offsets; same cluster slot as `key`."""
    return "{" + key + "}" + OFFSETS_SUFFIX


def offsets_field(topic: str, partition: int) -> str:
    return f"{topic}/{partition}"
