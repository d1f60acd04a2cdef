"""Faults injected into real servers under the real ingest path: restarts during a live
stream, a network that stops forwarding, and a cache out of memory. After each, the cache
must hold every generated record exactly once (the reference model of tests/integration)."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from cachesync.config import Settings
from cachesync.ingest import build_ingestor
from cachesync.transport import WriteDeadlineExceeded
from devkit import servers
from devkit.generator import EventGenerator
from harness.model import model_state, redis_state
from harness.proxy import StallingProxy

INGEST_LAMBDA_TIMEOUT_S = 60  # IngestFunction's Timeout in template.yaml
BACKOFF_CAP_S = 0.5  # connection.py: ExponentialBackoff(cap=0.5)


def records_of(batch: dict[str, Any]) -> list[dict[str, Any]]:
    return [record for records in batch["records"].values() for record in records]


def worst_case_seconds(settings: Settings) -> float:
    """How long a batch may take while Redis does not answer: every attempt waits for a
    connection and a reply, with a capped backoff between attempts. The writer streams its
    first attempt on a pooled connection, then starts over with the client's retries."""
    attempts = 1 + settings.retries + 1
    return attempts * (settings.connect_timeout + settings.socket_timeout) + settings.retries * BACKOFF_CAP_S


def binaries() -> list[Any]:
    return [
        pytest.param("valkey", id="valkey"),
        pytest.param("redis7", id="redis7"),
    ]


def binary_for(name: str) -> str:
    if name == "valkey":
        return servers.valkey_binary()
    binary = servers.redis_binary()
    if binary is None:
        pytest.skip("redis-server is not installed (apt-get install -y redis-server)")
    return binary


@pytest.fixture(params=binaries())
def durable(request: pytest.FixtureRequest) -> Iterator[servers.ServerProcess]:
    """A server that keeps every acknowledged write across a crash (AOF, fsync always)."""
    server = servers.start_server(binary_for(request.param), extra=["--appendonly", "yes", "--appendfsync", "always"])
    yield server
    server.remove()


def test_restarts_during_a_live_stream_lose_nothing_and_apply_nothing_twice(
    durable: servers.ServerProcess,
) -> None:
    settings = Settings.from_env(
        {
            "REDIS_URL": durable.url,
            "REDIS_RETRIES": "1",
            "REDIS_CONNECT_TIMEOUT": "0.2",
            "REDIS_SOCKET_TIMEOUT": "0.5",
            "SCRIPT_BATCH_SIZE": "50",
        }
    )
    generator = EventGenerator(seed=41, partitions=3, stores=3, skus=30)
    log: list[dict[str, Any]] = []  # every generated record: the generator's log
    done = [0]  # batches applied so far
    failures: list[BaseException] = []
    errors: list[BaseException] = []
    batches, restarts = 60, 3

    def stream() -> None:
        """The event source mapping: each batch until it succeeds, sometimes a replay of the last."""
        try:
            ingest = build_ingestor(settings)
            rng = random.Random(7)
            previous: dict[str, Any] | None = None
            for _ in range(batches):
                batch = generator.batch(200)
                log.extend(records_of(batch))
                todo = [batch] + ([previous] if previous is not None and rng.random() < 0.25 else [])
                for delivery in todo:
                    while True:
                        try:
                            ingest.process(delivery)
                            break
                        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as error:
                            failures.append(error)  # the whole batch comes again, as Lambda retries it
                            time.sleep(0.05)
                previous = batch
                done[0] += 1
        except BaseException as error:  # surfaced by the assertion below
            errors.append(error)

    thread = threading.Thread(target=stream, name="live-stream")
    thread.start()
    for n in range(1, restarts + 1):
        deadline = time.monotonic() + 60
        while done[0] < n * batches // (restarts + 1) and time.monotonic() < deadline and thread.is_alive():
            time.sleep(0.01)
        durable.process.kill()  # a crash, mid-stream
        durable.process.wait()
        time.sleep(worst_case_seconds(settings) + 0.2)  # down longer than one invocation's retries
        durable.restart()  # the AOF brings back every acknowledged write
    thread.join(timeout=120)
    assert not thread.is_alive() and not errors, errors
    assert done[0] == batches
    assert failures, "the restarts should have failed some invocations"
    admin = redis.Redis.from_url(durable.url)
    assert redis_state(admin) == model_state(settings, log)
    print(f"\nrestarts: {restarts}, records: {len(log)}, failed invocations retried: {len(failures)}")


@pytest.mark.parametrize(
    "stall",
    [
        pytest.param("replies", id="replies-stop-mid-batch"),  # applied, but the acknowledgements are lost
        pytest.param("requests", id="requests-stop-mid-batch"),  # part of the batch reaches Redis
        pytest.param("everything", id="everything-stops"),
    ],
)
def test_a_stalled_network_fails_within_the_bounds_and_the_retry_converges(
    valkey_proxy: tuple[servers.ServerProcess, StallingProxy], stall: str
) -> None:
    server, proxy = valkey_proxy
    settings = Settings.from_env(
        {
            "REDIS_URL": proxy.url,
            "REDIS_SOCKET_TIMEOUT": "0.5",
            "REDIS_CONNECT_TIMEOUT": "0.5",
            "REDIS_RETRIES": "2",
            "SCRIPT_BATCH_SIZE": "100",
        }
    )
    generator = EventGenerator(seed=43, partitions=3, stores=3, skus=30)
    ingest = build_ingestor(settings)
    warm = generator.batch(100)
    ingest.process(warm)  # a live connection and the script loaded, as in a warm environment
    before = proxy.forwarded["to_server"]
    ingest.process(warm)  # a replay sends what the batch sent, the script's loading aside
    per_100_records = proxy.forwarded["to_server"] - before  # what a batch sends, the script's loading aside
    batch = generator.batch(3000)

    if stall == "replies":
        proxy.stall_after(to_client=60)  # the first few replies, then nothing
    elif stall == "requests":
        proxy.stall_after(to_server=per_100_records * 12)  # about 40% of the batch's requests
    else:
        proxy.stall()
    started = time.monotonic()
    with pytest.raises((redis.exceptions.TimeoutError, redis.exceptions.ConnectionError)):
        ingest.process(batch)
    elapsed = time.monotonic() - started
    bound = worst_case_seconds(settings) + 1.0  # + scheduling margin on a shared machine
    assert settings.socket_timeout <= elapsed <= bound, (elapsed, bound)

    proxy.resume()  # the network comes back; Lambda retries the whole batch
    retry = ingest.process(batch)
    assert retry.applied + retry.duplicates == len(records_of(batch))
    if stall == "everything":
        assert retry.duplicates == 0
    else:
        assert retry.duplicates > 0, "part of the batch should have been applied before the stall"
    admin = redis.Redis(port=server.port)
    assert redis_state(admin) == model_state(settings, records_of(warm) + records_of(batch))
    print(f"\nstall {stall}: failed after {elapsed:.2f}s (bound {bound:.2f}s); retry {retry.summary()}")


def test_the_default_bounds_fail_an_invocation_well_inside_the_lambda_timeout() -> None:
    defaults = Settings.from_env({})
    assert worst_case_seconds(defaults) < INGEST_LAMBDA_TIMEOUT_S / 4


@pytest.fixture
def small_cache() -> Iterator[servers.ServerProcess]:
    server = servers.start_server(extra=["--maxmemory-policy", "noeviction"])
    yield server
    server.remove()


def _fill_then_overflow(server: servers.ServerProcess) -> tuple[Settings, redis.Redis, Any, list[dict[str, Any]]]:
    """Applies a first batch, then leaves room for part of a 6,000-record batch only."""
    settings = Settings.from_env({"REDIS_URL": server.url, "SCRIPT_BATCH_SIZE": "100"})
    admin = redis.Redis.from_url(server.url)
    generator = EventGenerator(seed=47, partitions=3, stores=4, skus=40)
    ingest = build_ingestor(settings)
    first = generator.batch(500)
    ingest.process(first)
    used = int(admin.info("memory")["used_memory"])
    admin.config_set("maxmemory", str(used + 150_000))
    return settings, admin, ingest, [first, generator.batch(6000)]


def test_out_of_memory_fails_the_invocation_loudly_and_dead_letters_nothing(
    small_cache: servers.ServerProcess,
) -> None:
    _, admin, ingest, (_, batch) = _fill_then_overflow(small_cache)
    with pytest.raises(redis.exceptions.OutOfMemoryError, match="maxmemory"):
        ingest.process(batch)
    assert admin.dbsize() > 0, "part of the batch was applied before memory ran out"
    assert admin.xlen("deadletter:ingest") == 0, "a full cache must not turn records into dead letters"


def test_out_of_memory_then_retry_converges_to_the_model(small_cache: servers.ServerProcess) -> None:
    """Redis refuses some script calls of the batch and, as memory drains, accepts later ones:
    the calls are chained, so none writes past a refused one and the retry loses nothing."""
    settings, admin, ingest, (first, batch) = _fill_then_overflow(small_cache)
    with pytest.raises(redis.exceptions.OutOfMemoryError):
        ingest.process(batch)
    admin.config_set("maxmemory", "0")  # an operator scales the cache up
    retry = ingest.process(batch)
    assert retry.duplicates > 0 and retry.applied > 0
    assert retry.applied + retry.duplicates == len(records_of(batch))
    assert redis_state(admin) == model_state(settings, records_of(first) + records_of(batch))
    print(f"\nOOM: retry {retry.summary()}")


def test_an_evicting_cache_drifts_silently_which_is_why_it_must_be_noeviction() -> None:
    """With allkeys-lru (and likewise volatile-* with TTLs) a full cache drops keys instead of
    failing: the cache no longer matches the topics (an evicted stock count even restarts from
    nothing), and most invocations succeed all the same. The reason the cache must run with
    noeviction. (The fence notices when its positions hash is evicted between two chunks of a
    batch: a key's later call finds its position short of the offset the call before moved it
    to, and the invocation fails, which Lambda would retry; the data keys go unnoticed.)"""
    server = servers.start_server(extra=["--maxmemory", "3mb", "--maxmemory-policy", "allkeys-lru"])
    try:
        settings = Settings.from_env({"REDIS_URL": server.url})
        generator = EventGenerator(seed=5, partitions=3, stores=5, skus=50)
        ingest = build_ingestor(settings)
        log: list[dict[str, Any]] = []
        noticed = 0
        for _ in range(30):
            batch = generator.batch(1000)
            log += records_of(batch)
            try:
                # Redis makes room by evicting instead of refusing. A call that finds its key's
                # position evicted is sent again until the deadline: a short one, as it never runs
                ingest.process(batch, deadline=time.monotonic() + 1)
            except (redis.exceptions.ResponseError, WriteDeadlineExceeded) as error:
                # the fence's own positions evicted mid-batch
                assert "CACHESYNC_GAP" in f"{error} {error.__cause__}", error
                noticed += 1
        admin = redis.Redis.from_url(server.url)
        evicted = int(admin.info("stats")["evicted_keys"])
        state, model = redis_state(admin), model_state(settings, log)
        drifted = [key for key in set(model) | set(state) if state.get(key) != model.get(key)]
        assert evicted > 0 and drifted, "a full, evicting cache should have dropped data"
        assert noticed < 30, "most invocations should succeed while the data drifts"
        print(f"\nallkeys-lru: {evicted} keys evicted, {len(drifted)} keys differ from the model, {noticed} failed")
    finally:
        server.remove()
