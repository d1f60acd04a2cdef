"""Acknowledged means replicated: a batch counts as applied only once a replica of every primary
it wrote has its writes (WAIT), against a real primary and replica."""

from __future__ import annotations

import logging
import os
import signal
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from cachesync.config import Settings
from cachesync.ingest import build_ingestor
from cachesync.transport import NotReplicated
from devkit import servers
from devkit.generator import EventGenerator
from harness.model import model_state, redis_state
from tests.integration.test_ingest import records_of


@pytest.fixture
def pair() -> Iterator[tuple[servers.ServerProcess, servers.ServerProcess]]:
    primary = servers.start_server(extra=["--repl-diskless-sync-delay", "0"])
    replica = servers.start_server(extra=["--replicaof", "127.0.0.1", str(primary.port)])
    try:
        admin = redis.Redis(port=primary.port)
        deadline = time.monotonic() + 60
        while (admin.info("replication").get("slave0") or {}).get("state") != "online":  # synced once
            assert time.monotonic() < deadline, admin.info("replication")
            time.sleep(0.02)
        yield primary, replica
    finally:
        os.kill(replica.process.pid, signal.SIGCONT)
        replica.remove()
        primary.remove()


def settings_for(server: servers.ServerProcess, **env: str) -> Settings:
    return Settings.from_env({"REDIS_URL": server.url, "REDIS_WAIT_TIMEOUT_MS": "300", **env})


def apply_as_lambda(ingest: Any, batch: dict[str, Any], attempts: int = 20) -> Any:
    """A healthy replica on a busy machine may miss a 300 ms wait: the batch fails and Lambda
    delivers it again, until one attempt is acknowledged."""
    for _ in range(attempts - 1):
        try:
            return ingest.process(batch)
        except NotReplicated:
            continue
    return ingest.process(batch)


def test_an_applied_batch_is_on_the_replica_when_reported(pair: Any) -> None:
    primary, replica = pair
    settings = settings_for(primary)
    event = EventGenerator(seed=31, partitions=3).batch(500)
    apply_as_lambda(build_ingestor(settings), event)
    # read at once, no polling: WAIT returned, so the replica has every write
    assert redis_state(redis.Redis(port=replica.port)) == model_state(settings, records_of(event))


def test_a_replica_that_stops_acknowledging_fails_the_batch_and_the_retry_lands_it(pair: Any) -> None:
    primary, replica = pair
    settings = settings_for(primary)
    ingest = build_ingestor(settings)
    generator = EventGenerator(seed=32, partitions=3)
    first = generator.batch(200)
    apply_as_lambda(ingest, first)  # the topology is known: this primary has a replica
    os.kill(replica.process.pid, signal.SIGSTOP)  # it stays connected, but acknowledges nothing
    batch = generator.batch(200)
    with pytest.raises(NotReplicated, match="0 of 1 replicas"):
        ingest.process(batch)
    os.kill(replica.process.pid, signal.SIGCONT)
    retry = apply_as_lambda(ingest, batch)  # Lambda's retry: nothing applies twice, and now it is replicated
    assert retry.applied + retry.duplicates == 200
    expected = model_state(settings, records_of(first) + records_of(batch))
    assert redis_state(redis.Redis(port=replica.port)) == expected


def test_wait_zero_reports_a_batch_without_its_replica(pair: Any) -> None:
    primary, replica = pair
    ingest = build_ingestor(settings_for(primary, REDIS_WAIT_REPLICAS="0"))
    os.kill(replica.process.pid, signal.SIGSTOP)
    outcome = ingest.process(EventGenerator(seed=33, partitions=3).batch(100))
    assert outcome.applied == 100


def test_a_cache_without_wait_is_told_once_and_batches_still_apply(caplog: pytest.LogCaptureFixture) -> None:
    """ElastiCache Serverless answers WAIT with an unknown-command error: a server with WAIT
    renamed away answers the same."""
    server = servers.start_server(extra=["--rename-command", "WAIT", "cachesync-no-wait"])
    try:
        with pytest.raises(redis.exceptions.ResponseError, match="unknown command"):
            redis.Redis(port=server.port).execute_command("WAIT", 0, 0)
        settings = settings_for(server, REDIS_WAIT_REPLICAS="1")
        ingest = build_ingestor(settings)
        generator = EventGenerator(seed=34, partitions=3)
        batches = [generator.batch(100) for _ in range(3)]
        with caplog.at_level(logging.WARNING, logger="cachesync.transport"):
            for batch in batches:
                assert ingest.process(batch).applied == 100
        told = [r for r in caplog.records if "does not support WAIT" in r.getMessage()]
        assert len(told) == 1
        expected = model_state(settings, [r for b in batches for r in records_of(b)])
        assert redis_state(redis.Redis(port=server.port)) == expected
    finally:
        server.remove()
