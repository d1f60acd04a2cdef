"""A standalone server's positions in one hash, and a cache written by an earlier version, which kept
them in a hash per slot as a cluster does (cachesync.layout), on Valkey 8 and Redis 7."""

from __future__ import annotations

import pytest
import redis
from redis.crc import key_slot

from cachesync import layout
from cachesync.ingest import build_ingestor
from devkit.generator import EventGenerator
from harness.model import model_state, redis_state
from tests.conftest import Target

ONE_HASH = "cachesync:offsets:{positions}"
# the earlier layout as that version named its hashes: `cachesync:offsets:{<tag>}`, the tag the
# smallest number whose decimal text hashes to the slot
_TAGS: dict[int, str] = {}


def slot_hash(slot: int) -> str:
    if not _TAGS:
        n = 0
        while len(_TAGS) < 16384:
            _TAGS.setdefault(key_slot(str(n).encode()), str(n))
            n += 1
    return f"cachesync:offsets:{{{_TAGS[slot]}}}"


@pytest.fixture(params=["valkey", "redis7"])
def standalone(request: pytest.FixtureRequest) -> Target:
    server = request.getfixturevalue(f"{request.param}_server")
    chosen = Target(request.param, server.url, cluster=False)
    chosen.flush()
    return chosen


def as_earlier_version(client: redis.Redis) -> int:
    """The cache as the earlier version left it: each position in its key's slot's hash; how many."""
    positions = {k.decode(): v for k, v in client.hgetall(ONE_HASH).items()}
    assert positions, "the batch wrote positions"
    client.delete(ONE_HASH)
    client.hdel("cachesync:offsets", "layout")
    for field, offset in positions.items():
        key = field.rpartition("#")[0]
        client.hset(slot_hash(key_slot(key.encode())), field, offset)
    return len(positions)


def test_positions_of_an_earlier_version_are_moved_and_a_replay_applies_nothing(standalone: Target) -> None:
    event = EventGenerator(seed=31, partitions=3, stores=4).batch(600)
    records = [r for chunk in event["records"].values() for r in chunk]
    build_ingestor(standalone.settings()).process(event)
    client = standalone.client()
    assert isinstance(client, redis.Redis)
    count = as_earlier_version(client)

    # a new writer (the new version's first invocation) gets the same batch again: a retry
    replay = build_ingestor(standalone.settings()).process(event)
    assert (replay.applied, replay.duplicates) == (0, len(records))
    assert redis_state(client) == model_state(standalone.settings(), records)
    assert client.hlen(ONE_HASH) == count
    assert client.hget("cachesync:offsets", "layout") == b"positions-in-one-hash"
    # each slot's hash is now a marker a writer of the earlier version fails on before it writes
    moved = {slot_hash(key_slot(f.decode().rpartition("#")[0].encode())) for f in client.hkeys(ONE_HASH)}
    for name in moved:
        assert client.type(name) == b"string" and 0 < client.ttl(name) <= 86_400
        with pytest.raises(redis.exceptions.ResponseError, match="WRONGTYPE"):
            client.hget(name, "orders:1#0")  # what the earlier fence reads first


def test_moving_twice_or_at_once_moves_each_position_once_and_keeps_the_higher_offset(standalone: Target) -> None:
    client = standalone.client()
    assert isinstance(client, redis.Redis)
    client.hset(slot_hash(key_slot(b"orders:7")), mapping={"orders:7#0": 40, "orders:7#1": 3})
    client.hset(ONE_HASH, "orders:7#0", 55)  # a writer that finished its move wrote a newer one
    assert layout.ensure_one_hash(client) == 2
    client.hdel("cachesync:offsets", "layout")  # another writer that read the layout before it was set
    assert layout.ensure_one_hash(client) == 0
    assert client.hgetall(ONE_HASH) == {b"orders:7#0": b"55", b"orders:7#1": b"3"}


def test_a_new_cache_is_not_written_before_the_first_batch(standalone: Target) -> None:
    client = standalone.client()
    assert isinstance(client, redis.Redis)
    assert layout.ensure_one_hash(client) == 0
    assert client.dbsize() == 0


def test_maintenance_reads_and_clears_the_moved_positions_beside_the_markers(standalone: Target) -> None:
    from cachesync import maintenance

    event = EventGenerator(seed=32, partitions=2, stores=3).batch(200, ["orders"])
    records = [r for chunk in event["records"].values() for r in chunk]
    settings = standalone.settings()
    build_ingestor(settings).process(event)
    client = standalone.client()
    assert isinstance(client, redis.Redis)
    as_earlier_version(client)
    build_ingestor(settings).process(event)  # moves them
    last: dict[int, int] = {}
    for record in records:
        last[record["partition"]] = max(last.get(record["partition"], -1), record["offset"])
    topic = records[0]["topic"]
    assert maintenance.applied_offsets(client, settings) == {(topic, p): o for p, o in last.items()}
    positions = client.hlen(ONE_HASH)
    cleared = maintenance.clear_topic(client, settings, topic)
    assert positions > 0 and cleared.offsets == positions
    assert client.hlen(ONE_HASH) == 0
