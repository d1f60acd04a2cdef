"""What an operator needs to see the cache against its log, and to repair it.

- `status`: each partition's applied offset (the highest position any key of
  it holds), each topic's source, divergence markers, the dead letters waiting
  in the stream.
- `record_skip`: marks a topic-partition as diverged when the event source
  mapping gave up on a batch (its on-failure destination says which offsets).
- `clear_topic`: deletes a topic's keys and their applied positions together, and
  marks the topic as rebuilding until `finish_rebuild`; replaying the topic
  from its earliest offset then gives exactly the state of applying it once.
  The topic's mapping must be stopped meanwhile (docs/deploy.md, "Rebuild").

Markers and sources are fields of the database's offsets hash; positions are fields of
the positions hashes (a slot's on a cluster, the one hash of a standalone server: see `keys`).
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from redis.cluster import RedisCluster

from cachesync import keys
from cachesync.config import Settings
from cachesync.connection import RedisClient

SCAN_COUNT = 1000


class SourceChanged(RuntimeError):
    """A batch comes from another Kafka cluster than the one its topic was applied from."""


def normalized_servers(bootstrap: str) -> str:
    return ",".join(sorted(s.strip() for s in bootstrap.split(",") if s.strip()))


def check_source(client: RedisClient, topic: str, bootstrap: str) -> None:
    """Remembers the topic's first source; refuses a batch from another one (offsets of another
    log would make its records look like duplicates, or apply them over the old log's state)."""
    servers = normalized_servers(bootstrap)
    field = keys.source_field(topic)
    known = client.hget(keys.OFFSETS_KEY, field)
    if known is None:
        client.hset(keys.OFFSETS_KEY, field, servers)
        return
    known_text = known.decode() if isinstance(known, bytes) else str(known)
    if known_text != servers:
        raise SourceChanged(
            f"topic {topic!r} was applied from Kafka at {known_text}; this batch comes from {servers}. "
            "If the log changed (another cluster, a recreated topic), rebuild the topic "
            "(docs/deploy.md, Rebuild); if only the address changed, set the new one with "
            f"`HSET {keys.OFFSETS_KEY} {field} {servers}`"
        )


def record_skip(client: RedisClient, topic: str, partition: int, first: int, last: int, condition: str) -> None:
    """The mapping gave up on offsets first..last of a partition: the cache has diverged since `first`."""
    field = keys.diverged_field(topic, partition)
    existing = _json(client.hget(keys.OFFSETS_KEY, field))
    since = min(first, existing["since"]) if existing else first
    marker = {"state": "skipped", "since": since, "last": max(last, existing.get("last", last)), "why": condition}
    marker["at"] = int(time.time() * 1000)
    client.hset(keys.OFFSETS_KEY, field, json.dumps(marker))


def record_skips(client: RedisClient, document: dict[str, Any]) -> list[str]:
    """Marks what an on-failure invocation record says the mapping gave up on; returns the
    topic-partitions marked. SQS, SNS and S3 records carry `KafkaBatchInfo.recordsInfo`; a Kafka
    destination's carries one record, in `payload`."""
    condition = str((document.get("requestContext") or {}).get("condition") or "unknown")
    info = document.get("KafkaBatchInfo") or {}
    spans: dict[str, tuple[int, int]] = {}
    for name, span in (info.get("recordsInfo") or {}).items():
        spans[name] = (int(span["firstRecordOffset"]), int(span["lastRecordOffset"]))
    payload = document.get("payload")
    if isinstance(payload, str):
        payload = json.loads(payload)
    if not spans and isinstance(payload, dict):
        for name, records in (payload.get("records") or {}).items():
            offsets = [int(r["offset"]) for r in records]
            spans[name] = (min(offsets), max(offsets))
    for name, (first, last) in spans.items():
        topic, _, partition = name.rpartition("-")
        record_skip(client, topic, int(partition), first, last, condition)
    return sorted(spans)


def invocation_records(event: dict[str, Any]) -> Iterator[dict[str, Any] | None]:
    """The on-failure invocation records an event carries: an SQS message body each, or a Kafka
    record's value each (a Kafka destination's); None for one that is not JSON."""
    if event.get("eventSource") in ("SelfManagedKafka", "aws:SelfManagedKafka", "aws:kafka"):
        texts = [
            base64.b64decode(r["value"]) if isinstance(r, dict) and r.get("value") else None
            for records in (event.get("records") or {}).values()
            for r in records
        ]
    else:
        texts = [m.get("body") if isinstance(m, dict) else None for m in event.get("Records") or []]
    for text in texts:
        try:
            document = json.loads(text) if text is not None else None
        except ValueError:
            document = None
        yield document if isinstance(document, dict) else None


@dataclass
class Cleared:
    topic: str
    keys: int
    offsets: int


def clear_topic(client: RedisClient, settings: Settings, topic: str) -> Cleared:
    """Deletes the topic's data keys and their applied positions, leaving it marked as rebuilding.

    The positions go first: a replay from the earliest offset must find none, or it would
    skip its records as applied. The topic's mapping is stopped meanwhile (docs/deploy.md)."""
    config = settings.topic(topic)
    if config is None:
        raise ValueError(f"no projection is configured for topic {topic!r}")
    marker = keys.diverged_field(topic)
    # first the marker, so an interrupted clear shows as one; running it again completes it
    client.hset(keys.OFFSETS_KEY, marker, json.dumps({"state": "clearing", "at": int(time.time() * 1000)}))
    positions = 0
    pattern = keys.positions_pattern(config.key_prefix)
    for key in _positions_keys(client):
        fields = [_text(f) for f, _ in client.hscan_iter(key, match=pattern, count=SCAN_COUNT)]
        for start in range(0, len(fields), SCAN_COUNT):
            positions += int(client.hdel(key, *fields[start : start + SCAN_COUNT]))
    deleted = 0
    batch: list[str] = []
    for key in _scan(client, keys.data_key(config.key_prefix, "*")):
        batch.append(key)
        if len(batch) >= SCAN_COUNT:
            deleted += _delete(client, batch)
            batch = []
    deleted += _delete(client, batch)
    client.hdel(keys.OFFSETS_KEY, keys.source_field(topic))
    client.hset(keys.OFFSETS_KEY, marker, json.dumps({"state": "rebuilding", "at": int(time.time() * 1000)}))
    return Cleared(topic, deleted, positions)


def finish_rebuild(client: RedisClient, topic: str) -> None:
    """The topic was replayed from its earliest offset: no marker of it remains."""
    fields = [f for f in _fields(client, keys.OFFSETS_KEY) if f.startswith(keys.DIVERGED_PREFIX)]
    mine = [f for f in fields if keys.topic_of(f.removeprefix(keys.DIVERGED_PREFIX)) == topic]
    if mine:
        client.hdel(keys.OFFSETS_KEY, *mine)


def applied_offsets(client: RedisClient, settings: Settings) -> dict[tuple[str, int], int]:
    """Each topic-partition's last applied offset: the highest position a key of the topic holds for
    it. Reads every position (an operator's command, not the ingest path)."""
    prefixes = sorted(((t.key_prefix + ":", t.topic) for t in settings.topics), key=lambda p: -len(p[0]))
    applied: dict[tuple[str, int], int] = {}
    for key in _positions_keys(client):
        for field, value in client.hscan_iter(key, count=SCAN_COUNT):
            parsed = keys.parse_position_field(_text(field))
            if parsed is None:
                continue
            topic = next((topic for prefix, topic in prefixes if parsed[0].startswith(prefix)), None)
            if topic is not None:
                applied[(topic, parsed[1])] = max(applied.get((topic, parsed[1]), -1), int(value))
    return applied


def status(client: RedisClient, settings: Settings) -> dict[str, Any]:
    """The cache's side of the picture, as JSON: offsets, sources, markers, dead letters."""
    meta = _hash(client, keys.OFFSETS_KEY)
    topics: dict[str, Any] = {}
    for (topic, partition), offset in sorted(applied_offsets(client, settings).items()):
        topics.setdefault(topic, {"partitions": {}})["partitions"][str(partition)] = offset
    for field, value in meta.items():
        if field.startswith(keys.SOURCE_PREFIX):
            topics.setdefault(field.removeprefix(keys.SOURCE_PREFIX), {"partitions": {}})["source"] = value
    diverged = {
        field.removeprefix(keys.DIVERGED_PREFIX): _json(value)
        for field, value in meta.items()
        if field.startswith(keys.DIVERGED_PREFIX)
    }
    try:
        dead_letters: int | None = int(client.xlen(settings.dlq_stream_key))
    except Exception:  # a user without XLEN, or a cluster without the stream
        dead_letters = None
    return {"topics": topics, "diverged": diverged, "deadLetters": dead_letters}


# --- reading across topologies ---------------------------------------------------------
def _positions_keys(client: RedisClient) -> list[str]:
    # hashes only: a slot's hash whose positions moved into a standalone server's one hash is a
    # marker string for a day (cachesync.layout)
    found = set(_scan(client, keys.OFFSETS_PATTERN, kind="hash"))
    return sorted(k for k in found if keys.is_offsets_key(k) and k != keys.OFFSETS_KEY)


def _scan(client: RedisClient, pattern: str, kind: str | None = None) -> Iterator[str]:
    if isinstance(client, RedisCluster):
        seen: set[str] = set()
        for node in client.get_primaries():  # type: ignore[no-untyped-call]
            for key in client.scan_iter(match=pattern, count=SCAN_COUNT, _type=kind, target_nodes=node):
                text = _text(key)
                if text not in seen:
                    seen.add(text)
                    yield text
    else:
        for key in client.scan_iter(match=pattern, count=SCAN_COUNT, _type=kind):
            yield _text(key)


def _delete(client: RedisClient, names: list[str]) -> int:
    if not names:
        return 0
    if isinstance(client, RedisCluster):
        return sum(int(client.delete(name)) for name in names)
    return int(client.delete(*names))


def _hash(client: RedisClient, key: str) -> dict[str, str]:
    return {_text(f): _text(v) for f, v in client.hgetall(key).items()}


def _fields(client: RedisClient, key: str) -> list[str]:
    return [_text(f) for f in client.hkeys(key)]


def _json(value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    try:
        loaded = json.loads(value)
    except ValueError:
        return {"state": "unreadable", "raw": _text(value)}
    return loaded if isinstance(loaded, dict) else {"state": "unreadable", "raw": _text(value)}


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
