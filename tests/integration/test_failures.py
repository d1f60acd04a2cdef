"""Redis failing under the handler, dead letters to SQS, and ACL credentials from Secrets Manager."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
import redis
from moto import mock_aws

from cachesync.config import Settings
from cachesync.connection import get_client
from cachesync.deadletter import RedisStreamSink, SqsSink
from cachesync.ingest import Ingestor, build_ingestor
from cachesync.writer import BatchWriter
from devkit import servers
from devkit.generator import EventGenerator
from harness.model import model_state, poison_coordinates, redis_state
from harness.proxy import StallingProxy
from tests.bounds import assert_within, redis_command_bound
from tests.integration.midbatch import mid_batch_writer
from tests.integration.test_ingest import records_of, sample


@pytest.fixture
def durable_server() -> Iterator[servers.ServerProcess]:
    """A Valkey that keeps every write across a crash (AOF, fsync always), so a
    restart shows exactly what the failed invocation had applied."""
    server = servers.start_server(extra=["--appendonly", "yes", "--appendfsync", "always"])
    yield server
    server.remove()


def _kill(server: servers.ServerProcess) -> None:
    server.process.kill()
    server.process.wait()


def _drop_clients(url: str) -> None:
    redis.Redis.from_url(url).client_kill_filter(_type="normal", skipme=True)


def test_redis_dying_mid_batch_fails_the_invocation_and_the_retry_converges(
    durable_server: servers.ServerProcess,
) -> None:
    settings = Settings.from_env(
        {
            "REDIS_URL": durable_server.url,
            "SCRIPT_BATCH_SIZE": "50",
            "REDIS_RETRIES": "1",
            "REDIS_CONNECT_TIMEOUT": "0.2",
        }
    )
    event = EventGenerator(seed=11, partitions=4, stores=2, skus=20).batch(2000)
    healthy = build_ingestor(settings)
    crashing = Ingestor(
        settings,
        # SIGKILL: the server dies half-way through the batch's script calls
        mid_batch_writer(lambda: _kill(durable_server), get_client(settings), 50),
        healthy._dead_letters,
    )
    with pytest.raises(redis.exceptions.ConnectionError):
        crashing.process(event)

    durable_server.restart()  # the AOF brings back what was applied before the crash
    client = redis.Redis.from_url(durable_server.url)
    partially = client.dbsize()
    assert partially > 0, "the first half of the batch should have been applied before the crash"

    retry = healthy.process(event)  # the event source mapping retries the whole batch
    assert retry.duplicates > 0 and retry.applied > 0
    assert retry.applied + retry.duplicates == 2000
    assert redis_state(client) == model_state({}, records_of(event))


def test_unreachable_redis_fails_fast_with_a_connection_error() -> None:
    port = servers.free_port()
    settings = Settings.from_env(
        {"REDIS_URL": f"redis://127.0.0.1:{port}/0", "REDIS_RETRIES": "2", "REDIS_CONNECT_TIMEOUT": "0.2"}
    )
    started = time.monotonic()
    with pytest.raises(redis.exceptions.ConnectionError):
        build_ingestor(settings).process(sample("kafka-orders.json"))
    # the transport sends again after a lost connection, within the retries, and the client retries each send
    rounds = 1 + settings.retries
    assert_within(time.monotonic() - started, redis_command_bound(settings, rounds), "the failed invocation")


def test_a_network_that_stops_answering_is_tried_once_a_round_not_once_a_chunk(
    valkey_proxy: tuple[servers.ServerProcess, StallingProxy],
) -> None:
    # the writer sends a batch in chunks; once a reply times out, the chunks after it wait for the
    # transport's next round instead of each waiting out a timeout of its own
    _, proxy = valkey_proxy
    settings = Settings.from_env(
        {"REDIS_URL": proxy.url, "REDIS_RETRIES": "1", "REDIS_CONNECT_TIMEOUT": "0.25", "REDIS_SOCKET_TIMEOUT": "0.25"}
    )
    client = get_client(settings)
    writer = BatchWriter(client, settings.script_batch_size, settings.retries, chunk_records=100)
    ingest = Ingestor(settings, writer, RedisStreamSink(client, settings.dlq_stream_key, 100))
    generator = EventGenerator(seed=26, partitions=3)
    ingest.process(generator.batch(100))  # a live connection, as in a warm Lambda environment
    batch = generator.batch(10_000)  # 100 chunks
    proxy.stall()
    started = time.monotonic()
    with pytest.raises((redis.exceptions.TimeoutError, redis.exceptions.ConnectionError)):
        ingest.process(batch)
    rounds = 1 + settings.retries
    assert_within(time.monotonic() - started, redis_command_bound(settings, rounds), "the failed invocation")


@pytest.fixture
def aws(aws_test_credentials: None) -> Iterator[None]:
    """moto stands in for the AWS APIs (no account is reached)."""
    with mock_aws():
        yield


def test_poison_records_go_to_sqs_with_their_reason(aws: None, valkey: Any) -> None:
    sqs = boto3.client("sqs", region_name="us-east-1")
    url = sqs.create_queue(QueueName="cachesync-dlq")["QueueUrl"]
    settings = valkey.settings(DLQ_QUEUE_URL=url)
    client = get_client(settings)
    ingest = Ingestor(
        settings,
        BatchWriter(client, settings.script_batch_size),
        SqsSink(url, sqs),
    )
    event = sample("kafka-mixed.json")
    outcome = ingest.process(event)
    assert outcome.dead_lettered == 3

    messages = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, MessageAttributeNames=["All"])["Messages"]
    bodies = [json.loads(m["Body"]) for m in messages]
    coordinates = sorted((b["topic"], b["partition"], b["offset"]) for b in bodies)
    assert coordinates == poison_coordinates({}, records_of(event))
    assert all(
        m["MessageAttributes"]["reason"]["StringValue"] == b["reason"] for m, b in zip(messages, bodies, strict=True)
    )
    assert any("not valid JSON" in b["reason"] for b in bodies)
    # the good records were applied and nothing was written to the Redis dead-letter stream
    assert client.exists("orders:1002") == 1 and client.exists("deadletter:ingest") == 0
    assert redis_state(client) == model_state({}, records_of(event))


def test_large_dead_letters_are_split_across_sqs_batches(aws: None) -> None:
    sqs = boto3.client("sqs", region_name="us-east-1")
    url = sqs.create_queue(QueueName="cachesync-dlq")["QueueUrl"]
    from cachesync.deadletter import DeadLetter

    letters = [
        DeadLetter("orders", 0, n, 1, None, "A" * (100_000 if n % 2 else 10), [], f"reason {n}") for n in range(13)
    ] + [DeadLetter("orders", 0, 99, 1, None, "B" * 300_000, [], "too big")]
    SqsSink(url, sqs).send(letters)
    received: list[dict[str, Any]] = []
    while True:
        batch = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10).get("Messages", [])
        if not batch:
            break
        received += [json.loads(m["Body"]) for m in batch]
        sqs.delete_message_batch(
            QueueUrl=url, Entries=[{"Id": m["MessageId"], "ReceiptHandle": m["ReceiptHandle"]} for m in batch]
        )
    assert sorted(r["offset"] for r in received) == [*range(13), 99]
    big = next(r for r in received if r["offset"] == 99)
    assert big["value"] is None and "trimmed to fit the dead-letter queue: value (300002 characters)" in big["reason"]


def test_a_large_key_headers_and_value_are_trimmed_to_fit_one_message(aws: None) -> None:
    sqs = boto3.client("sqs", region_name="us-east-1")
    url = sqs.create_queue(QueueName="cachesync-dlq")["QueueUrl"]
    from cachesync.deadletter import SQS_MESSAGE_BYTES, DeadLetter

    headers = [{"trace": list(range(200))} for _ in range(200)]  # ~150 KB of headers
    letters = [
        DeadLetter("orders", 0, 1, 1, "K" * 250_000, "V" * 200_000, headers, "key, headers and value too big"),
        DeadLetter("orders", 0, 2, 1, "K" * 300_000, None, [], "key too big"),
        DeadLetter("orders", 0, 3, 1, "k", "v", [{"h": [1]}], "small: untouched"),
    ]
    SqsSink(url, sqs).send(letters)  # moto enforces the 256 KiB message limit like SQS
    messages = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10)["Messages"]
    bodies = {b["offset"]: b for b in (json.loads(m["Body"]) for m in messages)}
    assert all(len(m["Body"]) <= SQS_MESSAGE_BYTES for m in messages)
    first = bodies[1]
    assert (first["value"], first["headers"], first["key"]) == (None, None, None)
    assert "value (200002 characters), headers" in first["reason"] and "key (250002 characters)" in first["reason"]
    assert bodies[2]["key"] is None and bodies[2]["headers"] == [] and "key (300002 characters)" in bodies[2]["reason"]
    assert (bodies[3]["key"], bodies[3]["value"], bodies[3]["reason"]) == ("k", "v", "small: untouched")


def test_an_unreachable_queue_fails_fast_and_the_letters_go_to_the_redis_stream(
    valkey: Any, aws_test_credentials: None
) -> None:
    from cachesync.deadletter import DeadLetter, FallbackSink, RedisStreamSink, sqs_client

    port = servers.free_port()  # nothing listens there: every attempt is refused
    url = f"http://127.0.0.1:{port}/123456789012/cachesync-dlq"
    client = get_client(valkey.settings())
    queue = sqs_client(endpoint_url=f"http://127.0.0.1:{port}")
    sink = FallbackSink(SqsSink(url, queue), RedisStreamSink(client, "deadletter:ingest", 100))
    letters = [DeadLetter("orders", 0, n, 1, None, "e30=", [], f"reason {n}") for n in range(3)]
    started = time.monotonic()
    sink.send(letters)
    assert_within(time.monotonic() - started, sqs_call_bound(queue), "giving up on the dead queue")
    assert sink.fallbacks == 1
    stream = client.xrange("deadletter:ingest")
    assert [fields[b"reason"] for _, fields in stream] == [b"reason 0", b"reason 1", b"reason 2"]


def sqs_call_bound(client: Any) -> float:
    """The longest one SQS call may take by the client's configuration: each attempt waits to
    connect and to read, and standard retries back off at most 1, 2, 4... s between attempts."""
    config = client.meta.config
    attempts = config.retries["total_max_attempts"]
    backoffs = sum(2.0**n for n in range(attempts - 1))
    return float(attempts * (config.connect_timeout + config.read_timeout) + backoffs)


def test_the_sqs_client_has_short_timeouts_and_standard_retries(aws: None) -> None:
    from cachesync.deadletter import sqs_client

    config = sqs_client(endpoint_url="http://127.0.0.1:1").meta.config
    assert (config.connect_timeout, config.read_timeout) == (1.0, 2.0)
    assert config.retries == {"mode": "standard", "total_max_attempts": 3}


def test_acl_credentials_come_from_secrets_manager(aws: None, valkey: Any) -> None:
    admin = redis.Redis.from_url(valkey.url)
    admin.execute_command("ACL", "SETUSER", "ingest", "on", ">s3cret-pass", "~*", "+@all")
    secrets = boto3.client("secretsmanager", region_name="us-east-1")
    arn = secrets.create_secret(
        Name="cache-user", SecretString=json.dumps({"username": "ingest", "password": "s3cret-pass"})
    )["ARN"]
    client = get_client(valkey.settings(REDIS_SECRET_ARN=arn))
    assert client.acl_whoami() in ("ingest", b"ingest")

    plain = secrets.create_secret(Name="cache-password", SecretString="s3cret-pass")["ARN"]
    client = get_client(valkey.settings(REDIS_SECRET_ARN=plain, REDIS_USERNAME="ingest"))
    assert client.acl_whoami() in ("ingest", b"ingest")


def test_a_connection_dropped_mid_batch_is_replaced_and_the_batch_completes(valkey: Any) -> None:
    settings = valkey.settings(SCRIPT_BATCH_SIZE="50")
    event = EventGenerator(seed=13, partitions=4, stores=2, skus=20).batch(2000)
    redis.Redis.from_url(valkey.url).config_resetstat()
    ingest = Ingestor(
        settings,
        mid_batch_writer(lambda: _drop_clients(valkey.url), get_client(settings), 50),
        build_ingestor(settings)._dead_letters,
    )
    outcome = ingest.process(event)
    # the second half went out again on a fresh connection: every record applied once
    assert outcome.applied + outcome.duplicates == 2000 and outcome.applied > 0
    client = redis.Redis.from_url(valkey.url)
    assert redis_state(client) == model_state({}, records_of(event))
