"""What make bench-connect decides before it starts anything: where the connector's source is (or
that it falls back to the hand-written consumer, saying how to get the source), the properties it
gives Connect's standalone worker, and the records both systems consume.

Building the connector and running Connect (Maven, a JVM) is the benchmark's work, not a test's.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from devkit.generator import EventGenerator, partition_for
from harness import bench_connect, connect_peer


def _source(tmp_path: Path) -> Path:
    source = tmp_path / "kafka-connect-redis"
    (source / connect_peer.TASK_SOURCE).parent.mkdir(parents=True)
    (source / connect_peer.TASK_SOURCE).write_text("class RedisSinkTask {}\n")
    (source / "pom.xml").write_text("<project/>\n")
    return source


def test_the_option_comes_before_the_variable_and_the_variable_before_the_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    optioned, variable, default = (_source(tmp_path / name) for name in ("a", "b", "c"))
    monkeypatch.setattr(connect_peer, "DEFAULT_SOURCE", default)
    env = {connect_peer.SOURCE_VARIABLE: str(variable)}
    assert connect_peer.find_source(str(optioned), env).path == optioned.resolve()
    found = connect_peer.find_source(None, env)
    assert found.path == variable.resolve() and found.origin == "$CONNECT_REDIS_SOURCE"
    assert connect_peer.find_source(None, {}).path == default.resolve()


def test_without_a_source_the_bench_falls_back_and_says_how_to_get_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(connect_peer, "DEFAULT_SOURCE", tmp_path / "absent")
    found = connect_peer.find_source(None, {connect_peer.SOURCE_VARIABLE: ""})  # empty: no override
    assert found.path is None
    assert "harness/sink_peer.py" in found.note and connect_peer.UPSTREAM in found.note
    assert "--peer-source" in found.note and "Maven Central" in found.note


@pytest.mark.parametrize("broken", ["missing", "no pom", "not the connector"])
def test_a_named_source_that_is_not_the_connector_is_refused(tmp_path: Path, broken: str) -> None:
    source = _source(tmp_path)
    if broken == "missing":
        source = tmp_path / "nowhere"
    elif broken == "no pom":
        (source / "pom.xml").unlink()
    else:
        (source / connect_peer.TASK_SOURCE).unlink()
    with pytest.raises(connect_peer.PeerSourceMissing, match="--peer-source names"):
        connect_peer.find_source(str(source), {})


def _properties(text: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in text.splitlines() if line)


def test_the_worker_and_connector_properties() -> None:
    worker = _properties(connect_peer.worker_properties("127.0.0.1:9", Path("/w"), Path("/p"), 8123, "sink-1"))
    assert worker["bootstrap.servers"] == "127.0.0.1:9" and worker["plugin.path"] == "/p"
    assert worker["key.converter"].endswith("StringConverter")  # the key is the Redis key, as text
    assert worker["value.converter"].endswith("ByteArrayConverter")  # the value, byte for byte
    assert worker["listeners"] == "http://127.0.0.1:8123"  # never Connect's fixed 8083
    assert worker["consumer.group.instance.id"] == "sink-1"
    connector = _properties(connect_peer.connector_properties("redis-sink", "orders-x", 6400, 1))
    assert connector["connector.class"] == connect_peer.CONNECTOR_CLASS
    assert (connector["topics"], connector["redis.hosts"], connector["redis.database"]) == (
        "orders-x",
        "127.0.0.1:6400",
        "1",
    )
    assert connect_peer.group_of("redis-sink") == "connect-redis-sink"


def test_orders_are_keyed_by_the_redis_key_their_value_names() -> None:
    stream = bench_connect.order_stream(EventGenerator(seed=4, partitions=6), 2000)
    orders = [raw for raw in stream if raw.topic == "orders"]
    assert {raw.topic for raw in stream} == {"orders", "inventory", "products"}
    for raw in orders:
        assert raw.key == f"orders:{json.loads(raw.value or b'')['orderid']}".encode()
    # updates: some keys carry several values, so the last record per key is what counts
    assert len({raw.key for raw in orders}) < len(orders) * 0.8


def test_each_partitions_last_order() -> None:
    orders = bench_connect.new_orders(EventGenerator(seed=2, partitions=6), 300)
    last = bench_connect.last_per_partition(orders)
    expected = {}
    for raw in orders:
        assert raw.key is not None
        expected[partition_for(raw.key, 6, 0)] = raw
    assert last == {raw.key: raw.value for raw in expected.values()} and len(last) == 6


def _result(peer_path: str) -> dict[str, object]:
    speed = {"records": 100, "per_second": 50.0, "per_second_to_commit": 40.0}
    fresh = {"probes": 10, "rate": 50.0, "p50_ms": 4.0, "p99_ms": 20.0, "max_ms": 30.0}
    kill = {"records": 100, "rate": 10.0, "kills": 2, "documents": 9, "documents_wrong": 0, "stock_entries": 3}
    kill |= {"stock_entries_wrong": 0, "stock_units_off": 0.0, "stock_units_net": 0.0, "offsets_read_from_redis": 0}
    peers = (peer_path,) if peer_path == "connector" else (peer_path, "peer-periodic")
    return {
        "date": "today",
        "broker": "Apache Kafka 4.4 (KRaft)",
        "commit": "abc",
        "load": "1.0",
        "peer_path": peer_path,
        "peer_note": "no Kafka Connect Redis sink source at /x",
        "throughput": {"cachesync": speed, peer_path: {**speed, "per_second": 100.0}},
        "freshness": {"cachesync": fresh, peer_path: {**fresh, "p99_ms": 10.0}},
        "kill": {path: kill for path in ("cachesync", *peers)},
    }


def test_the_section_gives_ratios_and_names_its_peer() -> None:
    real = bench_connect.section(_result("connector"), "make bench-connect")
    assert "| 0.50x |" in real and "p99 2.00x" in real and "no ZINCRBY" in real
    assert "No connector source was found" not in real
    fallback = bench_connect.section(_result("peer"), "make bench-connect")
    assert "No connector source was found" in fallback and "no Kafka Connect Redis sink source at /x" in fallback
    assert "committing every" in fallback


def test_the_catch_up_row_gives_every_round_and_its_ratio() -> None:
    result = _result("connector")
    throughput: dict[str, dict[str, object]] = result["throughput"]  # type: ignore[assignment]
    throughput["cachesync"] = {**throughput["cachesync"], "rounds": [40.0, 50.0, 90.0]}
    throughput["connector"] = {**throughput["connector"], "rounds": [80.0, 100.0, 60.0]}
    text = bench_connect.section(result, "make bench-connect")
    assert "median of 3 rounds" in text
    assert "50 orders/s (40, 50, 90)" in text and "100 orders/s (80, 100, 60)" in text
    assert "0.50x (rounds: 0.50x, 0.50x, 1.50x)" in text
