"""Calls that fail or are turned away mid-batch, against real servers: refused writes keep
their dead letters, NOSCRIPT and READONLY are resent, and the state ends exact."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from redis.cluster import RedisCluster

from cachesync.connection import get_client
from cachesync.deadletter import RedisStreamSink
from cachesync.ingest import Ingestor, build_ingestor
from cachesync.plan import Call, Pending, Planner
from cachesync.projections import INCREMENT, Mutation
from cachesync.transport import Transport
from cachesync.writer import BatchWriter
from devkit import servers
from devkit.generator import EventGenerator
from harness.model import model_state, redis_state
from tests.bounds import assert_within, redis_command_bound
from tests.integration.midbatch import mid_batch_writer
from tests.integration.test_ingest import records_of


class FailingLaterCalls(BatchWriter):
    """Every call that does not write `spared` fails in the script (its plan cannot be read)."""

    def __init__(self, spared: str, *args: Any):
        super().__init__(*args)
        self.spared = spared

    def planner(self) -> Planner:
        spared, planner = self.spared, super().planner()
        plan = planner.plan

        def failing_later(pending: list[Pending], first: int) -> list[Call]:
            calls = plan(pending, first)
            for call in calls:
                if spared not in call.keys:
                    call.args = lambda call=call: (1, call.keys[0], b"INJECTED failure")  # type: ignore[method-assign]
            return calls

        planner.plan = failing_later  # type: ignore[method-assign]
        return planner


def test_a_refused_write_keeps_its_dead_letter_when_a_later_call_fails(target: Any) -> None:
    settings = target.settings(SCRIPT_BATCH_SIZE="4")
    client = target.client()
    client.set("inventory:store1", "not a sorted set")  # every store1 write is refused: WRONGTYPE
    g = EventGenerator(seed=21, partitions=1, stores=1, skus=3)
    # the later calls are script calls too: stock deltas (documents take plain writes)
    later = [g.inventory("shipment", "store2") for _ in range(20)]
    event = g.event([g.inventory("shipment", "store1") for _ in range(3)] + later)
    sink = RedisStreamSink(client, settings.dlq_stream_key, settings.dlq_stream_maxlen)
    failing = Ingestor(settings, FailingLaterCalls("inventory:store1", client, 4), sink)
    with pytest.raises(redis.exceptions.ResponseError):
        failing.process(event)

    retry = build_ingestor(settings).process(event)  # the event source mapping's retry
    # the refused writes count as handled (their offsets moved on): the retry cannot report them
    assert retry.duplicates >= 3 and retry.dead_lettered == 0
    letters = client.xrange(settings.dlq_stream_key)
    refused = [fields for _, fields in letters if b"WRONGTYPE" in fields[b"reason"]]
    assert len(refused) >= 3  # at least once each, never zero times
    assert client.get("inventory:store1") == b"not a sorted set"
    assert redis_state(client)["inventory:store2"] == model_state(settings, records_of(event))["inventory:store2"]


def _noscript_errors(*clients: redis.Redis) -> int:
    return sum(int(c.info("errorstats").get("errorstat_NOSCRIPT", {}).get("count", 0)) for c in clients)


def test_script_flush_between_calls_on_a_server(valkey: Any) -> None:
    settings = valkey.settings(SCRIPT_BATCH_SIZE="50")
    admin = redis.Redis.from_url(valkey.url)
    admin.config_resetstat()
    event = EventGenerator(seed=22, partitions=4, stores=2, skus=20).batch(2000)
    client = get_client(settings)
    ingest = Ingestor(
        settings, mid_batch_writer(lambda: admin.script_flush(), client, 50), build_ingestor(settings)._dead_letters
    )
    outcome = ingest.process(event)
    assert _noscript_errors(admin) >= 1  # the second half was turned away once, then sent again
    assert (outcome.applied, outcome.duplicates, outcome.dead_lettered) == (2000, 0, 0)
    assert redis_state(client) == model_state(settings, records_of(event))


def test_noscript_on_the_cluster_is_resent(valkey_cluster: servers.LocalCluster) -> None:
    """SCRIPT FLUSH on every primary after the first half of the calls ran: the second half is
    answered NOSCRIPT, as after a failover or the reported flush on ElastiCache Serverless right
    after SCRIPT LOAD, and sent again after loading the script."""
    RedisCluster.from_url(valkey_cluster.url).flushall()
    from tests.conftest import Target

    target = Target("cluster", valkey_cluster.url, cluster=True)
    settings = target.settings(SCRIPT_BATCH_SIZE="20")
    client = get_client(settings)
    assert isinstance(client, RedisCluster)
    primaries = [client.get_redis_connection(node) for node in client.get_primaries()]
    for primary in primaries:
        primary.config_resetstat()

    def flush() -> None:
        for primary in primaries:
            primary.script_flush()

    writer = mid_batch_writer(flush, client, 20)
    event = EventGenerator(seed=23, partitions=4, stores=3, skus=30).batch(1500)
    outcome = Ingestor(settings, writer, build_ingestor(settings)._dead_letters).process(event)
    assert _noscript_errors(*primaries) >= 1
    assert (outcome.applied, outcome.duplicates, outcome.dead_lettered) == (1500, 0, 0)
    assert redis_state(client) == model_state(settings, records_of(event))


class PromotingOnReconnect(Transport):
    """The server it writes to is a replica until the writer reconnects: a failover."""

    def __init__(self, replica: servers.ServerProcess, *args: Any):
        super().__init__(*args)
        self.replica, self.reconnects = replica, 0

    def refresh(self, nodes: Any) -> None:
        self.reconnects += 1
        redis.Redis.from_url(self.replica.url).replicaof("NO", "ONE")
        super().refresh(nodes)


def _make_replica(server: servers.ServerProcess) -> None:
    # of a primary that is not there: read-only at once, and never loading a sync
    redis.Redis.from_url(server.url).replicaof("127.0.0.1", servers.free_port())


def test_readonly_after_a_failover_is_a_reconnect() -> None:
    replica = servers.start_server()
    try:
        _make_replica(replica)
        from tests.conftest import Target

        settings = Target("replica", replica.url, cluster=False).settings(SCRIPT_BATCH_SIZE="100")
        client = get_client(settings)
        transport = PromotingOnReconnect(replica, client, settings.retries)
        writer = BatchWriter(client, 100, transport=transport)
        event = EventGenerator(seed=24, partitions=3).batch(500)
        sink = RedisStreamSink(client, settings.dlq_stream_key, settings.dlq_stream_maxlen)
        outcome = Ingestor(settings, writer, sink).process(event)
        assert transport.reconnects == 1
        assert (outcome.applied, outcome.duplicates) == (500, 0)
        assert redis_state(client) == model_state(settings, records_of(event))
    finally:
        replica.remove()


def test_a_replica_that_stays_read_only_fails_within_the_retry_bounds() -> None:
    replica = servers.start_server()
    try:
        _make_replica(replica)
        from tests.conftest import Target

        settings = Target("replica", replica.url, cluster=False).settings(REDIS_RETRIES="2")
        started = time.monotonic()
        with pytest.raises(redis.exceptions.ReadOnlyError):
            build_ingestor(settings).process(EventGenerator(seed=25).batch(50))
        # READONLY is resent within the retries, with the transport's capped backoff between rounds
        assert_within(time.monotonic() - started, redis_command_bound(settings, commands=2), "a replica's READONLY")
    finally:
        replica.remove()


def test_a_failure_while_drawing_records_still_reports_the_refusals_of_the_calls_sent(target: Any) -> None:
    client = target.client()
    client.set("inventory:store1", "not a sorted set")  # its writes are refused: WRONGTYPE
    writer = BatchWriter(client, 100, chunk_records=3)  # each chunk's calls go out before the next is drawn

    def pending(fail_at: int) -> Iterator[Pending]:
        for offset in range(fail_at):
            store = "store1" if offset < 3 else "store2"
            yield (Mutation(f"inventory:{store}", INCREMENT, "sku:1", "1"), "inventory", 0, offset)
        raise RuntimeError("INJECTED: the records cannot be read further")

    result = writer.apply(pending(6), partial=True)
    assert isinstance(result.error, RuntimeError)
    # the calls sent ran: their refusals are reported (a retry skips those records as applied)
    assert sorted(position for position, _ in result.refused) == [0, 1, 2]
    assert result.applied == 3 and client.zscore("inventory:store2", "sku:1") == 3
    with pytest.raises(RuntimeError, match="INJECTED"):
        writer.apply(pending(0))  # nothing sent yet: the error as it came
