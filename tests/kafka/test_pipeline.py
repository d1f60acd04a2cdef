"""Kafka to Redis end to end: generated records produced into a real broker, consumed by the
template's mappings into the real IngestFunction, compared with the reference model, through
a Redis outage and through an operator's rebalance (SIGUSR1) and SIGKILLs of the local event
source mapping."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import redis

from devkit import brokers, servers
from devkit.children import running, spawn, started, still_running, with_ledger
from devkit.datagen import KafkaFeed
from devkit.esm import payload
from devkit.esm.kafka import coordinator_settling, retrying
from devkit.esm.runner import LocalMappings
from devkit.generator import TOPICS, EventGenerator
from devkit.sam import ROOT
from harness.model import model_state, redis_state
from harness.proxy import StallingProxy
from tests.kafka.conftest import Kafka, wait_until

PARTITIONS = 3


def topics(kafka: Kafka) -> dict[str, str]:
    """Topics of this test's own, as the template's parameters name them."""
    suffix = uuid.uuid4().hex[:8]
    return {kind: kafka.topic(PARTITIONS, f"{kind}-{suffix}") for kind in TOPICS}


def parameters(names: dict[str, str]) -> dict[str, str]:
    """The template's parameters for these topics, and consumer groups of their own (<prefix>-<kind>)."""
    return {
        "OrdersTopic": names["orders"],
        "InventoryTopic": names["inventory"],
        "ProductsTopic": names["products"],
        "KafkaConsumerGroupId": f"group-{names['orders']}",
    }


def produce(kafka: Kafka, names: dict[str, str], count: int, seed: int) -> KafkaFeed:
    feed = KafkaFeed({"bootstrap.servers": kafka.bootstrap}, names)
    generator = EventGenerator(seed=seed, partitions=PARTITIONS, stores=3, skus=40)
    feed.produce(generator.records(count))
    feed.flush()
    return feed


def log_of(kafka: Kafka, names: dict[str, str]) -> list[dict[str, Any]]:
    """Every record of the topics, as Lambda delivers them: what the model applies."""
    log = []
    for name in names.values():
        expected = sum(kafka.end_offsets(name, PARTITIONS).values())
        messages = kafka.read_all(name, expected)
        assert len(messages) == expected, name
        log += [payload.from_message(m).body for m in messages]
    return log


def topic_environment(names: dict[str, str]) -> dict[str, str]:
    """The functions' variables that rename the topics (the model reads them as they do)."""
    return {f"TOPIC_{kind.upper()}": name for kind, name in names.items()}


def caught_up(mappings: LocalMappings, feed: KafkaFeed) -> bool:
    return mappings.caught_up(feed.last_offsets)


def test_a_redis_outage_mid_stream_is_retried_and_the_cache_is_exact(
    kafka: Kafka,
    valkey_proxy: tuple[servers.ServerProcess, StallingProxy],
    local_mappings: Callable[..., LocalMappings],
) -> None:
    server, proxy = valkey_proxy
    names = topics(kafka)
    mappings = local_mappings(
        env={"REDIS_SOCKET_TIMEOUT": "0.3", "REDIS_CONNECT_TIMEOUT": "0.3", "REDIS_RETRIES": "1"},
        bootstrap=kafka.bootstrap,
        parameters={**parameters(names), "RedisUrl": proxy.url},
        overrides={"batch_size": 200},
        backoff=(0.05, 0.5),
    )
    first = produce(kafka, names, 1500, seed=11)
    mappings.start()
    wait_until(lambda: caught_up(mappings, first), what="the first records")

    proxy.stall()  # Redis stops answering while records keep coming
    second = produce(kafka, names, 1500, seed=12)
    wait_until(lambda: sum(p.stats.function_errors for p in mappings.pollers) >= 3, what="failed invocations")
    proxy.resume()
    wait_until(lambda: caught_up(mappings, second), what="the retries to converge")
    mappings.stop()
    state = redis_state(redis.Redis(port=server.port))
    assert state == model_state(topic_environment(names), log_of(kafka, names))


def test_a_killed_mapping_resumes_from_its_commits_and_counts_no_stock_twice(kafka: Kafka, tmp_path: Path) -> None:
    server = servers.start_server()
    names = topics(kafka)
    overrides = [f"{key}={value}" for key, value in parameters(names).items()]
    command = [sys.executable, "-m", "devkit.esm", "--bootstrap", kafka.bootstrap, "--parameter-overrides", *overrides]
    env = {
        **os.environ,
        "REDIS_URL": server.url,
        "POWERTOOLS_METRICS_DISABLED": "true",
        "POWERTOOLS_LOG_LEVEL": "ERROR",
    }

    output = tmp_path / "esm.log"

    def start() -> subprocess.Popen[bytes]:
        with output.open("ab") as log:
            return spawn(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=log)  # dies with the tests

    client = redis.Redis(port=server.port)
    process = start()
    try:
        feed = KafkaFeed({"bootstrap.servers": kafka.bootstrap}, names)
        generator = EventGenerator(seed=21, partitions=PARTITIONS, stores=3, skus=40)
        for round_ in range(3):
            # keys before this round: every round's new orders are new keys, so a count above this
            # shows that the mapping started for this round (a restarted one after the first) applied some
            keys_before = client.dbsize()
            for _ in range(10):  # records keep arriving while it runs
                feed.produce(generator.records(100))
                time.sleep(0.05)
            feed.flush()
            try:  # a restarted mapping starts a Python process and rejoins its groups first: slow when busy
                wait_until(lambda wanted=keys_before + 50: client.dbsize() >= wanted, 120, f"round {round_}'s writes")
            except AssertionError as late:
                raise AssertionError(f"{late}\n{output.read_text()[-3000:]}") from None
            if round_ == 0:  # an operator's rebalance first: every mapping leaves its group and joins again
                process.send_signal(signal.SIGUSR1)
                wait_until(lambda: output.read_text().count("rejoins the group") >= 3, what="the rebalances")
            process.kill()  # SIGKILL: no clean shutdown, whatever batch was in flight
            process.wait()
            assert process.returncode == -9, round_
            process = start()
        try:
            wait_until(lambda: _committed_all(kafka, names, feed), timeout=90, what="the restarted mapping to catch up")
        except AssertionError:
            raise AssertionError(output.read_text()[-3000:]) from None
    finally:
        process.kill()
        process.wait()
    try:
        state = redis_state(client)
        assert state == model_state(topic_environment(names), log_of(kafka, names))
    finally:
        server.remove()


def _committed_all(kafka: Kafka, names: dict[str, str], feed: KafkaFeed) -> bool:
    from confluent_kafka import Consumer, TopicPartition

    prefix = parameters(names)["KafkaConsumerGroupId"]
    for kind, topic in names.items():
        group = f"{prefix}-{kind}"
        consumer = Consumer({"bootstrap.servers": kafka.bootstrap, "group.id": group})
        try:
            wanted = [TopicPartition(topic, p) for p in range(PARTITIONS)]
            answer = retrying(partial(consumer.committed, wanted, timeout=10), coordinator_settling())
            committed = {tp.partition: tp.offset for tp in answer}
        finally:
            consumer.close()
        for (t, p), offset in feed.last_offsets.items():
            if t == topic and committed.get(p, -1) <= offset:
                return False
    return True


def test_mappings_in_two_processes_share_each_group_apply_every_record_once_and_die_with_their_parent(
    apache_broker: brokers.Broker, tmp_path: Path
) -> None:
    """`make esm --processes 2`: a worker process joins every group beside the parent, the broker
    splits each topic's partitions between them, the cache comes out as the model's, and a parent
    killed with SIGKILL takes its worker with it."""
    from confluent_kafka.admin import AdminClient

    kafka = Kafka(apache_broker)
    server = servers.start_server()
    names = topics(kafka)
    overrides = [f"{key}={value}" for key, value in parameters(names).items()]
    command = [sys.executable, "-m", "devkit.esm", "--bootstrap", kafka.bootstrap, "--processes", "2"]
    command += ["--parameter-overrides", *overrides]
    ledger = tmp_path / "started"  # what the command starts: its worker
    env = with_ledger(
        {**os.environ, "REDIS_URL": server.url, "POWERTOOLS_METRICS_DISABLED": "true", "POWERTOOLS_LOG_LEVEL": "ERROR"},
        ledger,
    )
    output = tmp_path / "esm.log"
    with output.open("ab") as log:
        process = spawn(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=log)
    try:
        feed = produce(kafka, names, 1500, seed=31)
        try:
            wait_until(lambda: _committed_all(kafka, names, feed), timeout=120, what="both processes to catch up")
        except AssertionError:
            raise AssertionError(output.read_text()[-3000:]) from None
        admin = AdminClient({"bootstrap.servers": kafka.bootstrap, "log_level": 0})
        prefix = parameters(names)["KafkaConsumerGroupId"]
        groups = [f"{prefix}-{kind}" for kind in names]
        for group, future in admin.describe_consumer_groups(groups).items():
            owned = [len(m.assignment.topic_partitions) for m in future.result(30).members]
            assert sorted(owned) == [1, 2], (group, owned)  # 3 partitions between two processes
        workers = [entry for entry in started(ledger) if "devkit.esm" in entry.command]
        assert len(workers) == 1 and running(workers[0]), started(ledger)
        assert redis_state(redis.Redis(port=server.port)) == model_state(topic_environment(names), log_of(kafka, names))
    finally:
        process.kill()  # SIGKILL: no clean-up of its own
        process.wait()
        server.remove()
    assert still_running(ledger, within=10) == []


def test_make_run_on_an_existing_broker_serves_its_records_and_produces_nothing(kafka: Kafka) -> None:
    """KAFKA_BOOTSTRAP=host:port make run: the topics of a broker it did not start, through the API."""
    import json
    import urllib.error
    import urllib.request

    from devkit.localrun import LocalRun

    for name in TOPICS:
        if name not in kafka.created:
            kafka.topic(6, name)
    seed_order = (
        b'{"ordertime": 1497014222380, "orderid": 18, "itemid": "Item_184", '
        b'"address": {"city": "Mountain View", "state": "CA", "zipcode": 94041}}'
    )
    kafka.produce("orders", [(b"18", seed_order)])
    before = {name: sum(kafka.end_offsets(name, 6).values()) for name in TOPICS}
    run = LocalRun(port=0, rate=50, kafka_bootstrap=kafka.bootstrap).start()
    try:
        assert run.broker is None and run.feed is None  # nothing started, nothing produced
        deadline = time.monotonic() + 30
        while True:
            try:
                signed_in = {"Authorization": f"Bearer {run.staff_token}"}
                order = urllib.request.Request(f"{run.url}/orders/18", headers=signed_in)
                with urllib.request.urlopen(order, timeout=5) as answer:
                    body = answer.read()
                break
            except urllib.error.HTTPError:
                assert time.monotonic() < deadline, "order 18 never reached the API"
                time.sleep(0.1)
        assert body == seed_order  # as produced, byte for byte
        assert json.loads(body)["address"]["city"] == "Mountain View"
    finally:
        run.stop()
    assert {name: sum(kafka.end_offsets(name, 6).values()) for name in TOPICS} == before
