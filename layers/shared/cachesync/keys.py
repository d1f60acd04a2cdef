"""The Redis key schema: the one place that knows how keys are named.

Data keys keep the names of the original design (`orders:18`,
`inventory:store1` with members `sku:<sku>`), so existing readers keep working.

Every data key keeps its applied position: field `<key>#<partition>` of a
positions hash -> the offset of the last record of that partition applied to the
key. A script checks and moves a key's position in the same atomic step as its
write (the fence: cachesync.plan, fence.lua), and reads and writes a call's
positions with one command each, so a call has one positions hash:
- on a cluster, the hash of the key's own slot, `cachesync:offsets:{<tag>}` (where
  `<tag>` hashes to that slot): a call is one slot's, so no CROSSSLOT;
- on a standalone server, one hash for every key, `cachesync:offsets:{positions}`.
  Servers written by an earlier version kept the cluster's hashes there too; the
  writer moves their positions into the one hash before its first write
  (cachesync.layout). A cache moved from a standalone server to a cluster is
  rebuilt (docs/operations.md).
The database's own hash (`cachesync:offsets`) holds what an operator needs
(below), never positions.
"""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path

from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot

# Identifiers that may appear in a key: no braces (hash tags), no spaces or
# glob characters, so no input can name another key or a pattern.
IDENTIFIER = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")
IDENTIFIER_PATTERN = IDENTIFIER.pattern

SKU_MEMBER_PREFIX = "sku:"
OFFSETS_KEY = "cachesync:offsets"
OFFSETS_PATTERN = OFFSETS_KEY + "*"  # the position hashes and the database's (for ACL key patterns)
POSITION_SEPARATOR = "#"  # never in a key: see IDENTIFIER
# The database's offsets hash (`cachesync:offsets`, in every topology)
# holds what an operator needs (cachesync.maintenance): `source:<topic>`, the Kafka bootstrap
# servers the topic was first applied from, so that a batch from another cluster is refused
# rather than taken for duplicates; and `diverged:<topic>/<partition>` (or `diverged:<topic>`),
# why the cache may differ from its log there: a skipped batch, or a rebuild under way.
# Kafka topic names hold neither ':' nor '/', so these never meet an offsets field.
SOURCE_PREFIX = "source:"
DIVERGED_PREFIX = "diverged:"
# What the operator's page shows (cachesync.opstats), written by IngestFunction after each
# batch: a capped stream of per-batch figures, and a hash `<topic>/<partition>` -> the last
# offset a batch processed (applied, skipped as a duplicate or dead-lettered). One key each,
# in every topology, so the read API reads them without a SCAN. Never the exactly-once
# authority: that stays the offsets hashes above.
BATCH_STATS_KEY = "cachesync:batches"
PROCESSED_KEY = "cachesync:processed"


class InvalidIdentifier(ValueError):
    pass


def check_identifier(value: str, what: str) -> str:
    if not IDENTIFIER.fullmatch(value):  # fullmatch: `$` alone would let a trailing newline through
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


# The positions of every key of a standalone server (above)
STANDALONE_POSITIONS_KEY = OFFSETS_KEY + ":{positions}"
# A field of the database's offsets hash: the positions layout of a standalone server once its
# positions are in STANDALONE_POSITIONS_KEY (cachesync.layout)
LAYOUT_FIELD = "layout"
ONE_POSITIONS_HASH = "positions-in-one-hash"


def offsets_key(slot: int | None = None) -> str:
    """The database's offsets hash (None), or the position hash of a hash slot."""
    if slot is None:
        return OFFSETS_KEY
    return positions_key(slot)


def positions_key(slot: int) -> str:
    """The hash of the applied positions of the keys in `slot`; it hashes to `slot` itself."""
    return _positions_keys()[slot]


@lru_cache(maxsize=1)
def _positions_keys() -> tuple[str, ...]:
    return tuple(f"{OFFSETS_KEY}:{{{tag}}}" for tag in _slot_tags())


def position_field(key: str, partition: int) -> str:
    """The field of `key`'s applied position for one partition, in its positions hash."""
    return f"{key}{POSITION_SEPARATOR}{partition}"


def positions_pattern(prefix: str) -> str:
    """An HSCAN pattern for the position fields of every key under `prefix`."""
    return f"{data_key(prefix, '*')}{POSITION_SEPARATOR}*"


def parse_position_field(field: str) -> tuple[str, int] | None:
    """(key, partition) of a position field; None for anything else."""
    key, separator, partition = field.rpartition(POSITION_SEPARATOR)
    if not separator or not key or not partition.isdigit():
        return None
    return key, int(partition)


def is_offsets_key(key: str) -> bool:
    return key == OFFSETS_KEY or key.startswith(OFFSETS_KEY + ":{")


SLOT_TAGS_FILE = Path(__file__).with_name("slot_tags.txt")


@lru_cache(maxsize=1)
def _slot_tags() -> tuple[str, ...]:
    """Each slot's tag, read once per process from the file that
    `compute_slot_tags` wrote: computing them (hashing numbers until every slot has one)
    would add to every cluster cold start."""
    tags = tuple(SLOT_TAGS_FILE.read_text().split())
    assert len(tags) == REDIS_CLUSTER_HASH_SLOTS, f"{SLOT_TAGS_FILE} is incomplete"
    return tags


def compute_slot_tags() -> tuple[str, ...]:
    """For each of the 16384 slots, the smallest number whose decimal text hashes to it."""
    tags: list[str | None] = [None] * REDIS_CLUSTER_HASH_SLOTS
    missing, n = REDIS_CLUSTER_HASH_SLOTS, 0
    while missing:
        slot = key_slot(str(n).encode())
        if tags[slot] is None:
            tags[slot] = str(n)
            missing -= 1
        n += 1
    return tuple(t for t in tags if t is not None)


def offsets_field(topic: str, partition: int) -> str:
    return f"{topic}/{partition}"


def source_field(topic: str) -> str:
    return SOURCE_PREFIX + topic


def diverged_field(topic: str, partition: int | None = None) -> str:
    return DIVERGED_PREFIX + (topic if partition is None else offsets_field(topic, partition))


def topic_of(field: str) -> str:
    """The topic of `<topic>/<partition>` or `<topic>` (topic names hold no '/')."""
    return field.split("/", 1)[0]


def parse_offsets_field(field: str) -> tuple[str, int] | None:
    """(topic, partition) of an applied-offset field; None for the other fields of the hash."""
    topic, _, partition = field.rpartition("/")
    if not topic or ":" in topic or not partition.isdigit():
        return None
    return topic, int(partition)
