"""`make status` and `make rebuild`: the cache against its Kafka log, locally, and its repair.

    python -m devkit.ops status                       # REDIS_URL (or make invoke's Valkey), KAFKA_BOOTSTRAP
    python -m devkit.ops rebuild --topic inventory    # or --all; stop make run / make esm first

`status` shows, per topic-partition, the offset the cache applied last, Kafka's
log start and end offsets, the lag between them, the mapping's committed
offset, and any divergence marker (a batch the mapping skipped, a rebuild
under way), with the dead letters waiting.

`rebuild` clears a topic's keys and applied offsets together, then replays the
topic from its earliest offset through the template's mapping and
IngestFunction, with progress, until it reaches the end offsets it saw when it
started; the mapping's consumer group is left at that position. A stock
ledger rebuilt from a log that no longer starts at offset 0 cannot come out
exact, so it refuses that unless asked (`--partial-history`).

Deployed, the same steps run through MaintenanceFunction (docs/deploy.md, "Rebuild").
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from dataclasses import replace
from typing import Any

from cachesync import maintenance
from cachesync.config import STOCK_LEDGER, Settings
from cachesync.connection import RedisClient, get_client
from devkit import localredis
from devkit.esm.kafka import (
    MappingError,
    check_topics,
    client_settings,
    coordinator_settling,
    credentials,
    retrying,
)
from devkit.esm.mapping import MappingConfig, read_mappings
from devkit.esm.poller import LocalEventSourceMapping
from devkit.esm.runner import InProcessFunction, tune_collector
from devkit.sam import describe, parameter_overrides


def kafka_view(config: MappingConfig, settings: dict[str, Any]) -> dict[int, dict[str, int]]:
    """Per partition: the log's start and end offsets and the group's committed offset (-1: none)."""
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer({**settings, "group.id": config.consumer_group, "enable.auto.commit": False})
    try:
        topic = config.topics[0]
        partitions = sorted(consumer.list_topics(topic, timeout=10).topics[topic].partitions)
        wanted = [TopicPartition(topic, p) for p in partitions]
        answer = retrying(lambda: consumer.committed(wanted, timeout=10), coordinator_settling())
        committed = {tp.partition: tp.offset for tp in answer}
        view = {}
        for p in partitions:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
            view[p] = {"start": low, "end": high, "committed": committed.get(p, -1)}
        return view
    finally:
        consumer.close()


def status(
    client: RedisClient, settings: Settings, mappings: list[MappingConfig], kafka: dict[str, Any] | None
) -> dict[str, Any]:
    report = maintenance.status(client, settings)
    if kafka is None:
        return report
    for config in mappings:
        topic = config.topics[0]
        entry = report["topics"].setdefault(topic, {"partitions": {}})
        applied = entry["partitions"]
        view = kafka_view(config, kafka)
        entry["partitions"] = {
            str(p): {
                "applied": applied.get(str(p)),
                **offsets,
                # records in the log that the cache has not applied (end is the next offset to be written)
                "lag": offsets["end"]
                - 1
                - (applied.get(str(p)) if applied.get(str(p)) is not None else offsets["start"] - 1),
            }
            for p, offsets in view.items()
        }
        entry["consumerGroup"] = config.consumer_group
        if any(o["start"] > 0 for o in view.values()):
            entry["history"] = "the log no longer starts at offset 0: a rebuild cannot replay what retention removed"
    return report


def rebuild(
    client: RedisClient,
    settings: Settings,
    config: MappingConfig,
    kafka: dict[str, Any],
    function: InProcessFunction,
    partial_history: bool = False,
    say: Any = print,
) -> int:
    """Clears the topic and replays it from the earliest offset; returns the records replayed."""
    topic = config.topics[0]
    view = kafka_view(config, kafka)
    projection = settings.topic(topic)
    if projection is None:
        raise MappingError(f"no projection is configured for topic {topic!r}")
    if projection.kind == STOCK_LEDGER and any(o["start"] > 0 for o in view.values()) and not partial_history:
        raise MappingError(
            f"{topic}: the log no longer starts at offset 0, so its stock deltas cannot be replayed exactly; "
            "pass --partial-history to rebuild from what remains (then take a stock count)"
        )
    _require_idle(config, kafka)
    target = {f"{topic}-{p}": o["end"] for p, o in view.items() if o["end"] > o["start"]}
    total = sum(o["end"] - o["start"] for o in view.values())
    cleared_first = threading.Event()
    poller = LocalEventSourceMapping(
        replace(config, window_seconds=0.0), function, kafka, from_earliest=True, hold=cleared_first
    )
    poller.start()
    try:
        # joined the group with every partition: no other consumer of the group applies the topic
        deadline = time.monotonic() + 30
        while poller.assignment != {f"{topic}-{p}" for p in view} and time.monotonic() < deadline:
            time.sleep(0.05)
        if poller.assignment != {f"{topic}-{p}" for p in view}:
            raise MappingError(
                f"{config.consumer_group} shares {topic} with another consumer: stop the mapping "
                "(make run, make esm) before rebuilding its topic"
            )
        cleared = maintenance.clear_topic(client, settings, topic)
        say(f"{topic}: cleared {cleared.keys} keys and {cleared.offsets} applied offsets; replaying from the start")
        cleared_first.set()
        starts = {f"{topic}-{p}": o["start"] for p, o in view.items()}
        while True:
            done = sum(min(poller.stats.committed.get(k, starts[k]), end) - starts[k] for k, end in target.items())
            say(f"\r{topic}: {done:,}/{total:,} records replayed")
            if all(poller.stats.committed.get(k, 0) >= end for k, end in target.items()):
                break
            if poller.error is not None:
                raise MappingError(f"{topic}: the replay stopped: {poller.error}")
            time.sleep(0.2)
    finally:
        poller.stop()
    maintenance.finish_rebuild(client, topic)
    say(f"\n{topic}: rebuilt from {total:,} records")
    return total


def _require_idle(config: MappingConfig, kafka: dict[str, Any]) -> None:
    """Refuses while the mapping's consumer group has members: a running mapping would apply
    records behind the clear, and the replay would then skip what came before them."""
    from confluent_kafka.admin import AdminClient

    admin = AdminClient(kafka)  # held: its futures never complete once it is collected
    future = admin.describe_consumer_groups([config.consumer_group], request_timeout=10)
    try:
        group = future[config.consumer_group].result(15)
    except Exception:  # unknown group, or a broker without DescribeGroups
        return
    if group.members:
        raise MappingError(
            f"{config.consumer_group} has active consumers ({len(group.members)}): stop the mapping "
            "(make run, make esm) before rebuilding its topic. A mapping that was killed keeps its "
            "place until the broker's session timeout; starting and stopping it (Ctrl-C) frees it"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="The cache against its Kafka log: status and rebuild.")
    parser.add_argument("command", choices=("status", "rebuild"))
    parser.add_argument("--topic", action="append", default=[], help="rebuild this topic (repeatable)")
    parser.add_argument("--all", action="store_true", help="rebuild every topic")
    parser.add_argument("--bootstrap", default=os.environ.get("KAFKA_BOOTSTRAP"), help="host:port of Kafka")
    parser.add_argument("--partial-history", action="store_true", help="rebuild a ledger from a truncated log")
    parser.add_argument("--parameter-overrides", nargs="*", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    parameters = parameter_overrides(args.parameter_overrides)
    redis_url = os.environ.get("REDIS_URL") or localredis.ensure()
    if args.bootstrap:
        parameters["KafkaBootstrapServers"] = args.bootstrap
    parameters["RedisUrl"] = redis_url
    function = describe("IngestFunction", parameters)
    os.environ.update({**function.environment, "REDIS_URL": redis_url})
    os.environ.setdefault("REDIS_CLUSTER", "false")
    settings = Settings.from_env()
    client = get_client(settings)
    mappings = [
        m.with_bootstrap(args.bootstrap) if args.bootstrap else m
        for m in read_mappings(parameters, function="IngestFunction")
    ]
    try:
        kafka = None
        if args.bootstrap:
            kafka = client_settings(mappings[0], credentials(mappings[0]))
            for config in mappings:
                check_topics(config, kafka)
        if args.command == "status":
            print(json.dumps(status(client, settings, mappings, kafka), indent=2))
            return 0
        if kafka is None:
            parser.error("rebuild replays Kafka: give --bootstrap host:port or set KAFKA_BOOTSTRAP")
        chosen = [m for m in mappings if args.all or m.topics[0] in args.topic]
        if not chosen:
            parser.error("name the topics to rebuild with --topic, or --all")
        ingest = InProcessFunction(function)
        tune_collector()
        for config in chosen:
            rebuild(client, settings, config, kafka, ingest, args.partial_history, say=_say)
    except MappingError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


def _say(text: str) -> None:
    print(text, end="" if text.startswith("\r") else "\n", file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
