"""The local event source mapping against real brokers: payload, batching, commits, retries,
bisect, partial batch responses, record age, destinations and starting positions."""

from __future__ import annotations

import base64
import json
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto import mock_aws

from devkit.esm import payload
from devkit.esm.kafka import MappingError
from devkit.esm.mapping import MappingConfig
from devkit.esm.poller import PAUSE_RECORDS, LocalEventSourceMapping
from devkit.servers import free_port
from tests.bounds import assert_within
from tests.kafka.conftest import Kafka, Recorder, wait_until

FIXTURE = Path(__file__).parent / "fixtures" / "kafkaEventSelfManaged.json"


def mapping(kafka: Kafka, topic: str, **options: Any) -> MappingConfig:
    defaults: dict[str, Any] = {"window_seconds": 0.0, "batch_size": 100}
    return MappingConfig(
        logical_id="TestMapping",
        function="TestFunction",
        topics=(topic,),
        bootstrap_servers=(kafka.bootstrap,),
        consumer_group=f"g-{uuid.uuid4().hex[:8]}",
        **(defaults | options),
    )


@contextmanager
def polling(config: MappingConfig, function: Any, **options: Any) -> Iterator[LocalEventSourceMapping]:
    esm = LocalEventSourceMapping(
        config, function, {"bootstrap.servers": ",".join(config.bootstrap_servers)}, backoff=(0.01, 0.05), **options
    )
    esm.check()
    esm.start()
    try:
        yield esm
    finally:
        esm.stop()


def test_payload_matches_lambdas_documented_event(kafka: Kafka) -> None:
    expected = json.loads(FIXTURE.read_text())
    sample = expected["records"]["mytopic-0"][0]
    topic = kafka.topic(partitions=1)
    header = [(name, bytes(b % 256 for b in data)) for h in sample["headers"] for name, data in h.items()]
    kafka.produce(topic, [(base64.b64decode(sample["key"]), base64.b64decode(sample["value"]))], headers=header)
    recorder = Recorder()
    with polling(mapping(kafka, topic), recorder):
        wait_until(lambda: recorder.events, what="an invocation")

    event = recorder.events[0]
    assert set(event) == set(expected)
    assert event["eventSource"] == "SelfManagedKafka"  # the fixture predates this name: see fixtures/README.md
    assert event["bootstrapServers"] == kafka.bootstrap
    assert list(event["records"]) == [f"{topic}-0"]
    record = event["records"][f"{topic}-0"][0]
    assert set(record) == set(sample)
    for name, value in sample.items():
        assert type(record[name]) is type(value), name
    for name in ("partition", "timestampType", "key", "value", "headers"):
        assert record[name] == sample[name], name
    assert record["topic"] == topic and record["offset"] == 0
    assert abs(record["timestamp"] - time.time() * 1000) < 60_000


def test_headers_are_signed_bytes_null_keys_are_left_out_and_tombstones_are_null(kafka: Kafka) -> None:
    topic = kafka.topic(partitions=1)
    kafka.produce(topic, [(None, b"{}")], headers=[("name", "ë".encode()), ("empty", b"")])
    kafka.produce(topic, [(b"k", None)])
    recorder = Recorder()
    with polling(mapping(kafka, topic), recorder):
        wait_until(lambda: len(recorder.records()) == 2, what="both records")
    keyless, tombstone = recorder.records()
    assert "key" not in keyless
    assert keyless["headers"] == [{"name": [-61, -85]}, {"empty": []}]
    assert tombstone["value"] is None and tombstone["key"] == "aw=="


def test_batches_keep_partition_order_and_the_batch_size(kafka: Kafka) -> None:
    topic = kafka.topic(partitions=3)
    producer = kafka.producer(**{"linger.ms": 20})
    for n in range(250):
        producer.produce(topic, key=str(n % 17).encode(), value=str(n).encode())
    producer.flush(30)
    recorder = Recorder()
    with polling(mapping(kafka, topic, batch_size=40, window_seconds=1.0), recorder) as esm:
        wait_until(lambda: len(recorder.records()) >= 250, what="250 records")
        wait_until(lambda: sum(esm.stats.committed.values()) == 250, what="the commits")
    assert all(sum(len(rs) for rs in e["records"].values()) <= 40 for e in recorder.events)
    seen = recorder.coordinates()
    assert len(seen) == len(set(seen)) == 250
    for p in range(3):
        offsets = [o for q, o in seen if q == p]
        assert offsets == sorted(offsets) == list(range(len(offsets)))


def test_the_batching_window_gathers_records_into_one_invocation(kafka: Kafka) -> None:
    topic = kafka.topic(partitions=1)
    recorder = Recorder()
    with polling(mapping(kafka, topic, window_seconds=4.0), recorder):
        time.sleep(1.0)  # the group has joined: the records below arrive one by one, inside one window
        for n in range(5):
            kafka.produce(topic, [(None, str(n).encode())])
            time.sleep(0.1)
        wait_until(lambda: len(recorder.records()) == 5, what="the five records")
    assert len(recorder.events) == 1


def test_no_payload_passes_six_megabytes(kafka: Kafka) -> None:
    topic = kafka.topic(partitions=1)
    big = b"x" * 700_000  # base64 makes each ~933 KB in the payload: 8 of them need two invocations
    kafka.produce(topic, [(str(n).encode(), big) for n in range(8)])
    recorder = Recorder()
    with polling(mapping(kafka, topic, window_seconds=2.0), recorder):
        wait_until(lambda: len(recorder.records()) == 8, what="the eight records")
    sizes = [len(json.dumps(e, separators=(",", ":"))) for e in recorder.events]
    assert len(sizes) >= 2 and max(sizes) <= payload.MAX_PAYLOAD_BYTES, sizes
    assert [o for _, o in recorder.coordinates()] == list(range(8))


def test_a_function_error_retries_the_whole_batch_and_commits_only_after_success(kafka: Kafka) -> None:
    topic = kafka.topic(partitions=1)
    kafka.produce(topic, [(None, str(n).encode()) for n in range(10)])
    committed_while_failing: list[dict[str, int]] = []
    esm_ref: list[LocalEventSourceMapping] = []

    def respond(event: dict[str, Any], calls: int) -> Any:
        if calls <= 3:
            committed_while_failing.append(dict(esm_ref[0].stats.committed))
            raise RuntimeError("Redis is down")
        return None

    recorder = Recorder(respond)
    config = mapping(kafka, topic, batch_size=10, window_seconds=1.0)
    with polling(config, recorder) as esm:
        esm_ref.append(esm)
        wait_until(lambda: esm.stats.committed.get(f"{topic}-0") == 10, what="the commit")
    assert committed_while_failing == [{}, {}, {}]
    batches = [[r["offset"] for r in e["records"][f"{topic}-0"]] for e in recorder.events]
    assert batches[:4] == [list(range(10))] * 4
    assert esm.stats.function_errors == 3 and esm.stats.records_delivered == 10


def test_a_restarted_mapping_resumes_from_the_committed_offsets(kafka: Kafka) -> None:
    topic = kafka.topic(partitions=2)
    kafka.produce(topic, [(str(n).encode(), b"a") for n in range(30)])
    config = mapping(kafka, topic)
    first = Recorder()
    with polling(config, first) as esm:
        wait_until(lambda: sum(esm.stats.committed.values()) == 30, what="the first commits")
    kafka.produce(topic, [(str(n).encode(), b"b") for n in range(20)])
    second = Recorder()
    with polling(config, second):
        wait_until(lambda: len(second.records()) >= 20, what="the new records")
        time.sleep(0.5)
    assert len(second.records()) == 20
    assert {base64.b64decode(r["value"]) for r in second.records()} == {b"b"}


def test_starting_positions(kafka: Kafka) -> None:
    topic = kafka.topic(partitions=1)
    old = int(time.time() * 1000) - 3_600_000
    kafka.produce(topic, [(None, b"old")], timestamp=old)
    kafka.produce(topic, [(None, b"recent")], timestamp=old + 1_800_000)

    def values(recorder: Recorder) -> list[bytes]:
        return [base64.b64decode(r["value"]) for r in recorder.records()]

    trim = Recorder()
    with polling(mapping(kafka, topic, starting_position="TRIM_HORIZON"), trim):
        wait_until(lambda: len(trim.records()) == 2, what="both records")
    assert values(trim) == [b"old", b"recent"]

    at = Recorder()
    since = (old + 900_000) / 1000
    with polling(mapping(kafka, topic, starting_position="AT_TIMESTAMP", starting_timestamp=since), at):
        wait_until(lambda: len(at.records()) == 1, what="the recent record")
        time.sleep(0.5)
    assert values(at) == [b"recent"]

    latest = Recorder()
    with polling(mapping(kafka, topic, starting_position="LATEST"), latest) as esm:
        wait_until(lambda: bool(esm.assignment), what="the assignment")
        time.sleep(1.5)  # LATEST is resolved when the partition is first fetched
        kafka.produce(topic, [(None, b"new")])
        wait_until(lambda: len(latest.records()) == 1, what="the new record")
    assert values(latest) == [b"new"]


def test_bisect_isolates_a_failing_record_and_the_kafka_destination_gets_it(kafka: Kafka) -> None:
    topic, dead = kafka.topic(partitions=1), kafka.topic(partitions=1)
    kafka.produce(topic, [(str(n).encode(), b"poison" if n == 5 else b"ok") for n in range(8)])

    def respond(event: dict[str, Any], calls: int) -> Any:
        values = [base64.b64decode(r["value"]) for rs in event["records"].values() for r in rs]
        if b"poison" in values:
            raise ValueError("cannot apply")
        return None

    recorder = Recorder(respond)
    config = mapping(
        kafka, topic, batch_size=8, window_seconds=1.0, provisioned=True, maximum_retry_attempts=2,
        bisect_on_error=True, on_failure=f"kafka://{dead}",
    )  # fmt: skip
    with polling(config, recorder) as esm:
        wait_until(lambda: esm.stats.committed.get(f"{topic}-0") == 8, what="the commit past the poison")
    assert esm.stats.records_delivered == 7 and esm.stats.bisects >= 3 and esm.stats.dead_lettered == 1
    succeeded = {r["offset"] for e in recorder.events if _ok(e) for rs in e["records"].values() for r in rs}
    assert succeeded == {0, 1, 2, 3, 4, 6, 7}
    [message] = kafka.read_all(dead, 1)
    assert message.key() == b"5"
    document = json.loads(message.value())
    assert document["requestContext"]["condition"] == "RetriesExhausted"
    # in the batches of 8, 4 and 2 that bisect split, then alone: the first try and two retries
    assert document["requestContext"]["approximateInvokeCount"] == 6
    assert document["KafkaBatchInfo"]["recordInfo"]["offset"] == "5"
    [record] = document["payload"]["records"][f"{topic}-0"]
    assert base64.b64decode(record["value"]) == b"poison" and record["offset"] == 5


def _ok(event: dict[str, Any]) -> bool:
    return all(base64.b64decode(r["value"]) != b"poison" for rs in event["records"].values() for r in rs)


def test_an_sqs_destination_gets_the_invocation_record_without_the_records(kafka: Kafka) -> None:
    topic = kafka.topic(partitions=1)
    kafka.produce(topic, [(None, b"x"), (None, b"y")])

    def fail(event: dict[str, Any], calls: int) -> Any:
        raise RuntimeError("always")

    with mock_aws():
        sqs = boto3.client("sqs", region_name="us-east-1")
        url = sqs.create_queue(QueueName="failures")["QueueUrl"]
        config = mapping(
            kafka, topic, batch_size=2, window_seconds=1.0, provisioned=True, maximum_retry_attempts=1,
            on_failure="arn:aws:sqs:us-east-1:123456789012:failures",
        )  # fmt: skip
        with polling(config, Recorder(fail)) as esm:
            wait_until(lambda: esm.stats.committed.get(f"{topic}-0") == 2, what="the commit")
        [message] = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10)["Messages"]
    document = json.loads(message["Body"])
    assert document["requestContext"]["condition"] == "RetryAttemptsExhausted"
    assert document["requestContext"]["approximateInvokeCount"] == 2
    assert document["responseContext"]["functionError"] == "Unhandled"
    info = document["KafkaBatchInfo"]
    assert info["batchSize"] == 2 and info["bootstrapServers"] == kafka.bootstrap
    assert info["recordsInfo"][f"{topic}-0"]["firstRecordOffset"] == "0"
    assert info["recordsInfo"][f"{topic}-0"]["lastRecordOffset"] == "1"
    assert "payload" not in document


def test_records_older_than_the_maximum_age_go_to_the_destination_uninvoked(kafka: Kafka, tmp_path: Path) -> None:
    topic = kafka.topic(partitions=1)
    kafka.produce(topic, [(None, b"stale")], timestamp=int(time.time() * 1000) - 120_000)
    kafka.produce(topic, [(None, b"fresh")])
    recorder = Recorder()
    config = mapping(
        kafka, topic, window_seconds=1.0, provisioned=True, maximum_record_age_seconds=60,
        on_failure=f"file://{tmp_path}",
    )  # fmt: skip
    with polling(config, recorder) as esm:
        wait_until(lambda: esm.stats.committed.get(f"{topic}-0") == 2, what="the commit")
    assert [base64.b64decode(r["value"]) for r in recorder.records()] == [b"fresh"]
    [written] = list(tmp_path.iterdir())
    document = json.loads(written.read_text())
    assert document["requestContext"]["condition"] == "MaximumRecordAgeExceeded"
    [stale] = json.loads(document["payload"])["records"][f"{topic}-0"]
    assert base64.b64decode(stale["value"]) == b"stale"


def test_a_partial_batch_response_retries_from_the_lowest_failed_offset(kafka: Kafka) -> None:
    topic = kafka.topic(partitions=2)
    kafka.produce(topic, [(None, str(n).encode()) for n in range(6)], partition=0)
    kafka.produce(topic, [(None, str(n).encode()) for n in range(6)], partition=1)

    def respond(event: dict[str, Any], calls: int) -> Any:
        if calls == 1:
            return {"batchItemFailures": [{"itemIdentifier": {"partition": f"{topic}-0", "offset": 3}}]}
        return {"batchItemFailures": []}

    recorder = Recorder(respond)
    config = mapping(kafka, topic, batch_size=12, window_seconds=2.0, report_item_failures=True)
    with polling(config, recorder, concurrency=1) as esm:  # one lane: both partitions in one batch
        wait_until(lambda: sum(esm.stats.committed.values()) == 12, what="the commits")
    first, second = recorder.events[:2]
    assert sum(len(rs) for rs in first["records"].values()) == 12
    assert list(second["records"]) == [f"{topic}-0"]
    assert [r["offset"] for r in second["records"][f"{topic}-0"]] == [3, 4, 5]


def test_a_response_naming_no_record_of_the_batch_fails_the_whole_batch(kafka: Kafka) -> None:
    topic = kafka.topic(partitions=1)
    kafka.produce(topic, [(None, b"a"), (None, b"b")])

    def respond(event: dict[str, Any], calls: int) -> Any:
        return (
            {"batchItemFailures": [{"itemIdentifier": {"partition": "other-0", "offset": 0}}]} if calls == 1 else None
        )

    recorder = Recorder(respond)
    with polling(mapping(kafka, topic, window_seconds=1.0, report_item_failures=True), recorder) as esm:
        wait_until(lambda: esm.stats.committed.get(f"{topic}-0") == 2, what="the commit")
    assert [len(e["records"][f"{topic}-0"]) for e in recorder.events] == [2, 2]


def test_a_record_too_large_for_any_payload(kafka: Kafka, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(payload, "MAX_PAYLOAD_BYTES", 4_000)  # the broker's own message limit is below 6 MB
    topic = kafka.topic(partitions=1)
    kafka.produce(topic, [(None, b"small"), (None, b"L" * 5_000), (None, b"after")])
    recorder = Recorder()
    config = mapping(kafka, topic, window_seconds=1.0, provisioned=True, on_failure=f"file://{tmp_path}")
    with polling(config, recorder) as esm:
        wait_until(lambda: esm.stats.committed.get(f"{topic}-0") == 3, what="the commit")
    assert [base64.b64decode(r["value"]) for r in recorder.records()] == [b"small", b"after"]
    [written] = list(tmp_path.iterdir())
    document = json.loads(written.read_text())
    assert document["requestContext"]["condition"] == "MaximumPayloadSizeExceeded"
    assert document["responseContext"] is None

    # without a destination the mapping stops with an error rather than drop the record
    stuck = Recorder()
    with polling(mapping(kafka, topic, window_seconds=1.0), stuck) as esm:
        wait_until(lambda: esm.error is not None, what="the error")
    assert "larger than Lambda's 6 MB payload" in str(esm.error)
    assert [base64.b64decode(r["value"]) for r in stuck.records()] == [b"small"]


def test_an_unreachable_broker_is_a_clear_error_within_seconds() -> None:
    config = MappingConfig("OrdersMapping", "F", ("orders",), (f"127.0.0.1:{free_port()}",), "g")
    esm = LocalEventSourceMapping(config, Recorder(), {"bootstrap.servers": config.bootstrap_servers[0]})
    timeout = 3.0
    started = time.monotonic()
    with pytest.raises(MappingError, match=r"cannot reach Kafka at 127\.0\.0\.1:"):
        esm.check(timeout=timeout)
    # the configured wait, then half a second of polling for the reason
    assert_within(time.monotonic() - started, timeout + 0.5, "the unreachable broker's error")


def test_a_missing_topic_is_named(kafka: Kafka) -> None:
    config = mapping(kafka, "no-such-topic")
    esm = LocalEventSourceMapping(config, Recorder(), {"bootstrap.servers": kafka.bootstrap})
    with pytest.raises(MappingError, match="topic 'no-such-topic' of TestMapping does not exist"):
        esm.check()


def test_sasl_plain_credentials_from_a_secret_and_a_refusal_that_never_prints_the_secret(
    apache_broker: Any,
) -> None:
    from devkit.esm.kafka import Credentials, client_settings, credentials
    from tests.kafka.conftest import SASL_USERS

    [(user, password)] = SASL_USERS.items()
    kafka = Kafka(apache_broker)
    topic = kafka.topic(partitions=1)
    kafka.produce(topic, [(b"k", b"v")])
    env = {"KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT"}  # Lambda insists on TLS; the local listener has none
    config = mapping(kafka, topic, auth_type="BASIC_AUTH").with_bootstrap(apache_broker.sasl_bootstrap)
    with mock_aws():
        arn = boto3.client("secretsmanager", region_name="us-east-1").create_secret(
            Name="kafka", SecretString=json.dumps({"username": user, "password": password})
        )["ARN"]
        creds = credentials(config, {"KAFKA_SECRET_ARN": arn})
    assert creds == Credentials(user, password) and password not in repr(creds)
    settings = client_settings(config, creds, env)
    assert settings["sasl.mechanism"] == "PLAIN" and settings["security.protocol"] == "SASL_PLAINTEXT"
    recorder = Recorder()
    esm = LocalEventSourceMapping(config, recorder, settings)
    esm.check(timeout=10)
    esm.start()
    try:
        wait_until(lambda: len(recorder.records()) == 1, what="the record over SASL")
    finally:
        esm.stop()

    wrong = "not-" + password
    refused = LocalEventSourceMapping(config, Recorder(), client_settings(config, Credentials(user, wrong), env))
    with pytest.raises(MappingError, match=f"refused the credentials of '{user}' \\(PLAIN\\)") as raised:
        refused.check(timeout=3)
    assert wrong not in str(raised.value) and password not in str(raised.value)


def test_a_poller_that_dies_is_replaced_and_its_partitions_are_read_again(kafka: Kafka) -> None:
    """Two pollers; the first call waits while the poller that made it dies. The group rebalances,
    the records are read again from the committed offset and invoked while the first call still
    runs (it is abandoned), and a new poller takes the dead one's place."""
    topic = kafka.topic(partitions=4)
    for partition in range(4):
        kafka.produce(topic, [(None, f"{partition}-{n}".encode()) for n in range(5)], partition=partition)
    lock, release = threading.Lock(), threading.Event()
    first: list[tuple[str, int]] = []

    def respond(event: dict[str, Any], calls: int) -> Any:
        [(key, records)] = event["records"].items()
        with lock:
            hold = not first
            if hold:
                first.append((key, records[0]["offset"]))
        if hold:
            release.wait(60)
        return None

    recorder = Recorder(respond)
    with polling(mapping(kafka, topic), recorder, pollers=2) as esm:
        wait_until(lambda: bool(first), what="the first call")
        key, offset = first[0]
        owner = next(i for i, owned in enumerate(esm.poller_assignments()) if key in owned)
        esm.kill_poller(owner)

        def invoked_again() -> bool:
            return sum(1 for e in recorder.events if e["records"].get(key, [{}])[0].get("offset") == offset) >= 2

        wait_until(invoked_again, what="the same records invoked again after the poller died")
        release.set()
        wait_until(lambda: sum(esm.stats.committed.values()) == 20, what="every commit")
        wait_until(lambda: set().union(*esm.poller_assignments()) == {f"{topic}-{p}" for p in range(4)}, what="all")
        assert len(esm.poller_assignments()) == 2 and esm.running
    assert esm.stats.rebalances >= 1 and esm.stats.abandoned >= 1 and esm.stats.overlaps >= 1
    assert sorted(set(recorder.coordinates())) == sorted((p, n) for p in range(4) for n in range(5))


def test_a_partition_paused_far_behind_then_assigned_again_by_a_rebalance_is_read_to_its_end(kafka: Kafka) -> None:
    """A lane that stopped fetching (far behind, while nothing was invoked) goes through a rebalance
    that hands its partition back to the same poller: the partition must be fetched again."""
    topic = kafka.topic(partitions=1)
    count = PAUSE_RECORDS + 5_000
    kafka.produce(topic, [(None, b"{}")] * count, partition=0)
    recorder = Recorder()
    hold = threading.Event()  # nothing is invoked until it is set: the lane fills up and pauses
    with polling(mapping(kafka, topic, batch_size=500), recorder, hold=hold) as esm:
        wait_until(lambda: esm.stats.pauses >= 1, what="the lane to pause, far behind")
        esm.rebalance()
        wait_until(lambda: esm.stats.rebalances >= 1, what="the rebalance")
        hold.set()
        wait_until(lambda: esm.stats.committed.get(f"{topic}-0", 0) >= count, 120, "every record, after the rebalance")
    assert sorted(set(recorder.coordinates())) == [(0, offset) for offset in range(count)]
