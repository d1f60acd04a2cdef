"""Where poison records go: an SQS queue when configured, else a capped Redis stream.

Each dead letter carries the raw record as it arrived (base64 key and value,
headers), its coordinates and the reason, so it can be fixed and replayed.
Dead letters are delivered at least once: a retried batch may send a record's
dead letter again.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, replace
from typing import Any, Protocol

from cachesync.connection import RedisClient

logger = logging.getLogger(__name__)


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


# SendMessageBatch takes ten messages and 256 KiB in all, and so does one message
# (body and attributes); keep a margin for the attributes.
SQS_BATCH_ENTRIES = 10
SQS_BATCH_BYTES = 240_000
SQS_MESSAGE_BYTES = 240_000
MAX_REASON_CHARS = 4096

# Short timeouts and the standard retry mode: a stalled or unreachable SQS fails
# the send within seconds (boto3's defaults wait 60 s per attempt), and the
# letters then go to the Redis stream instead.
SQS_CONNECT_TIMEOUT = 1.0
SQS_READ_TIMEOUT = 2.0
SQS_MAX_ATTEMPTS = 3


def sqs_client(endpoint_url: str | None = None) -> Any:
    import boto3  # imported only when a queue is configured: it costs cold-start time
    from botocore.config import Config

    config = Config(
        connect_timeout=SQS_CONNECT_TIMEOUT,
        read_timeout=SQS_READ_TIMEOUT,
        retries={"mode": "standard", "total_max_attempts": SQS_MAX_ATTEMPTS},
    )
    return boto3.client("sqs", config=config, endpoint_url=endpoint_url)


class SqsSink:
    """Sends dead letters to SQS in as few SendMessageBatch calls as the limits allow."""

    def __init__(self, queue_url: str, sqs: Any = None):
        self._sqs, self._url = sqs if sqs is not None else sqs_client(), queue_url

    def send(self, letters: list[DeadLetter]) -> None:
        batch: list[dict[str, Any]] = []
        size = 0
        for letter in letters:
            entry = self._entry(len(batch), letter)
            entry_size = len(entry["MessageBody"]) + len(entry["MessageAttributes"]["reason"]["StringValue"]) + 200
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
        letter = fit(letter, SQS_MESSAGE_BYTES)
        return {
            "Id": str(n),
            "MessageBody": letter.to_json(),
            "MessageAttributes": {
                "reason": {"DataType": "String", "StringValue": letter.reason[:1024]},
                "topic": {"DataType": "String", "StringValue": letter.topic[:256] or "-"},
            },
        }

    def _send(self, entries: list[dict[str, Any]]) -> None:
        response = self._sqs.send_message_batch(QueueUrl=self._url, Entries=entries)
        if response.get("Failed"):
            # fail the send: the fallback (or the retried invocation) takes them
            raise RuntimeError(f"SQS refused {len(response['Failed'])} dead letters: {response['Failed'][:3]}")


def fit(letter: DeadLetter, limit: int) -> DeadLetter:
    """The letter, with value, headers, then key dropped until its JSON fits `limit`
    characters (ASCII: json.dumps escapes the rest); the reason says what was dropped.
    Coordinates and reason always stay: the record itself is still in Kafka."""
    if len(letter.reason) > MAX_REASON_CHARS:
        letter = replace(letter, reason=letter.reason[:MAX_REASON_CHARS] + "...")
    body = letter.to_json()
    if len(body) <= limit:
        return letter
    dropped: list[str] = []
    for name in ("value", "headers", "key"):
        original = getattr(letter, name)
        if not original:
            continue
        size = len(json.dumps(original, separators=(",", ":"), default=str))
        dropped.append(f"{name} ({size} characters)")
        letter = _without(letter, name)
        if len(letter.to_json()) + 200 <= limit:  # room for the note below
            break
    return replace(letter, reason=f"{letter.reason} [trimmed to fit the dead-letter queue: {', '.join(dropped)}]")


def _without(letter: DeadLetter, name: str) -> DeadLetter:
    if name == "value":
        return replace(letter, value=None)
    if name == "headers":
        return replace(letter, headers=None)
    return replace(letter, key=None)


class FallbackSink:
    """The first sink, and the second for a send the first could not take (SQS down)."""

    def __init__(self, primary: DeadLetterSink, fallback: DeadLetterSink):
        self._primary, self._fallback = primary, fallback
        self.fallbacks = 0  # sends that went to the fallback, in this process

    def send(self, letters: list[DeadLetter]) -> None:
        if not letters:
            return
        try:
            self._primary.send(letters)
        except Exception as error:  # boto3 raises several unrelated types for a dead endpoint
            logger.warning(
                "dead-letter queue unavailable, %d dead letters go to the fallback sink: %r", len(letters), error
            )
            self.fallbacks += 1
            self._fallback.send(letters)  # at least once: some may have reached the queue already
