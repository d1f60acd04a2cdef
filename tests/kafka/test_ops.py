"""Divergence and repair: a batch the mapping gives up on shows in status, and a rebuild from
Kafka brings the cache back to the reference model."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest
import redis

from cachesync.config import Settings
from cachesync.connection import get_client
from devkit import ops, servers
from devkit.esm.kafka import MappingError
from devkit.esm.runner import LocalMappings
from harness.model import model_state, redis_state
from harness.proxy import StallingProxy
from tests.kafka.conftest import Kafka, wait_until
from tests.kafka.test_pipeline import PARTITIONS, caught_up, log_of, parameters, produce, topic_environment, topics


@pytest.mark.parametrize("destination", ["queue", "topic"])
def test_a_skipped_batch_shows_in_status_and_a_rebuild_restores_the_model(
    kafka: Kafka,
    valkey_proxy: tuple[servers.ServerProcess, StallingProxy],
    local_mappings: Callable[..., LocalMappings],
    tmp_path: Path,
    destination: str,
) -> None:
    server, proxy = valkey_proxy
    names = topics(kafka)
    direct = redis.Redis(port=server.port)
    # provisioned mode with no retry, as an operator might set it: a failed batch goes to the
    # template's on-failure queue (a local folder here) or to a topic of skipped records, and
    # from either, as deployed, to MappingFailuresFunction
    provisioned = {"PollerMode": "PROVISIONED", "KafkaMaximumRetryAttempts": "0", "KafkaBisectBatchOnError": "false"}
    skipped_topic = kafka.topic(1) if destination == "topic" else ""
    provisioned["SkippedBatchesTopic"] = skipped_topic
    mappings = local_mappings(
        env={"REDIS_SOCKET_TIMEOUT": "0.3", "REDIS_CONNECT_TIMEOUT": "0.3", "REDIS_RETRIES": "0"},
        bootstrap=kafka.bootstrap,
        parameters={**parameters(names), **provisioned, "RedisUrl": proxy.url},
        failure_dir=tmp_path,
        backoff=(0.01, 0.05),
    )
    assert set(mappings.functions) == {"IngestFunction", "MappingFailuresFunction"}
    ingest = mappings.functions["IngestFunction"]
    first = produce(kafka, names, 600, seed=31)
    mappings.start()
    wait_until(lambda: caught_up(mappings, first), what="the first records")
    proxy.stall()
    second = produce(kafka, names, 300, seed=32)
    wait_until(lambda: caught_up(mappings, second), what="the skipped batches to be committed past")
    proxy.resume()
    third = produce(kafka, names, 300, seed=33)
    wait_until(lambda: caught_up(mappings, third), what="the records after the outage")
    # while the mappings run: MappingFailuresFunction's own delivery (the skipped-records topic's
    # mapping, or the queue's) may still be retrying what the outage refused it
    wait_until(
        lambda: any(f.startswith(b"diverged:") for f in direct.hkeys("cachesync:offsets")),
        what="MappingFailuresFunction to mark the divergence",
    )
    mappings.stop()
    skipped = sum(p.stats.dead_lettered for p in mappings.pollers)
    if destination == "queue":
        assert list(tmp_path.iterdir()), "the queue's stand-in holds the invocation records"
    else:  # the topic keeps the skipped records themselves, each in its invocation record
        kept = [json.loads(m.value()) for m in kafka.read_all(skipped_topic, skipped)]
        assert len(kept) == skipped and all(d["payload"]["records"] for d in kept)

    settings = Settings.from_env({**{f"TOPIC_{k.upper()}": v for k, v in names.items()}, "REDIS_URL": server.url})
    client = get_client(settings)
    kafka_settings = {"bootstrap.servers": kafka.bootstrap}
    configs = [replace(p.config, window_seconds=0.0) for p in mappings.pollers if p.config.function == "IngestFunction"]
    report = ops.status(client, settings, configs, kafka_settings)
    assert skipped > 0
    assert set(report["diverged"]) and all(m["state"] == "skipped" for m in report["diverged"].values())
    assert redis_state(direct) != model_state(topic_environment(names), log_of(kafka, names))

    for mapping in configs:
        ops.rebuild(client, settings, mapping, kafka_settings, ingest, say=lambda _: None)
    after = ops.status(client, settings, configs, kafka_settings)
    assert after["diverged"] == {}
    lags = [p["lag"] for t in after["topics"].values() for p in t["partitions"].values()]
    assert lags == [0] * (len(configs) * PARTITIONS), after["topics"]
    assert redis_state(direct) == model_state(topic_environment(names), log_of(kafka, names))


def test_rebuild_refuses_while_the_mapping_runs(kafka: Kafka, local_mappings: Callable[..., LocalMappings]) -> None:
    server = servers.start_server()
    names = topics(kafka)
    try:
        mappings = local_mappings(bootstrap=kafka.bootstrap, parameters={**parameters(names), "RedisUrl": server.url})
        [ingest] = mappings.functions.values()
        feed = produce(kafka, names, 50, seed=5)
        mappings.start()
        wait_until(lambda: caught_up(mappings, feed), what="the records")
        settings = Settings.from_env({**{f"TOPIC_{k.upper()}": v for k, v in names.items()}, "REDIS_URL": server.url})
        poller = next(p for p in mappings.pollers if p.config.topics[0] == names["orders"])
        before = redis_state(redis.Redis(port=server.port))
        with pytest.raises(MappingError, match="active consumers"):
            ops.rebuild(get_client(settings), settings, poller.config, {"bootstrap.servers": kafka.bootstrap}, ingest)
        assert redis_state(redis.Redis(port=server.port)) == before  # nothing was cleared
    finally:
        server.remove()
