"""The operator's figures (cachesync.opstats) on Valkey, Redis 7 and a cluster: what batches
record is what the admin route reports, and recording never fails a batch."""

from __future__ import annotations

import logging
import time
from typing import Any

import pytest

from cachesync.config import Settings
from cachesync.connection import get_client
from cachesync.ingest import BatchOutcome, PartitionRange
from cachesync.opstats import operator_view, record_batch


def outcome(applied: int, duplicates: int, dead: int, lag: int | None, **last: int) -> BatchOutcome:
    partitions = {name.replace("_", "-"): PartitionRange(0, offset, 1, lag) for name, offset in last.items()}
    reasons = ["value is not valid JSON"] * min(dead, 5)
    return BatchOutcome(applied + duplicates + dead, applied, duplicates, dead, partitions, reasons)


def test_what_batches_record_is_what_the_view_reports(target: Any) -> None:
    client = target.client()
    settings = target.settings()
    record_batch(client, outcome(100, 0, 2, 40, orders_0=99, orders_1=50))
    record_batch(client, outcome(10, 5, 0, 15, orders_0=120, inventory_3=7))
    record_batch(client, outcome(0, 30, 0, None, orders_1=49))  # a replay: the processed offset moves back
    view = operator_view(client, settings, int(time.time() * 1000))
    assert view["totals"] == {"batches": 3, "applied": 110, "duplicates": 35, "deadLettered": 2}
    assert view["appliedPerSecond"] == round(110 / 60, 2)
    assert view["freshnessLagMs"] == 15  # the newest batch with a lag
    assert sum(b["applied"] for b in view["series"]) == 110
    assert max(b["maxLagMs"] or 0 for b in view["series"]) == 40
    assert view["deadLetters"]["reasons"] == [{"reason": "value is not valid JSON", "count": 2}]
    assert view["partitions"] == {"inventory": {"3": 7}, "orders": {"0": 120, "1": 49}}
    assert view["deadLetters"]["sink"] == "stream" and view["deadLetters"]["recent"] == []


def test_old_batches_leave_the_window(target: Any) -> None:
    client = target.client()
    record_batch(client, outcome(5, 0, 0, 1, orders_0=4))
    later = int(time.time() * 1000) + 301_000  # the view five minutes and a second on
    view = operator_view(client, target.settings(), later)
    assert view["totals"]["batches"] == 0 and view["series"] == [] and view["lastBatchAt"] is None
    assert view["partitions"] == {"orders": {"0": 4}}  # where each partition stands does not expire


def test_recording_never_fails_a_batch_when_redis_is_gone(caplog: pytest.LogCaptureFixture) -> None:
    settings = Settings.from_env({"REDIS_URL": "redis://127.0.0.1:1/0", "REDIS_RETRIES": "0"})
    with caplog.at_level(logging.WARNING, logger="cachesync.opstats"):
        record_batch(get_client(settings), outcome(1, 0, 0, 1, orders_0=1))  # logged, not raised
    assert "could not record the batch's figures" in caplog.text
