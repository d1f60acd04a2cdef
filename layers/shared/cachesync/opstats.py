"""The operator's figures: what IngestFunction did lately, and where each partition stands.

IngestFunction records each batch it finishes (`record_batch`): one entry in a
capped stream (records applied, duplicates skipped, dead letters and their
reasons, the worst freshness lag) and, per partition, the last offset the batch
processed. The read API's admin route folds them into one view
(`operator_view`): rates and a freshness series over the last minutes, the
dead letters' reasons, and each partition's processed offset. Kafka's end
offsets are not in Redis: the API cannot reach Kafka (deployed, the mappings'
OffsetLag metric has them; locally the gateway adds them).

These keys are for people, never for correctness: losing them loses no record.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from typing import TYPE_CHECKING, Any

import redis

from cachesync import keys
from cachesync.config import Settings
from cachesync.connection import RedisClient

if TYPE_CHECKING:  # the read API imports this module too: not the ingest path at its cold start
    from cachesync.ingest import BatchOutcome

logger = logging.getLogger(__name__)

BATCH_STATS_MAXLEN = 5000  # about an hour and a half at one batch a second per mapping
MAX_REASON_CHARS = 300
WINDOW_SECONDS = 300
BUCKET_SECONDS = 10
RATE_SECONDS = 60  # records applied per second: over the last minute
RECENT_DEAD_LETTERS = 10


def record_batch(client: RedisClient, outcome: BatchOutcome) -> None:
    """One stream entry for the batch, and its partitions' last offsets, in one round trip.

    Best effort: the batch is applied already, so a failure here is logged, never raised
    (a raised error would make the mapping retry a batch that would then be all duplicates).
    The entry's id is the server's time, so batches from every Lambda instance share one clock."""
    lags = [span.max_lag_ms for span in outcome.partitions.values() if span.max_lag_ms is not None]
    entry: dict[str, str | int] = {
        "applied": outcome.applied,
        "duplicates": outcome.duplicates,
        "deadLettered": outcome.dead_lettered,
        "lagMs": max(lags) if lags else "",
        "reasons": json.dumps([reason[:MAX_REASON_CHARS] for reason in outcome.reasons]),
    }
    processed: dict[str, int] = {}
    for name, span in outcome.partitions.items():  # Lambda names them <topic>-<partition>
        topic, _, partition = name.rpartition("-")
        if partition.isdigit():
            processed[keys.offsets_field(topic, int(partition))] = span.last
    try:
        pipe = client.pipeline(transaction=False)
        pipe.xadd(keys.BATCH_STATS_KEY, entry, maxlen=BATCH_STATS_MAXLEN, approximate=True)  # type: ignore[arg-type]
        if processed:
            pipe.hset(keys.PROCESSED_KEY, mapping=processed)  # type: ignore[arg-type]
        pipe.execute()
    except redis.exceptions.RedisError as error:
        logger.warning("could not record the batch's figures for the operator's page: %r", error)


def operator_view(client: RedisClient, settings: Settings, now_ms: int) -> dict[str, Any]:
    """Everything the operator's page shows, as JSON."""
    since = now_ms - WINDOW_SECONDS * 1000
    pipe = client.pipeline(transaction=False)
    pipe.xrevrange(keys.BATCH_STATS_KEY, max="+", min=str(since), count=BATCH_STATS_MAXLEN)
    pipe.hgetall(keys.PROCESSED_KEY)
    entries, processed = pipe.execute()

    buckets: dict[int, dict[str, Any]] = {}
    totals = Counter[str]()
    reasons = Counter[str]()
    applied_last_minute = 0
    last_batch_ms: int | None = None
    last_lag: int | None = None
    for entry_id, fields in entries:  # newest first
        at = int(_text(entry_id).split("-", 1)[0])
        values = {_text(k): _text(v) for k, v in fields.items()}
        applied, duplicates, dead = (int(values.get(n) or 0) for n in ("applied", "duplicates", "deadLettered"))
        lag = int(values["lagMs"]) if values.get("lagMs") else None
        if last_batch_ms is None:
            last_batch_ms = at
        if last_lag is None and lag is not None:
            last_lag = lag
        totals.update(applied=applied, duplicates=duplicates, deadLettered=dead, batches=1)
        if at >= now_ms - RATE_SECONDS * 1000:
            applied_last_minute += applied
        for reason in json.loads(values.get("reasons") or "[]"):
            reasons[str(reason)] += 1
        start = at - at % (BUCKET_SECONDS * 1000)
        bucket = buckets.setdefault(
            start, {"at": start, "applied": 0, "duplicates": 0, "deadLettered": 0, "maxLagMs": None}
        )
        bucket["applied"] += applied
        bucket["duplicates"] += duplicates
        bucket["deadLettered"] += dead
        if lag is not None and (bucket["maxLagMs"] is None or lag > bucket["maxLagMs"]):
            bucket["maxLagMs"] = lag

    partitions: dict[str, dict[str, int]] = {}
    for field, value in processed.items():
        parsed = keys.parse_offsets_field(_text(field))
        if parsed is not None:
            partitions.setdefault(parsed[0], {})[str(parsed[1])] = int(value)
    return {
        "now": now_ms,
        "windowSeconds": WINDOW_SECONDS,
        "bucketSeconds": BUCKET_SECONDS,
        "lastBatchAt": last_batch_ms,
        "appliedPerSecond": round(applied_last_minute / RATE_SECONDS, 2),
        "totals": {name: totals[name] for name in ("batches", "applied", "duplicates", "deadLettered")},
        "freshnessLagMs": last_lag,
        "series": [buckets[start] for start in sorted(buckets)],
        "deadLetters": {
            "sink": "sqs" if settings.dlq_queue_url else "stream",
            "reasons": [{"reason": reason, "count": count} for reason, count in reasons.most_common(20)],
            "recent": _recent_dead_letters(client, settings),
        },
        "partitions": {topic: _by_partition(offsets) for topic, offsets in sorted(partitions.items())},
    }


def _recent_dead_letters(client: RedisClient, settings: Settings) -> list[dict[str, Any]]:
    """The newest letters in the Redis stream (the sink without a queue, and the queue's fallback)."""
    letters = []
    for entry_id, fields in client.xrevrange(settings.dlq_stream_key, count=RECENT_DEAD_LETTERS) or []:
        values = {_text(k): _text(v) for k, v in (fields or {}).items()}
        letters.append(
            {
                "at": int(_text(entry_id).split("-", 1)[0]),
                "topic": values.get("topic"),
                "partition": int(values["partition"]) if values.get("partition") else None,
                "offset": int(values["offset"]) if values.get("offset") else None,
                "reason": (values.get("reason") or "")[:MAX_REASON_CHARS],
            }
        )
    return letters


def _by_partition(offsets: dict[str, int]) -> dict[str, int]:
    return dict(sorted(offsets.items(), key=lambda item: int(item[0])))


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
