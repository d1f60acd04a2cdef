"""MaintenanceFunction and MappingFailuresFunction: the operator's view of the cache, and its repair.

Thin by design: the work lives in `cachesync.maintenance`.

- `lambda_handler` (MaintenanceFunction), run with `sam remote invoke`:
  `{"action": "status"}`, `{"action": "clear", "topic": "inventory"}` (the topic's
  mapping disabled first), `{"action": "finish", "topic": "inventory"}`; see
  docs/deploy.md, "Rebuild".
- `failures_handler` (MappingFailuresFunction) reads the mappings' on-failure
  queue, or the skipped records' topic (SkippedBatchesTopic): each invocation
  record marks the partitions whose records were skipped, so `status` shows
  where the cache has diverged from its log.
"""

from __future__ import annotations

from dataclasses import asdict
from functools import lru_cache
from typing import Any

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext

from cachesync import maintenance
from cachesync.config import settings
from cachesync.connection import RedisClient, get_client

logger = Logger(service="cachesync-maintenance")
metrics = Metrics(namespace="CacheSync", service="cachesync-maintenance")


@lru_cache(maxsize=1)
def client() -> RedisClient:
    return get_client(settings())


@logger.inject_lambda_context
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    action = event.get("action") if isinstance(event, dict) else None
    topic = event.get("topic") if isinstance(event, dict) else None
    if action == "status":
        return maintenance.status(client(), settings())
    if action in ("clear", "finish") and isinstance(topic, str) and settings().topic(topic) is not None:
        if action == "clear":
            cleared = asdict(maintenance.clear_topic(client(), settings(), topic))
            logger.warning("topic cleared for a rebuild", extra=cleared)
            return cleared
        maintenance.finish_rebuild(client(), topic)
        return {"topic": topic, "finished": True}
    topics = ", ".join(t.topic for t in settings().topics)
    raise ValueError(
        'expected {"action": "status"} or {"action": "clear" | "finish", "topic": <one of ' + topics + ">}"
    )


@metrics.log_metrics
@logger.inject_lambda_context
def failures_handler(event: dict[str, Any], context: LambdaContext) -> None:
    """Invocation records from the on-failure queue (SQS) or the skipped records' topic (Kafka)."""
    for document in maintenance.invocation_records(event):
        if document is None:
            logger.error("not an invocation record; left out")
            continue
        marked = maintenance.record_skips(client(), document)
        metrics.add_metric("BatchesSkipped", MetricUnit.Count, 1)
        logger.error("a mapping skipped records: the cache has diverged", extra={"partitions": marked, **document})
