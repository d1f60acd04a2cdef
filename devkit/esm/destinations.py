"""On-failure destinations: what Lambda sends when it gives up on records.

- SQS and SNS get the invocation record: metadata only (which offsets, why);
- S3 gets the metadata and the whole payload, as an escaped JSON string;
- a Kafka topic (`kafka://<topic>`, on the same cluster) gets one message per
  record, keyed as the record was, with the one-record event inside;
- `file://<dir>` writes S3's objects to a folder: the local stand-in for a
  destination that exists only in the cloud (the template's queue, say).
"""

from __future__ import annotations

import base64
import datetime
import json
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from devkit.esm import payload
from devkit.esm.mapping import MappingConfig
from devkit.esm.payload import Record

# the condition strings as the AWS docs give them, which differ by destination
PAYLOAD_TOO_LARGE = "MaximumPayloadSizeExceeded"
RETRIES_EXHAUSTED = "RetryAttemptsExhausted"
RECORD_TOO_OLD = "MaximumRecordAgeExceeded"
KAFKA_RETRIES_EXHAUSTED = "RetriesExhausted"


def _iso(epoch_ms: float) -> str:
    moment = datetime.datetime.fromtimestamp(epoch_ms / 1000, tz=datetime.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def invocation_record(
    config: MappingConfig,
    records: Sequence[Record],
    condition: str,
    invoke_count: int,
    function_error: str | None,
    now_ms: float,
) -> dict[str, Any]:
    """The JSON document Lambda sends to an SQS, SNS or S3 destination for a batch it gave up on."""
    infos: dict[str, dict[str, str]] = {}
    for record in records:
        info = infos.setdefault(
            record.partition_key,
            {"firstRecordOffset": str(record.offset), "firstRecordTimestamp": _iso(record.timestamp)},
        )
        info["lastRecordOffset"] = str(record.offset)
        info["lastRecordTimestamp"] = _iso(record.timestamp)
    return {
        "requestContext": {
            "requestId": str(uuid.uuid4()),
            "functionArn": _function_arn(config),
            "condition": condition,
            "approximateInvokeCount": invoke_count,
        },
        "responseContext": None
        if condition == PAYLOAD_TOO_LARGE
        else {"statusCode": 200, "executedVersion": "$LATEST", "functionError": function_error or ""},
        "version": "1.0",
        "timestamp": _iso(now_ms),
        "KafkaBatchInfo": {
            "batchSize": len(records),
            "bootstrapServers": ",".join(config.bootstrap_servers),
            "payloadSize": payload.payload_size(records, config.bootstrap_servers),
            "recordsInfo": infos,
        },
    }


def _function_arn(config: MappingConfig) -> str:
    return f"arn:aws:lambda:us-east-1:123456789012:function:{config.function}"


class Destinations:
    """Sends failed records to the mapping's on-failure destination."""

    def __init__(
        self,
        config: MappingConfig,
        kafka_settings: dict[str, Any],
        fallback_dir: Path,
        subscriber: Callable[[dict[str, Any]], None] | None = None,
    ):
        self.config = config
        # what the template subscribes to its destination (MappingFailuresFunction), given each record
        self._subscriber = subscriber
        self.target = config.on_failure
        self._kafka_settings = kafka_settings
        self._fallback_dir = fallback_dir
        self._producer: Any = None
        self.sent = 0  # records given to the destination

    @property
    def configured(self) -> bool:
        return self.target is not None

    def describe(self) -> str:
        if self.target is None:
            return "none"
        return self.target if self._reachable(self.target) else f"{self._fallback_dir} (for {self.target})"

    def send(
        self, records: Sequence[Record], condition: str, invoke_count: int, function_error: str | None, now_ms: float
    ) -> None:
        target = self.target
        if target is None or not records:
            return
        if target.startswith("kafka://"):
            self._to_kafka(target.removeprefix("kafka://"), records, condition, invoke_count, function_error, now_ms)
        else:
            document = invocation_record(self.config, records, condition, invoke_count, function_error, now_ms)
            if target.startswith("arn:aws:sqs:"):
                self._to_sqs(target, document)
            elif target.startswith("arn:aws:sns:"):
                self._to_sns(target, document)
            else:
                document["payload"] = json.dumps(payload.event(records, self.config.bootstrap_servers))
                if target.startswith("arn:aws:s3:::"):
                    self._to_s3(target.removeprefix("arn:aws:s3:::"), records, document)
                else:
                    self._to_folder(target, records, document)
            if self._subscriber is not None:
                self._subscriber(document)
        self.sent += len(records)

    def _reachable(self, target: str) -> bool:
        return target.startswith(("kafka://", "arn:aws:sqs:", "arn:aws:sns:", "arn:aws:s3:::", "file://"))

    def _to_kafka(
        self,
        topic: str,
        records: Sequence[Record],
        condition: str,
        invoke_count: int,
        function_error: str | None,
        now_ms: float,
    ) -> None:
        from confluent_kafka import Producer

        if self._producer is None:
            self._producer = Producer({**self._kafka_settings, "partitioner": "murmur2_random", "acks": "all"})
        for record in records:
            document = invocation_record(
                self.config, [record], KAFKA_RETRIES_EXHAUSTED, invoke_count, function_error, now_ms
            )
            info = document["KafkaBatchInfo"]
            info.pop("recordsInfo")
            info["recordInfo"] = {"offset": str(record.offset), "timestamp": _iso(record.timestamp)}
            document["requestContext"]["condition"] = (
                KAFKA_RETRIES_EXHAUSTED if condition == RETRIES_EXHAUSTED else condition
            )
            document["payload"] = payload.event([record], self.config.bootstrap_servers)
            key = record.body.get("key")
            self._producer.produce(
                topic, value=json.dumps(document).encode(), key=None if key is None else base64.b64decode(key)
            )
        if self._producer.flush(30):
            raise RuntimeError(f"the on-failure topic {topic!r} did not take the failed records within 30 s")

    def _to_sqs(self, arn: str, document: dict[str, Any]) -> None:
        import boto3

        _, _, _, region, account, name = arn.split(":", 5)
        sqs = boto3.client("sqs", region_name=region)
        url = sqs.get_queue_url(QueueName=name, QueueOwnerAWSAccountId=account)["QueueUrl"]
        sqs.send_message(QueueUrl=url, MessageBody=json.dumps(document))

    def _to_sns(self, arn: str, document: dict[str, Any]) -> None:
        import boto3

        boto3.client("sns", region_name=arn.split(":")[3]).publish(TopicArn=arn, Message=json.dumps(document))

    def _object_key(self, records: Sequence[Record]) -> str:
        now = datetime.datetime.now(datetime.UTC)
        return (
            f"aws/lambda/{self.config.logical_id}/{records[0].partition_key}/{now:%Y/%m/%d}/"
            f"{now:%Y-%m-%dT%H.%M.%S}-{uuid.uuid4()}"
        )

    def _to_s3(self, bucket: str, records: Sequence[Record], document: dict[str, Any]) -> None:
        import boto3

        boto3.client("s3").put_object(Bucket=bucket, Key=self._object_key(records), Body=json.dumps(document).encode())

    def _to_folder(self, target: str, records: Sequence[Record], document: dict[str, Any]) -> None:
        folder = Path(target.removeprefix("file://")) if target.startswith("file://") else self._fallback_dir
        path = folder / (self._object_key(records).replace("/", "_") + ".json")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(document, indent=1))

    def close(self) -> None:
        if self._producer is not None:
            self._producer.flush(10)
            self._producer = None
