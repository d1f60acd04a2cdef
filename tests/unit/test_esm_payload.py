"""The local mapping's payload sizes: the 6 MB cap is checked without encoding every record."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from devkit.esm.payload import encoded_size, event, lambda_record, payload_size

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
