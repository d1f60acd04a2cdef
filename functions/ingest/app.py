"""IngestFunction: a Kafka batch from the event source mapping into Redis.

Thin by design: the domain lives in `cachesync.ingest`. The whole invocation
fails when Redis cannot be reached, so the event source mapping retries the
batch; the retry converges because every write is applied once per offset.
"""

from __future__ import annotations

import gc
from functools import lru_cache
from typing import Any

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext

from cachesync.config import settings
from cachesync.connection import cache_auth_failure, get_client
from cachesync.ingest import Ingestor, build_ingestor, deadline_after
from cachesync.opstats import record_batch

logger = Logger(service="cachesync-ingest")
metrics = Metrics(namespace="CacheSync", service="cachesync-ingest")

# The modules imported above live as long as the process: keep them out of the collector's
# full passes, which a batch's many short-lived objects trigger.
gc.freeze()


@lru_cache(maxsize=1)
def ingestor() -> Ingestor:
    # built on the first invocation and reused while the environment is warm
    return build_ingestor(settings())


@metrics.log_metrics
@logger.inject_lambda_context
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    try:
        outcome = ingestor().process(event, deadline_after(context.get_remaining_time_in_millis()))
    except Exception as error:
        refusal = cache_auth_failure(error)
        if refusal is not None:
            # no retry helps until someone fixes the cache user; the batch is retried meanwhile, nothing skipped
            logger.error(
                "the cache refused IngestFunction's credentials or permissions: check the cache user, its secret "
                "(REDIS_SECRET_ARN) or IAM policy, and its access string (docs/security.md)",
                extra={"error": f"{type(refusal).__name__}: {refusal}"},
            )
            metrics.add_metric("CacheAuthFailed", MetricUnit.Count, 1)
        raise
    record_batch(get_client(settings()), outcome)  # the operator's page's figures; never fails the batch

    metrics.add_metric("RecordsApplied", MetricUnit.Count, outcome.applied)
    metrics.add_metric("DuplicatesSkipped", MetricUnit.Count, outcome.duplicates)
    metrics.add_metric("RecordsDeadLettered", MetricUnit.Count, outcome.dead_lettered)
    metrics.add_metric("KeyMismatch", MetricUnit.Count, outcome.key_mismatches)
    if outcome.key_mismatches:
        logger.warning(
            "KeyMismatch: records whose Kafka key breaks the keying rule (their key's order is not guaranteed)",
            extra={"keyMismatches": outcome.key_mismatches, "examples": outcome.mismatch_examples},
        )
    for span in outcome.partitions.values():
        if span.max_lag_ms is not None:
            metrics.add_metric("FreshnessLagMs", MetricUnit.Milliseconds, span.max_lag_ms)

    logger.info(
        "batch applied",
        extra={
            **outcome.summary(),
            "partitions": {
                name: {"first": s.first, "last": s.last, "records": s.records, "maxLagMs": s.max_lag_ms}
                for name, s in outcome.partitions.items()
            },
            **({"deadLetterReasons": outcome.reasons} if outcome.reasons else {}),
        },
    )
    return outcome.summary()
