"""The hash, stream and Debezium kinds against real servers (Valkey 8, Redis 7, a 3-master
cluster): any delivery (replays, overlaps, a crash mid-batch) leaves exactly the reference
model's state (harness.model_kinds), merge against replace, deletes and their tombstones, the
JSON converter's wrapper, per-record TTLs, and wrong-shaped values dead-lettered alone."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cachesync import config
from cachesync.config import ConfigError, Settings
from cachesync.deadletter import RedisStreamSink
from cachesync.ingest import Ingestor, build_ingestor
from devkit import debezium
from devkit.generator import RawRecord, kafka_record
from harness.model_kinds import KindsModel, redis_kinds_state
from tests.integration.kindslog import TABLE, KindsLog, check, event, log_of, one_partition, use_table, whole
from tests.integration.midbatch import mid_batch_writer
from tests.integration.test_exactly_once import deliveries


@pytest.fixture
def table(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    path = use_table(monkeypatch, tmp_path / "topics.toml", TABLE)
    yield path
    config.topic_entries.cache_clear()


def letters(client: Any) -> list[dict[str, str]]:
    return [{k.decode(): v.decode() for k, v in fields.items()} for _, fields in client.xrange("deadletter:ingest")]


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    seed=st.integers(0, 10_000),
    size=st.integers(1, 50),
    script_batch=st.sampled_from(["1", "4", "1000"]),
    data=st.data(),
)
def test_any_delivery_converges_to_the_model(
    target: Any, table: Path, seed: int, size: int, script_batch: str, data: st.DataObject
) -> None:
    target.flush()
    log = log_of(KindsLog(seed).raws(size))
    ingest = build_ingestor(target.settings(SCRIPT_BATCH_SIZE=script_batch))
    for batch in deliveries(log, data.draw):
        ingest.process(batch)
    check(target, table, [r for records in log.values() for r in records])


def test_a_crash_mid_batch_then_the_retry_gives_the_model(target: Any, table: Path) -> None:
    log = log_of(KindsLog(11).raws(400))
    batch = whole(log)
    settings_ = target.settings(SCRIPT_BATCH_SIZE="7")
    client = target.client()

    def crash() -> None:
        raise RuntimeError("the function dies half-way through the batch")

    sink = RedisStreamSink(client, "deadletter:ingest", 10_000)
    crashing = Ingestor(settings_, mid_batch_writer(crash, client, 7), sink)
    with pytest.raises(RuntimeError, match="half-way"):
        crashing.process(batch)
    half = redis_kinds_state(client)
    assert half, "the first half of the calls ran"
    retry = build_ingestor(settings_).process(batch)
    model = check(target, table, [r for records in log.values() for r in records])
    assert retry.applied > 0 and retry.duplicates > 0
    again = build_ingestor(settings_).process(batch)  # a replay changes nothing
    assert again.applied == 0
    check(target, table, [r for records in log.values() for r in records])
    assert len(model.poison) > 0


def test_merge_keeps_other_fields_and_replace_leaves_exactly_the_new_ones(target: Any, table: Path) -> None:
    ingest = build_ingestor(target.settings())
    rows = [
        (b"1", b'{"id": 1, "name": "Anne", "score": 3, "tags": ["a"], "address": {"city": "Oslo"}}'),
        (b"1", b'{"id": 1, "score": 4, "name": null, "active": true}'),
    ]
    ingest.process(one_partition("t.people", rows))
    ingest.process(one_partition("t.profiles", rows))
    client = target.client()
    assert client.hgetall("people:1") == {b"id": b"1", b"score": b"4", b"active": b"true"}
    assert client.hgetall("profiles:1") == {
        b"id": b"1",
        b"score": b"4",
        b"tags": b'["a"]',
        b"address": b'{"city":"Oslo"}',
        b"active": b"true",
    }


def test_debezium_create_update_delete_and_tombstone_with_and_without_the_wrapper(target: Any, table: Path) -> None:
    topic = debezium.topic("mysql", "customers")
    anne = {"id": 1004, "first_name": "Anne", "last_name": "Kretchmar", "email": "annek@noanswer.org"}
    marie = anne | {"first_name": "Anne Marie"}
    client = target.client()
    for schemas in (True, False):
        target.flush()
        key = debezium.record_key("mysql", "customers", {"id": 1004}, schemas)
        events = [
            (key, debezium.change_event("mysql", "customers", "c", None, anne, 1, 1, schemas)),
            (key, debezium.change_event("mysql", "customers", "u", anne, marie, 2, 2, schemas)),
        ]
        ingest = build_ingestor(target.settings())
        first = ingest.process(one_partition(topic, events))
        assert (first.applied, first.dead_lettered, first.key_mismatches) == (2, 0, 0)
        assert client.hgetall("customers:1004") == {
            b"id": b"1004",
            b"first_name": b"Anne Marie",
            b"last_name": b"Kretchmar",
            b"email": b"annek@noanswer.org",
        }
        deleted = [
            *events,
            (key, debezium.change_event("mysql", "customers", "d", marie, None, 3, 3, schemas)),
            (key, None),  # the tombstone Debezium writes after a delete
        ]
        second = ingest.process(one_partition(topic, deleted))
        assert (second.applied, second.duplicates, second.dead_lettered) == (2, 2, 0)
        assert client.exists("customers:1004") == 0
        assert ingest.process(one_partition(topic, deleted)).applied == 0  # replayed: nothing comes back


def test_a_postgres_delete_with_only_the_key_in_before_and_a_row_without_its_key(target: Any, table: Path) -> None:
    topic = debezium.topic("postgresql", "accounts")
    key = debezium.record_key("postgresql", "accounts", {"id": 7}, False)
    events = [
        (key, debezium.change_event("postgresql", "accounts", "r", None, {"balance": 10}, 1, 1, False)),
        (key, debezium.change_event("postgresql", "accounts", "d", None, None, 2, 2, False)),
        (key, debezium.change_event("postgresql", "accounts", "c", None, {"id": 7, "balance": 5}, 3, 3, False)),
    ]
    ingest = build_ingestor(target.settings())
    ingest.process(one_partition(topic, events[:1]))
    client = target.client()
    assert json.loads(client.get("accounts:7")) == {"balance": 10}  # keyed by the record key
    assert 0 < client.ttl("accounts:7") <= 600
    ingest.process(one_partition(topic, events[:2]))
    assert client.exists("accounts:7") == 0
    ingest.process(one_partition(topic, events))
    assert json.loads(client.get("accounts:7")) == {"id": 7, "balance": 5}


def test_streams_append_once_in_partition_order_and_trim(target: Any, tmp_path: Path, monkeypatch: Any) -> None:
    use_table(
        monkeypatch, tmp_path / "t.toml", TABLE.replace('key_field = "user"', 'key_field = "user"\nmax_length = 50')
    )
    try:
        ingest = build_ingestor(target.settings(SCRIPT_BATCH_SIZE="64"))
        values = [json.dumps({"user": "u1", "n": n}).encode() for n in range(500)]
        batch = one_partition("t.activity", [(b"u1", v) for v in values])
        assert ingest.process(batch).applied == 500
        assert ingest.process(batch).applied == 0  # a replayed batch appends nothing
        entries = target.client().xrange("activity:u1")
        assert 50 <= len(entries) < 500  # MAXLEN ~ trims whole nodes: about 50 are kept
        assert [int(fields[b"n"]) for _, fields in entries] == list(range(500 - len(entries), 500))
    finally:
        config.topic_entries.cache_clear()


def test_a_ttl_header_sets_the_keys_ttl(target: Any, table: Path) -> None:
    ingest = build_ingestor(target.settings())
    row = b'{"id": 5, "name": "x"}'
    ingest.process(one_partition("t.profiles", [(b"5", row)], headers=(("ttl", b"120"),)))
    client = target.client()
    assert 0 < client.ttl("profiles:5") <= 120
    outcome = ingest.process(
        event(
            {
                "t.profiles-1": [
                    kafka_record("t.profiles", 1, 0, RawRecord("t.profiles", b"6", row, (("ttl", b"-1"),)), 1)
                ]
            }
        )
    )
    assert outcome.dead_lettered == 1 and "header 'ttl' must be a whole number" in outcome.reasons[0]


def test_wrong_shaped_values_are_dead_lettered_with_a_reason_and_the_rest_applied(target: Any, table: Path) -> None:
    my = debezium.topic("mysql", "customers")
    key = debezium.record_key("mysql", "customers", {"id": 1001}, True)
    row = {"id": 1001, "first_name": "Sally"}
    batch = event(
        {
            f"{my}-0": [
                kafka_record(
                    my,
                    0,
                    0,
                    RawRecord(my, key, debezium.change_event("mysql", "customers", "c", None, row, 1, 1, True)),
                    1,
                ),
                kafka_record(
                    my,
                    0,
                    1,
                    RawRecord(my, None, debezium.change_event("mysql", "customers", "t", None, None, 2, 2, True)),
                    1,
                ),
                kafka_record(my, 0, 2, RawRecord(my, key, b'{"before": null, "after": {"id": 1001}}'), 1),
                kafka_record(my, 0, 3, RawRecord(my, key, b'{"op": "u", "after": [1]}'), 1),
            ],
            "t.activity-0": [
                kafka_record("t.activity", 0, 0, RawRecord("t.activity", b"u", None), 1),
                kafka_record("t.activity", 0, 1, RawRecord("t.activity", b"u", b'{"user": "u", "a": 1}'), 1),
            ],
            "t.people-0": [
                kafka_record("t.people", 0, 0, RawRecord("t.people", b"1", b'"text"'), 1),
                kafka_record("t.people", 0, 1, RawRecord("t.people", b"1", b'{"id": 1, "x": {"y": [1, 2.5]}}'), 1),
            ],
        }
    )
    outcome = build_ingestor(target.settings()).process(batch)
    assert (outcome.applied, outcome.dead_lettered) == (3, 5)
    reasons = [letter["reason"] for letter in letters(target.client())]
    assert any("truncate of inventory.customers is not applied" in r for r in reasons)
    assert any("has no `op`" in r for r in reasons)
    assert any("needs the `after` row, got list" in r for r in reasons)
    assert any("tombstone cannot take an entry back" in r for r in reasons)
    assert any("value must be a JSON object, got str" in r for r in reasons)
    client = target.client()
    assert client.hgetall("people:1") == {b"id": b"1", b"x": b'{"y":[1,2.5]}'}
    assert client.hget("customers:1001", "first_name") == b"Sally"
    assert len(client.xrange("activity:u")) == 1


def test_a_value_of_more_fields_than_one_request_holds_is_dead_lettered(valkey: Any, table: Path) -> None:
    wide = json.dumps({"id": 1, **{f"f{n}": n for n in range(config.MAX_RECORD_FIELDS)}}).encode()
    fits = json.dumps({"id": 2, **{f"f{n}": n for n in range(config.MAX_RECORD_FIELDS - 1)}}).encode()
    outcome = build_ingestor(valkey.settings()).process(one_partition("t.people", [(b"1", wide), (b"2", fits)]))
    assert (outcome.applied, outcome.dead_lettered) == (1, 1)
    assert "fit one request" in outcome.reasons[0]
    assert valkey.client().hlen("people:2") == config.MAX_RECORD_FIELDS


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ('kind = "hash"\non_update = "upsert"', "on_update must be replace or merge"),
        ('kind = "stream"\non_update = "merge"', 'on_update = "merge" needs kind hash or json, not stream'),
        ('kind = "stock_ledger"\nenvelope = "debezium"', 'envelope = "debezium" needs a kind that holds one row'),
        ('kind = "stream"\nenvelope = "debezium"', "not stream"),
        ('kind = "hash"\nenvelope = "maxwell"', "envelope must be 'debezium'"),
        ('kind = "hash"\nmax_length = 10', "max_length is for kind stream"),
        ('kind = "stream"\nmax_length = -1', "max_length must be a whole number"),
        ('kind = "table"', "kind must be one of document, stock_ledger, hash, json, stream"),
        ('kind = "hash"\nttl_header = ""', "ttl_header must name a record header"),
        ('kind = "hash"\nttl = 5', "unknown field 'ttl'"),
    ],
)
def test_a_broken_entry_is_a_configuration_error_naming_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, entry: str, message: str
) -> None:
    text = f'[[topic]]\nname = "broken"\ntopic = "b"\nkey_prefix = "b"\nkey_field = "id"\n{entry}\n'
    use_table(monkeypatch, tmp_path / "topics.toml", text)
    try:
        with pytest.raises(ConfigError, match=r"topics\.toml entry 1 \(broken\)") as raised:
            Settings.from_env({})
        assert message in str(raised.value)
    finally:
        config.topic_entries.cache_clear()


def _decoded(record: dict[str, Any]) -> bytes:
    return base64.b64decode(record["value"])


def test_status_and_a_rebuild_cover_hashes_streams_and_change_events(target: Any, table: Path) -> None:
    from cachesync import maintenance

    log = log_of(KindsLog(21).raws(200))
    batch = whole(log)
    settings_ = target.settings()
    client = target.client()
    build_ingestor(settings_).process(batch)
    before = redis_kinds_state(client)
    status = maintenance.status(client, settings_)
    for (topic, partition), records in log.items():
        model = KindsModel(table).apply_all(records)
        applied = [r["offset"] for r in records if (topic, partition, r["offset"]) not in model.poison]
        if applied:
            assert status["topics"][topic]["partitions"][str(partition)] == max(applied)
    for topic in ("t.profiles", "t.activity", "dbserver1.inventory.customers"):
        cleared = maintenance.clear_topic(client, settings_, topic)
        assert cleared.keys > 0 and cleared.offsets > 0
        maintenance.finish_rebuild(client, topic)
    assert not any(name.startswith(("profiles:", "activity:", "customers:")) for name in redis_kinds_state(client))
    build_ingestor(settings_).process(batch)  # the replay from the earliest offset
    assert redis_kinds_state(client) == before


CUSTOMERS_ENVELOPE_AVRO = {
    "type": "record",
    "name": "Envelope",
    "namespace": "dbserver1.inventory.customers",
    "fields": [
        {"name": "before", "type": ["null", {"type": "record", "name": "Value", "fields": [
            {"name": "id", "type": "int"},
            {"name": "first_name", "type": "string"},
            {"name": "last_name", "type": "string"},
            {"name": "email", "type": "string"},
        ]}], "default": None},
        {"name": "after", "type": ["null", "Value"], "default": None},
        {"name": "source", "type": {"type": "record", "name": "Source", "namespace": "io.debezium.connector.mysql",
            "fields": [{"name": "db", "type": "string"}, {"name": "table", "type": ["null", "string"]}]}},
        {"name": "op", "type": "string"},
        {"name": "ts_ms", "type": ["null", "long"], "default": None},
    ],
}  # fmt: skip


def test_debezium_events_in_avro_decode_as_any_topics_values(target: Any, tmp_path: Path, monkeypatch: Any) -> None:
    from devkit.registry import _avro_writer

    schema = tmp_path / "customers-envelope.avsc"
    schema.write_text(json.dumps(CUSTOMERS_ENVELOPE_AVRO))
    entry = f'value_format = "avro"\nvalue_schema = "{schema}"\nvalue_wire_format = "plain"\n'
    use_table(
        monkeypatch,
        tmp_path / "t.toml",
        TABLE.replace('key_prefix = "customers"\n', f'key_prefix = "customers"\n{entry}'),
    )
    try:
        write = _avro_writer(schema.read_text())
        anne = {"id": 1004, "first_name": "Anne", "last_name": "Kretchmar", "email": "annek@noanswer.org"}
        source = {"db": "inventory", "table": "customers"}
        values = [
            write({"before": None, "after": anne, "source": source, "op": "c", "ts_ms": 1}),
            write({"before": anne, "after": None, "source": source, "op": "d", "ts_ms": 2}),
            write({"before": None, "after": anne | {"id": 1005}, "source": source, "op": "r", "ts_ms": 3}),
            write({"before": None, "after": None, "source": source, "op": "t", "ts_ms": 4}),
        ]
        topic = debezium.topic("mysql", "customers")
        outcome = build_ingestor(target.settings()).process(one_partition(topic, [(None, v) for v in values]))
        assert (outcome.applied, outcome.dead_lettered) == (3, 1)
        client = target.client()
        assert client.exists("customers:1004") == 0
        assert client.hget("customers:1005", "email") == b"annek@noanswer.org"
    finally:
        config.topic_entries.cache_clear()


def as_ingest_user(target: Any) -> Settings:
    """The ingest user of the configured kinds (devkit.acl) on every node; its settings."""
    from redis.cluster import RedisCluster

    from devkit import acl

    rule = acl.ingest_rule(target.settings())
    nodes = (
        [redis_node.redis_connection for redis_node in RedisCluster.from_url(target.url).get_primaries()]
        if target.cluster
        else [target.client()]
    )
    for node in nodes:
        node.execute_command(*rule.setuser_args("kindsingest", "kinds-password"))
        node.script_flush()  # the user loads the script itself
    return target.settings(REDIS_URL=target.url.replace("redis://", "redis://kindsingest:kinds-password@", 1))


def test_the_ingest_user_of_these_kinds_may_do_all_they_need_and_no_more(target: Any, table: Path) -> None:
    from devkit import acl

    log = log_of(KindsLog(4).raws(150))
    outcome = build_ingestor(as_ingest_user(target)).process(whole(log))
    assert not any("NOPERM" in reason or "permission" in reason for reason in outcome.reasons), outcome.reasons
    check(target, table, [r for records in log.values() for r in records])
    commands = acl.ingest_rule(target.settings()).commands
    assert {"hdel", "xadd", "hset", "del", "expire"} <= set(commands) and "json.set" not in commands


def test_the_operators_figures_show_the_new_kinds_topics_and_reasons(target: Any, table: Path) -> None:
    import time

    from cachesync.opstats import operator_view, record_batch

    log = log_of(KindsLog(31).raws(300))
    client = target.client()
    outcome = build_ingestor(target.settings()).process(whole(log))
    record_batch(client, outcome)
    view = operator_view(client, target.settings(), int(time.time() * 1000))
    assert view["totals"]["applied"] == outcome.applied > 0
    assert view["totals"]["deadLettered"] == outcome.dead_lettered > 0
    poison = set(KindsModel(table).apply_all([r for records in log.values() for r in records]).poison)
    for (topic, partition), records in log.items():
        offsets = [r["offset"] for r in records if (topic, partition, r["offset"]) not in poison]
        if offsets:  # (a partition's dead letters after its last applied record are not counted as processed)
            assert view["partitions"][topic][str(partition)] == offsets[-1]
    reasons = [r["reason"] for r in view["deadLetters"]["recent"]] + [
        r["reason"] for r in view["deadLetters"]["reasons"]
    ]
    assert any("is not applied" in reason or "not one of" in reason or "JSON object" in reason for reason in reasons)
