"""A local Lambda event source mapping for Kafka: real topics in, a template's function invoked in-process.

The SAM CLI has no local Kafka trigger, so this reproduces what Lambda's
self-managed Kafka event source mapping does, as the AWS docs describe it:
one consumer group per mapping, StartingPosition, BatchSize, the batching
window and the 6 MB payload cap, per-partition order, the payload byte for
byte, offsets committed only after the function returns, whole-batch retries
read again from Kafka, and in provisioned mode MaximumRetryAttempts,
BisectBatchOnFunctionError, MaximumRecordAgeInSeconds, ReportBatchItemFailures
and on-failure destinations. Like Lambda's pollers it invokes the mappings and
their partitions concurrently, enforces the function's Timeout and goes
through consumer-group rebalances, so invocations of one partition can overlap.

    python -m devkit.esm --bootstrap 127.0.0.1:9092      # every mapping in template.yaml
"""

from devkit.esm.kafka import MappingError
from devkit.esm.mapping import MappingConfig, read_mappings
from devkit.esm.poller import LocalEventSourceMapping

__all__ = ["LocalEventSourceMapping", "MappingConfig", "MappingError", "read_mappings"]
