"""Where poison records go: an SQS queue when configured, else a capped Redis stream.

Each dead letter carries the raw record as it arrived (base64 key and value,
headers), its coordinates and the reason, so it can be fixed and replayed.
Dead letters are delivered at least once: a retried batch may send a record's
dead letter again.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from typing import Any, Protocol

from cachesync.connection import RedisClient


@dataclass(frozen=True)
class DeadLetter:
    topic: str
    partition: int | None
    offset: int | None
    timestamp: int | None
    key: str | None  # base64, as in the event
    value: str | None  # base64, as in the event
    headers: Any
    reason: str

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"), default=str)


class DeadLetterSink(Protocol):
    def send(self, letters: list[DeadLetter]) -> None: ...


class RedisStreamSink:
    """A capped stream (`XADD ... MAXLEN ~ n`), readable with XRANGE."""

    def __init__(self, client: RedisClient, stream_key: str, maxlen: int):
        self._client, self._key, self._maxlen = client, stream_key, maxlen

    def send(self, letters: list[DeadLetter]) -> None:
        if not letters:
            return
        pipe = self._client.pipeline(transaction=False)
        for letter in letters:
            fields = {
                "topic": letter.topic,
                "partition": "" if letter.partition is None else letter.partition,
                "offset": "" if letter.offset is None else letter.offset,
                "reason": letter.reason,
                "record": letter.to_json(),
            }
            pipe.xadd(self._key, fields, maxlen=self._maxlen, approximate=True)  # type: ignore[arg-type]
        pipe.execute()


# SendMessageBatch takes ten messages and 256 KiB in all; keep a margin for attributes.
SQS_BATCH_ENTRIES = 10
SQS_BATCH_BYTES = 240_000


class SqsSink:
    """Sends dead letters to SQS in as few SendMessageBatch calls as the limits allow."""

    def __init__(self, queue_url: str, sqs_client: Any = None):
        if sqs_client is None:
            import boto3  # imported only when a queue is configured: it costs cold-start time

            sqs_client = boto3.client("sqs")
        self._sqs, self._url = sqs_client, queue_url

    def send(self, letters: list[DeadLetter]) -> None:
        batch: list[dict[str, Any]] = []
        size = 0
        for letter in letters:
            entry = self._entry(len(batch), letter)
            entry_size = len(entry["MessageBody"]) + len(letter.reason) + 200
            if batch and (len(batch) == SQS_BATCH_ENTRIES or size + entry_size > SQS_BATCH_BYTES):
                self._send(batch)
                batch, size = [], 0
                entry["Id"] = "0"
            batch.append(entry)
            size += entry_size
        if batch:
            self._send(batch)

    @staticmethod
    def _entry(n: int, letter: DeadLetter) -> dict[str, Any]:
        body = letter.to_json()
        if len(body) > SQS_BATCH_BYTES:
            # Too large for SQS: keep coordinates and reason; the record stays in Kafka.
            omitted = replace(
                letter,
                value=None,
                reason=f"{letter.reason} (value of {len(letter.value or '')} "
                "base64 characters omitted: over the SQS message size limit)",
            )
            body = omitted.to_json()
        return {
            "Id": str(n),
            "MessageBody": body,
            "MessageAttributes": {
                "reason": {"DataType": "String", "StringValue": letter.reason[:1024]},
                "topic": {"DataType": "String", "StringValue": letter.topic or "-"},
            },
        }

    def _send(self, entries: list[dict[str, Any]]) -> None:
        response = self._sqs.send_message_batch(QueueUrl=self._url, Entries=entries)
        if response.get("Failed"):
            # fail the invocation: the retry sends them again rather than losing them
            raise RuntimeError(f"SQS refused {len(response['Failed'])} dead letters: {response['Failed'][:3]}")
