"""Production events under the real ingest path (issue 18): a write the network delivers late,
a primary failover, slots that move while batches are applied, and a record delivered twice in
one batch. After each, the cache must equal the reference model: every record applied once, in
partition order. Only the public entry points: Settings.from_env, build_ingestor(...).process."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest
import redis
from redis.backoff import NoBackoff
from redis.cluster import RedisCluster
from redis.crc import key_slot
from redis.retry import Retry

from cachesync.config import Settings
from cachesync.connection import get_client
from cachesync.ingest import build_ingestor
from cachesync.reads import Reader
from devkit import servers
from devkit.generator import EventGenerator, RawRecord
from harness.model import State, model_state, redis_state
from harness.proxy import StallingProxy
from harness.resharding import Progress, Resharder, Stopped
from tests.security.conftest import create_users, userinfo
from tests.unavailable import unavailable


def records_of(*batches: dict[str, Any]) -> list[dict[str, Any]]:
    return [record for batch in batches for records in batch["records"].values() for record in records]


def redis7() -> str:
    binary = servers.redis_binary()
    if binary is None:
        unavailable("redis-server is not installed (apt-get install -y redis-server)")
    return binary


def cache_state(url: str, cluster: bool) -> State:
    client: Any = RedisCluster.from_url(url) if cluster else redis.Redis.from_url(url)
    try:
        return redis_state(client)
    finally:
        client.close()


def differences(actual: State, expected: State) -> list[str]:
    """The keys whose value differs, for a failure message."""
    return sorted(key for key in actual.keys() | expected.keys() if actual.get(key) != expected.get(key))


def order(generator: EventGenerator, order_id: int) -> RawRecord:
    """A new version of order `order_id` (its value is unique: a random order time)."""
    generator.next_order_id = order_id
    return generator.order()


def stock(kind: str, store: str, sku: str, units: int) -> RawRecord:
    value = {"type": kind, "store": store, "sku": sku, "units": units, "eventtime": 1_700_000_000_000}
    return RawRecord("inventory", f"{store}:{sku}".encode(), orjson.dumps(value))


# --- a write delivered late ------------------------------------------------------------------


@dataclass
class Proxied:
    """A deployment whose every node the client reaches through a proxy that can hold a write."""

    url: str
    cluster: bool
    proxies: list[StallingProxy] = field(default_factory=list)

    def hold(self, pattern: bytes) -> None:
        for proxy in self.proxies:
            proxy.hold(pattern)

    def held(self) -> bool:
        return any(proxy.held.is_set() for proxy in self.proxies)

    def abandoned(self, timeout: float = 10.0) -> bool:
        """Whether the client closed the connection that holds the write (the proxy notices soon after)."""
        deadline = time.monotonic() + timeout
        while not any(proxy.abandoned.is_set() for proxy in self.proxies):
            if time.monotonic() > deadline:
                return False
            time.sleep(0.01)
        return True

    def release(self) -> int:
        return sum(proxy.release() for proxy in self.proxies)


def test_the_proxy_runs_a_held_write_after_the_newer_one_that_followed_it() -> None:
    """What the proxy emulates, on a plain SET: the client gives up on a write the network
    holds, writes a newer value on a new connection, and the late bytes still run, last."""
    server = servers.start_server()
    proxy = StallingProxy(server.port)
    client = redis.Redis(port=proxy.port, socket_timeout=0.3, retry=Retry(NoBackoff(), 0))
    try:
        client.set("key", "first")
        proxy.hold(b"late")
        with pytest.raises(redis.exceptions.TimeoutError):
            client.set("key", "late")
        assert proxy.held.is_set() and proxy.abandoned.wait(10)
        client.set("key", "newer")  # on a new connection
        assert client.get("key") == b"newer"
        assert proxy.release() > 0
        assert client.get("key") == b"late"
    finally:
        client.close()
        proxy.close()
        server.remove()


@pytest.fixture(params=["standalone", pytest.param("cluster", marks=pytest.mark.cluster)])
def proxied(request: pytest.FixtureRequest) -> Iterator[Proxied]:
    proxies: list[StallingProxy] = []
    stops: list[Callable[[], None]] = []

    def behind_a_proxy(port: int) -> int:
        proxies.append(StallingProxy(port))
        return proxies[-1].port

    try:
        if request.param == "standalone":
            server = servers.start_server()
            stops.append(server.remove)
            behind_a_proxy(server.port)
            yield Proxied(proxies[0].url, False, proxies)
        else:
            # every node tells clients its proxy's port (CLUSTER SLOTS, MOVED, ASK)
            cluster = servers.start_cluster(announce=behind_a_proxy)
            stops.append(cluster.stop)
            yield Proxied(proxies[0].url, True, proxies)
    finally:
        for proxy in proxies:
            proxy.close()
        for stop in stops:
            stop()


@pytest.mark.parametrize("kind", ["document", "stock"])
def test_a_write_delivered_after_its_retry_and_a_newer_batch_changes_nothing(proxied: Proxied, kind: str) -> None:
    """The network holds one write; the client times out and sends the batch again on a new
    connection, which succeeds; the next batch writes a newer value of the key. Then the held
    bytes arrive (TCP delivers a closed socket's queued bytes): the key must keep the newer value."""
    settings = Settings.from_env(
        {
            "REDIS_URL": proxied.url,
            "REDIS_CLUSTER": str(proxied.cluster).lower(),
            "REDIS_SOCKET_TIMEOUT": "0.5",
            "REDIS_RETRIES": "2",
        }
    )
    generator = EventGenerator(seed=181, partitions=3, stores=3, skus=20)
    ingest = build_ingestor(settings)
    warm = generator.batch(150, ["orders", "inventory", "products"])
    ingest.process(warm)  # warm connections, as in a warm Lambda environment
    others = generator.records(40, ["orders"])  # more writes in the same batches, on other keys
    sku = generator.skus[0]
    if kind == "document":
        old, new = order(generator, 7), order(generator, 7)
        assert old.value is not None
        pattern = old.value  # only the write of this value carries it
        key = "orders:7"
    else:
        # a shipment held, then a stock take: the take sets the count, the shipment must not add to it
        old, new = stock("shipment", "store1", sku, 10), stock("count", "store1", sku, 100)
        pattern = sku.encode()  # no other record of these batches names this SKU
        key = "inventory:store1"
    delayed = generator.event([old, *others])
    proxied.hold(pattern)
    ingest.process(delayed)  # the retry on a new connection succeeds
    assert proxied.held(), "the proxy saw no write carrying the pattern: nothing was delayed"
    assert proxied.abandoned(), "the client kept the connection of the delayed write"
    newer = generator.event([new, *generator.records(40, ["orders"])])
    ingest.process(newer)
    assert proxied.release() > 0  # returns once the server has run every held command

    expected = model_state(settings, records_of(warm, delayed, newer))
    actual = cache_state(proxied.url, proxied.cluster)
    assert actual.get(key) == expected[key], f"{key} went back to the late write's value"
    assert actual == expected, differences(actual, expected)


# --- one record twice in a batch ---------------------------------------------------------------


def test_a_record_twice_in_one_batch_is_applied_once(target: Any) -> None:
    """Same topic, partition and offset twice (a duplicate in the delivery): stock counts once,
    a document is harmless; a replay of the whole batch changes nothing either."""
    settings = target.settings()
    generator = EventGenerator(seed=182, partitions=3, stores=2, skus=5)
    sku = generator.skus[0]
    event = generator.event(
        [
            stock("shipment", "store1", sku, 10),
            stock("purchase", "store1", sku, 3),
            order(generator, 5),
            order(generator, 5),
        ]
    )
    for records in event["records"].values():
        if records[0]["topic"] == "inventory":
            records[:] = records + [dict(record) for record in records]  # out of order: sorted on arrival
        else:
            records[:] = [dict(record) for record in records for _ in range(2)]  # side by side
    ingest = build_ingestor(settings)
    ingest.process(event)
    client = target.client()
    units = client.zscore("inventory:store1", f"sku:{sku}")
    assert units == 7.0, f"a duplicated record was counted twice: {units} units, not 10 - 3"
    expected = model_state(settings, records_of(event))
    assert redis_state(client) == expected
    ingest.process(event)
    assert redis_state(client) == expected


# --- primary failover ---------------------------------------------------------------------------

FAILOVER_ENV = {
    # short enough for the test, well above a healthy replica's round trip
    "REDIS_WAIT_TIMEOUT_MS": "500",
    "REDIS_SOCKET_TIMEOUT": "2",
}


def apply_reporting(ingest: Any, batch: dict[str, Any]) -> BaseException | None:
    """The invocation's result as Lambda sees it: None when reported applied, else its error."""
    try:
        ingest.process(batch)
    except Exception as error:  # any failure: Lambda delivers the batch again
        return error
    return None


def retry_until_applied(ingest: Any, batch: dict[str, Any], attempts: int = 5) -> list[BaseException]:
    """Lambda's retries of a failed batch, against the new topology: it must land."""
    failures: list[BaseException] = []
    for _ in range(attempts):
        error = apply_reporting(ingest, batch)
        if error is None:
            return failures
        failures.append(error)
        time.sleep(0.2)  # Lambda's own backoff between retries, not a wait for a condition
    raise AssertionError(f"the batch never landed on the new primary in {attempts} attempts: {failures!r}")


def check_failover(
    reported: BaseException | None, state: State, expected: State, ingest: Any, batch: dict[str, Any], read: Any
) -> list[BaseException]:
    lost = differences(state, expected)
    assert lost, "the failover lost nothing: the replica was not cut off before the batch"
    assert reported is not None, (
        f"the batch was reported applied, then lost with its primary: {len(lost)} keys differ, e.g. {lost[:5]}"
    )
    failures = retry_until_applied(ingest, batch)
    actual = read()
    assert actual == expected, differences(actual, expected)
    return failures


@pytest.fixture
def replicated_cluster() -> Iterator[servers.LocalCluster]:
    """3 primaries with a replica each (Redis 7)."""
    cluster = servers.start_cluster(redis7(), masters=3, replicas=1)
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.mark.cluster
def test_a_batch_acknowledged_before_a_cluster_failover_survives_it(
    replicated_cluster: servers.LocalCluster,
) -> None:
    """Pause a replica and cut its link, apply a batch, kill its primary, promote the replica
    (and replace the dead node, as ElastiCache does). Either the batch was never reported applied,
    and its retry lands it on the new topology, or it survived."""
    cluster = replicated_cluster
    settings = Settings.from_env({"REDIS_URL": cluster.url, "REDIS_CLUSTER": "true", **FAILOVER_ENV})
    generator = EventGenerator(seed=183, partitions=3, stores=3, skus=30)
    ingest = build_ingestor(settings)
    warm = generator.batch(300)
    retry_until_applied(ingest, warm)  # a busy machine's replica may miss one wait: Lambda retries
    primary = cluster.nodes[1]
    (replica,) = cluster.replicas_of(primary)
    servers.wait_in_sync(primary, [replica])  # the replica holds the warm batch
    cluster.set_node_timeout(60_000)  # a brief partition: no node marks the paused replica failed
    servers.cut_off_replica(primary, replica)
    batch = generator.batch(300)
    reported = apply_reporting(ingest, batch)
    primary.crash()
    cluster.takeover(replica)
    cluster.forget(primary)
    cluster.set_node_timeout(2000)  # the new node's role spreads within a second
    cluster.add_replica(replica)  # as ElastiCache replaces a failed node

    def read() -> State:
        return cache_state(cluster.url, cluster=True)

    expected = model_state(settings, records_of(warm, batch))
    failures = check_failover(reported, read(), expected, ingest, batch, read)
    print(f"\ncluster failover: first attempt {reported!r}; retries that failed: {failures!r}")


@pytest.fixture
def replicated_pair() -> Iterator[tuple[servers.ServerProcess, servers.ServerProcess, StallingProxy]]:
    """A Redis 7 primary with one replica, reached through an endpoint (a proxy) that moves
    to the replica when it is promoted, as a replication group's primary endpoint does."""
    primary = servers.start_server(redis7())
    started = [primary]
    endpoint = StallingProxy(primary.port)
    try:
        started.append(servers.start_replica(primary))
        yield primary, started[1], endpoint
    finally:
        endpoint.close()
        for server in started:
            server.remove()


def test_a_batch_acknowledged_before_a_standalone_failover_survives_it(
    replicated_pair: tuple[servers.ServerProcess, servers.ServerProcess, StallingProxy],
) -> None:
    primary, replica, endpoint = replicated_pair
    settings = Settings.from_env({"REDIS_URL": endpoint.url, **FAILOVER_ENV})
    generator = EventGenerator(seed=184, partitions=3, stores=3, skus=30)
    ingest = build_ingestor(settings)
    warm = generator.batch(300)
    retry_until_applied(ingest, warm)  # a busy machine's replica may miss one wait: Lambda retries
    servers.wait_in_sync(primary, [replica])
    servers.cut_off_replica(primary, replica)
    batch = generator.batch(300)
    reported = apply_reporting(ingest, batch)
    primary.crash()
    servers.promote(replica)
    endpoint.retarget(replica.port)
    replacement = servers.start_replica(replica)  # the failed node replaced, now a replica
    try:

        def read() -> State:
            return cache_state(replica.url, cluster=False)

        expected = model_state(settings, records_of(warm, batch))
        failures = check_failover(reported, read(), expected, ingest, batch, read)
    finally:
        replacement.remove()
    print(f"\nstandalone failover: first attempt {reported!r}; retries that failed: {failures!r}")


# --- slots that move ------------------------------------------------------------------------------

HOT_ORDERS = range(1, 9)


def hot_batch(generator: EventGenerator, size: int) -> dict[str, Any]:
    """Documents and stock events on few keys: a handful of orders rewritten and deleted, the
    products, and three stores' stock ledgers."""
    rng = generator.random
    raws: list[RawRecord] = []
    for _ in range(size):
        roll = rng.random()
        if roll < 0.45:
            raws.append(generator.inventory())
        elif roll < 0.6:
            raws.append(generator.product())
        else:
            record = order(generator, rng.choice(HOT_ORDERS))
            raws.append(record if rng.random() < 0.85 else RawRecord("orders", record.key, None))
    return generator.event(raws)


@pytest.fixture
def redis7_cluster() -> Iterator[servers.LocalCluster]:
    cluster = servers.start_cluster(redis7())
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.mark.cluster
@pytest.mark.slow
def test_slots_moving_while_batches_are_applied_fail_no_invocation(redis7_cluster: servers.LocalCluster) -> None:
    """The hot keys' slots move key by key, with a batch applied after every step, then a block
    of slots moves: no invocation may fail because a slot moved, and the cache equals the model."""
    cluster = redis7_cluster
    settings = Settings.from_env({"REDIS_URL": cluster.url, "REDIS_CLUSTER": "true"})
    generator = EventGenerator(seed=185, partitions=3, stores=3, skus=12)
    ingest = build_ingestor(settings)
    log = records_of(warm := hot_batch(generator, 200))
    retry_until_applied(ingest, warm)  # a busy machine's replica may miss one wait: Lambda retries

    hot_keys = [f"inventory:{store}" for store in generator.stores]
    hot_keys += [f"orders:{n}" for n in HOT_ORDERS[:3]] + [f"products:{sku}" for sku in generator.skus[:2]]
    hot_slots = sorted({key_slot(key.encode()) for key in hot_keys})
    progress = Progress()
    resharder = Resharder(list(cluster.nodes), pace=progress.wait_next)
    nodes = resharder.nodes
    block_start = 16384 // 3  # the second node's first slots
    errors: list[BaseException] = []

    def reshard() -> None:
        try:
            for n, slot in enumerate(hot_slots):  # each to another node, key by key
                owner = resharder.owner(slot)
                resharder.move_slot(slot, nodes[(nodes.index(owner) + 1 + n % 2) % len(nodes)])
            resharder.move_slots(range(block_start, block_start + 600), nodes[0], keys_per_step=5)
            for slot in hot_slots[:3]:  # and back again, now that they are hot on their new node
                resharder.move_slot(slot, nodes[2])
        except Stopped:
            pass
        except BaseException as error:  # surfaced by the assertion below
            errors.append(error)
        finally:
            progress.stop()

    driver = threading.Thread(target=reshard, name="resharder")
    driver.start()
    failed: list[str] = []
    invocations = 0
    try:
        deadline = time.monotonic() + 240
        while not progress.stopped and time.monotonic() < deadline:
            batch = hot_batch(generator, 60)
            log += records_of(batch)
            while True:  # each batch until it succeeds, as Lambda retries; every failure is counted
                invocations += 1
                progress.begin()
                try:
                    ingest.process(batch)
                    break
                except Exception as error:
                    failed.append(f"{type(error).__name__}: {error}")
                    if len(failed) > 50:
                        raise
                finally:
                    progress.tick()
    finally:
        progress.stop()
        driver.join(timeout=60)
    assert not driver.is_alive() and not errors, errors
    # the workload met the slots half-way: after each MIGRATING, each MIGRATE and each handover
    assert resharder.slots_moved >= 600 and resharder.keys_moved >= len(generator.stores)
    assert resharder.paused_half_way >= 2 * len(hot_slots)
    expected = model_state(settings, log)
    actual = cache_state(cluster.url, cluster=True)
    summary = (
        f"{len(failed)} of {invocations} invocations failed while slots moved "
        f"({resharder.slots_moved} slots, {resharder.keys_moved} keys, {resharder.paused_half_way} steps); "
        f"cache {'equals' if actual == expected else 'differs from'} the model"
    )
    print("\n" + summary)
    assert not failed, f"{summary}; first failures: {failed[:3]}"
    assert actual == expected, differences(actual, expected)


@pytest.mark.cluster
def test_the_least_privilege_users_work_on_a_slot_half_migrated(redis7_cluster: servers.LocalCluster) -> None:
    """The ingest and API users of devkit.acl, with a stock ledger's slot migrating and its keys
    already on the target (the source answers ASK): the batch applies, and the reads follow."""
    cluster = redis7_cluster
    for node in cluster.nodes:
        create_users(node.url, cluster=True)
    admin_settings = Settings.from_env({"REDIS_URL": cluster.url, "REDIS_CLUSTER": "true"})

    def settings_of(role: str) -> Settings:
        url = cluster.url.replace("redis://", f"redis://{userinfo(role)}@", 1)
        return Settings.from_env({"REDIS_URL": url, "REDIS_CLUSTER": "true"})

    generator = EventGenerator(seed=186, partitions=3, stores=2, skus=5)
    ingest = build_ingestor(settings_of("ingest"))
    warm = generator.batch(100, ["inventory", "orders"])
    retry_until_applied(ingest, warm)  # a busy machine's replica may miss one wait: Lambda retries
    ledger = "inventory:store1"
    slot = key_slot(ledger.encode())
    resharder = Resharder(list(cluster.nodes))
    source = resharder.owner(slot)
    target = next(node for node in cluster.nodes if node is not source)
    resharder.begin(source, target, [slot])
    while names := source.command("CLUSTER", "GETKEYSINSLOT", slot, 100):
        resharder.move_keys(source, target, names)
    # the slot's keys all on the target, the slot still migrating: the source answers ASK for each

    batch = generator.event([generator.inventory(store="store1") for _ in range(20)])
    ingest.process(batch)
    expected = model_state(admin_settings, records_of(warm, batch))
    api = settings_of("api")
    reader = Reader(get_client(api), api)
    items = reader.inventory("store1", limit=500).items
    assert {f"sku:{item.sku}": float(item.quantity) for item in items} == expected[ledger]
    resharder.hand_over(target, [slot])
    assert cache_state(cluster.url, cluster=True) == expected
