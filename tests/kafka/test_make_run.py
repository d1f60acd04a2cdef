"""`KAFKA_BOOTSTRAP=host:port make run` on a broker it did not start (the session's embedded one):
nothing created, nothing produced; two runs on one cluster share it without fencing each other; and
a run whose consumer is fenced stops with the reason, leaving nothing behind."""

from __future__ import annotations

import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from devkit import brokers
from devkit.generator import TOPICS
from tests.functional.runkit import StackRun, fetch, wait_for

PARTITIONS = 6


@pytest.fixture
def broker(embedded_broker: brokers.Broker) -> str:
    """The session's broker, holding the topics `make run` consumes (made here, not by the run)."""
    admin = AdminClient({"bootstrap.servers": embedded_broker.bootstrap})
    missing = [t for t in TOPICS if t not in admin.list_topics(timeout=30).topics]
    if missing:
        for future in admin.create_topics([NewTopic(t, PARTITIONS, 1) for t in missing]).values():
            future.result(30)
    wait_for(lambda: all(t in admin.list_topics(timeout=30).topics for t in TOPICS), "the topics")
    return embedded_broker.bootstrap


class Runs:
    """`KAFKA_BOOTSTRAP=<broker> make run`s, with consumer groups of this test's own (one prefix for all)."""

    def __init__(self, folder: Path, broker: str):
        self.folder, self.broker = folder, broker
        self.groups = f"make-run-{uuid.uuid4().hex[:8]}"
        self.started: list[StackRun] = []

    def start(self) -> StackRun:
        arguments = f"ARGS=--rate 0 --parameter-overrides KafkaConsumerGroupId={self.groups}"
        folder = self.folder / f"run-{len(self.started)}"
        run = StackRun.start(folder, ("make", "-s", "run", arguments), {"KAFKA_BOOTSTRAP": self.broker})
        self.started.append(run)
        return run


@pytest.fixture
def runs(tmp_path: Path, broker: str) -> Iterator[Runs]:
    made = Runs(tmp_path, broker)
    yield made
    for run in made.started:
        run.kill()


def topics_and_offsets(bootstrap: str) -> dict[str, dict[int, int]]:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "make-run-probe", "log_level": 0})
    try:
        topics = consumer.list_topics(timeout=30).topics
        return {
            name: {p: consumer.get_watermark_offsets(TopicPartition(name, p), timeout=30)[1] for p in topic.partitions}
            for name, topic in topics.items()
            if not name.startswith("__")  # the broker's own (the group coordinator makes its offsets topic)
        }
    finally:
        consumer.close()


def members(bootstrap: str, group: str) -> list[Any]:
    admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 0})
    return list(admin.describe_consumer_groups([group])[group].result(30).members)


def produce_orders(bootstrap: str, order_ids: list[int]) -> dict[int, bytes]:
    producer = Producer({"bootstrap.servers": bootstrap, "partitioner": "murmur2_random", "log_level": 0})
    produced = {}
    for order_id in order_ids:
        value = (
            f'{{"ordertime":1497014222380,"orderid":{order_id},"itemid":"Item_{order_id % 1000}",'
            '"address":{"city":"Mountain View","state":"CA","zipcode":94041}}'
        ).encode()
        producer.produce("orders", key=str(order_id).encode(), value=value)
        produced[order_id] = value
    assert producer.flush(60) == 0
    producer.close()
    return produced


def unique_order_ids(count: int) -> list[int]:
    first = int(uuid.uuid4().int % 10**8) * 100 + 10**9  # far from the seeded 1..2000 and other tests'
    return list(range(first, first + count))


def test_make_run_on_an_existing_broker_creates_nothing_produces_nothing_and_serves_its_records(
    runs: Runs, broker: str
) -> None:
    [order_id] = unique_order_ids(1)
    produced = produce_orders(broker, [order_id])
    before = topics_and_offsets(broker)
    run = runs.start()
    banner = run.banner()
    assert f"Kafka at {broker}:" in banner and "producing nothing" in banner
    assert [e.command.split()[0].rsplit("/", 1)[-1] for e in run.servers()] == ["valkey-server"]  # no broker
    wait_for(lambda: fetch(f"{run.url}/orders/{order_id}", run.staff())[0] == 200, "the order")
    assert fetch(f"{run.url}/orders/{order_id}", run.staff())[1] == produced[order_id]
    assert topics_and_offsets(broker) == before  # no topic made, no record written
    run.signal_group(signal.SIGINT)
    run.wait_exit()
    run.wait_servers_gone()
    assert topics_and_offsets(broker) == before


def test_two_runs_on_one_cluster_share_its_partitions_and_neither_is_fenced(runs: Runs, broker: str) -> None:
    first = runs.start()
    first.banner()
    wait_for(lambda: bool(members(broker, f"{runs.groups}-orders")), "the first run's consumer")
    second = runs.start()
    second.banner()
    assert f"consumer group {runs.groups}-orders already has" in second.stderr  # told it shares them
    orders = produce_orders(broker, unique_order_ids(60))

    def served_by(run: StackRun) -> set[int]:
        return {o for o in orders if fetch(f"{run.url}/orders/{o}", run.staff())[0] == 200}

    served: dict[str, set[int]] = {}

    def all_served() -> bool:
        served.update(first=served_by(first), second=served_by(second))
        return served["first"] | served["second"] == set(orders)

    wait_for(all_served, "every order through one run or the other")
    assert served["first"] and served["second"], served  # each run consumes its share
    assert first.process.poll() is None and second.process.poll() is None  # neither was stopped
    for run in (first, second):
        assert "fenced" not in run.stderr and "stopped:" not in run.stderr, run.stderr[-3000:]
    for run in (first, second):
        run.signal_group(signal.SIGINT)
    for run in (first, second):
        run.wait_exit()
        run.wait_servers_gone()
        assert "stopped (streamed 0 events)" in run.stderr


def test_a_run_whose_consumer_is_fenced_stops_with_the_reason(runs: Runs, broker: str) -> None:
    """Another consumer takes one of the run's static member ids: the run's mapping is fenced, and the
    run says so and stops (it does not go on serving without consuming), leaving nothing behind."""
    run = runs.start()
    run.banner()
    group = f"{runs.groups}-orders"
    wait_for(lambda: any(m.group_instance_id for m in members(broker, group)), "the run's static member")
    instance = next(m.group_instance_id for m in members(broker, group) if m.group_instance_id)
    intruder = Consumer({"bootstrap.servers": broker, "group.id": group, "group.instance.id": instance, "log_level": 0})
    try:
        intruder.subscribe(["orders"])
        deadline = time.monotonic() + 240
        while run.process.poll() is None and time.monotonic() < deadline:
            intruder.poll(0.2)
        assert run.wait_exit() != 0
        assert "OrdersMapping stopped" in run.stderr and "fenced" in run.stderr, run.stderr[-3000:]
        run.wait_servers_gone()
    finally:
        intruder.unsubscribe()  # a static member leaves its group only this way
        intruder.close()
