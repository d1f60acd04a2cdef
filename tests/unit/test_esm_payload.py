"""The local mapping's payload sizes: the 6 MB cap is checked without encoding every record."""

from __future__ import annotations

import base64
import json
from typing import Any

from confluent_kafka import Message
from hypothesis import given
from hypothesis import strategies as st

from devkit.esm.payload import encoded_size, event, from_message, lambda_record, payload_size

names = st.text(min_size=1, max_size=20)
records = st.builds(
    lambda_record,
    topic=names,
    partition=st.integers(0, 2**31 - 1),
    offset=st.integers(0, 2**53),
    timestamp=st.integers(0, 2**45),
    key=st.none() | st.binary(max_size=50),
    value=st.none() | st.binary(max_size=200),
    headers=st.lists(st.tuples(names, st.none() | st.binary(max_size=20)), max_size=3),
    timestamp_type=st.sampled_from(["CREATE_TIME", "LOG_APPEND_TIME"]),
)


@given(records)
def test_a_records_size_is_never_underestimated_and_close(body: dict) -> None:
    actual = len(json.dumps(body, separators=(",", ":")).encode()) + 1
    assert actual <= encoded_size(body) <= actual + 8


@given(st.lists(records, max_size=20))
def test_an_events_size_is_never_underestimated(bodies: list[dict]) -> None:
    from devkit.esm.payload import Record

    batch = [Record(b["topic"], b["partition"], b["offset"], b["timestamp"], b, encoded_size(b)) for b in bodies]
    servers = ("broker-1:9092", "broker-2:9092")
    assert len(json.dumps(event(batch, servers), separators=(",", ":")).encode()) <= payload_size(batch, servers)


@given(
    topic=st.from_regex(r"[a-zA-Z0-9._-]{1,30}", fullmatch=True),
    partition=st.integers(0, 2**31 - 1),
    offset=st.integers(0, 2**53),
    kind=st.sampled_from([1, 2]),
    timestamp=st.integers(0, 2**45),
    key=st.none() | st.binary(max_size=50),
    value=st.none() | st.binary(max_size=200),
    headers=st.none() | st.lists(st.tuples(names, st.none() | st.binary(max_size=20)), min_size=1, max_size=3),
)
def test_a_fetched_record_is_what_lambda_sends_with_its_size(
    topic: str,
    partition: int,
    offset: int,
    kind: int,
    timestamp: int,
    key: bytes | None,
    value: bytes | None,
    headers: list[tuple[str, bytes | None]] | None,
) -> None:
    message = Message(
        topic=topic,
        partition=partition,
        offset=offset,
        key=key,
        value=value,
        headers=headers,
        timestamp=(kind, timestamp),
    )
    expected: dict[str, Any] = {
        "topic": topic,
        "partition": partition,
        "offset": offset,
        "timestamp": timestamp,
        "timestampType": {1: "CREATE_TIME", 2: "LOG_APPEND_TIME"}[kind],
    }
    if key is not None:
        expected["key"] = base64.b64encode(key).decode()
    expected["value"] = None if value is None else base64.b64encode(value).decode()
    expected["headers"] = [{name: [b - 256 if b > 127 else b for b in data or b""]} for name, data in headers or []]

    record = from_message(message)
    assert json.dumps(record.body) == json.dumps(expected)  # the same fields, in the same order
    actual = len(json.dumps(expected, separators=(",", ":")).encode()) + 1
    assert actual <= record.size <= actual + 8
    assert (record.topic, record.partition, record.offset, record.timestamp) == (topic, partition, offset, timestamp)
    assert record.partition_key == f"{topic}-{partition}"
