"""Least-privilege users (devkit.acl) on real Redis 7, Valkey 8 and a Valkey cluster:
each path works with its own user and nothing more, and the ACL log shows no denial
during normal work (nothing the client sends on its own is missing from the rules)."""

from __future__ import annotations

import base64
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from redis.cluster import RedisCluster

from cachesync import keys
from cachesync.config import Settings
from cachesync.connection import RedisClient, cache_auth_failure, get_client
from cachesync.ingest import build_ingestor
from cachesync.layout import MOVE_SCRIPT
from cachesync.opstats import operator_view, record_batch
from cachesync.reads import Reader, encode_cursor
from cachesync.transport import FENCE_SCRIPT
from devkit import acl, servers
from devkit.generator import EventGenerator
from harness.model import model_state, redis_state
from tests.security.conftest import PASSWORDS, USERS, create_users, userinfo

NOPERM = (redis.exceptions.NoPermissionError, redis.exceptions.ResponseError)


def with_user(url: str, role: str) -> str:
    return url.replace("redis://", f"redis://{userinfo(role)}@", 1)


def admins(target: Any) -> list[redis.Redis]:
    if target.cluster:
        return [redis.Redis(host=n.host, port=n.port) for n in RedisCluster.from_url(target.url).get_primaries()]
    return [redis.Redis.from_url(target.url)]


def admin_client(target: Any) -> RedisClient:
    return RedisCluster.from_url(target.url) if target.cluster else redis.Redis.from_url(target.url)


@pytest.fixture
def users(target: Any) -> Callable[[str], Settings]:
    """Creates both users on every node; returns the settings of one role's connection."""
    for node in admins(target):
        create_users(_url(node), cluster=target.cluster)
        node.execute_command("ACL", "LOG", "RESET")
        node.script_flush()  # so each path has to load its scripts under its own user

    def settings(role: str, **env: str) -> Settings:
        return target.settings(REDIS_URL=with_user(target.url, role), **env)

    return settings


def _url(node: redis.Redis) -> str:
    kwargs = node.connection_pool.connection_kwargs
    return f"redis://{kwargs['host']}:{kwargs['port']}/0"


def poison(offset: int) -> dict[str, Any]:
    return {
        "topic": "orders",
        "partition": 0,
        "offset": offset,
        "timestamp": 1,
        "key": None,
        "value": base64.b64encode(b"{not json").decode(),
        "headers": [],
    }


def test_each_path_works_with_its_own_user_and_nothing_is_denied(target: Any, users: Any) -> None:
    generator = EventGenerator(seed=21, partitions=3, stores=3, skus=12)
    batch = generator.batch(400)
    batch["records"].setdefault("orders-0", []).append(poison(10**6))
    ingest = build_ingestor(users("ingest"))
    first = ingest.process(batch)
    assert first.applied == 400 and first.dead_lettered == 1
    replay = ingest.process(batch)
    assert replay.duplicates == 400
    admin = admin_client(target)
    records = [r for rs in batch["records"].values() for r in rs]
    assert redis_state(admin) == model_state({}, records)
    assert admin.xlen("deadletter:ingest") >= 1  # XADD under the ingest user
    record_batch(get_client(users("ingest")), first)  # the operator's figures, under the ingest user
    assert admin.xlen(keys.BATCH_STATS_KEY) == 1 and admin.hlen(keys.PROCESSED_KEY) == len(first.partitions)

    api_settings = users("api")
    reader = Reader(get_client(api_settings), api_settings)
    some_order = next(key for key in redis_state(admin) if key.startswith("orders:")).split(":", 1)[1]
    assert reader.order(some_order)
    store = next(key for key in redis_state(admin) if key.startswith("inventory:")).split(":", 1)[1]
    by_quantity = reader.inventory(store, limit=2)  # the paging script: EVALSHA, EVAL on NOSCRIPT
    assert by_quantity.items and by_quantity.next_cursor
    assert reader.inventory(store, limit=2, cursor=by_quantity.next_cursor).items
    assert reader.inventory(store, sort="sku", limit=3).items
    item = by_quantity.items[0]
    stale = encode_cursor("quantity", 10**6, item.quantity, item.sku + "-gone")  # looked up in its tie group
    assert reader.inventory(store, below=10**6, limit=2, cursor=stale).items
    assert reader.inventory_item(store, item.sku).quantity == item.quantity
    view = operator_view(get_client(api_settings), api_settings, int(time.time() * 1000))  # the admin route
    assert view["totals"]["applied"] == 400 and view["deadLetters"]["recent"][0]["offset"] == 10**6
    assert reader.products(",".join(generator.skus[:5])).documents
    assert reader.ping_ms() >= 0

    for node in admins(target):
        denied = node.execute_command("ACL", "LOG")
        assert denied == [], denied


def test_a_write_the_ingest_user_may_not_run_fails_the_batch_and_loses_nothing(target: Any, users: Any) -> None:
    """An access string without a command the writer needs (a kind configured after the user was
    made, a hand-made user): the batch fails and Lambda retries it; nothing is dead-lettered or
    skipped as applied, and once the user may run the command the retry ends exactly as the model."""
    batch = EventGenerator(seed=23, partitions=3, stores=3, skus=12).batch(400)
    refused = refused_then_allowed(target, users, batch, ["-zincrby"], ["+zincrby"], r"zincrby|can't run this command")
    assert cache_auth_failure(refused) is not None  # what IngestFunction alarms on


def refused_then_allowed(
    target: Any, users: Any, batch: dict[str, Any], refuse: list[str], allow: list[str], match: str
) -> BaseException:
    """The ingest user with the `refuse` rules: the batch fails (twice: the retry before the fix
    stops at the same place), nothing is dead-lettered or skipped as applied; with the `allow` rules
    the retry ends exactly as the model. The refusal, for what else the test checks."""
    records = [r for rs in batch["records"].values() for r in rs]
    for node in admins(target):
        node.execute_command("ACL", "SETUSER", USERS["ingest"], *refuse)
    ingest = build_ingestor(users("ingest"))
    for _ in range(2):
        with pytest.raises(redis.exceptions.ResponseError, match=match) as refused:
            ingest.process(batch)
    admin = admin_client(target)
    assert admin.xlen("deadletter:ingest") == 0
    assert redis_state(admin) != model_state({}, records)
    for node in admins(target):
        node.execute_command("ACL", "SETUSER", USERS["ingest"], *allow)
    retried = ingest.process(batch)
    assert retried.dead_lettered == 0 and retried.applied + retried.duplicates == len(records)
    assert redis_state(admin) == model_state({}, records)
    return refused.value


def test_an_ingest_user_without_mset_writes_each_document_with_a_set(target: Any, users: Any) -> None:
    """An access string of an earlier version (no +mset): the fence sets each document on its own
    instead of failing the batch."""
    batch = EventGenerator(seed=29, partitions=3, stores=3, skus=12).batch(300)
    records = [r for rs in batch["records"].values() for r in rs]
    for node in admins(target):
        node.execute_command("ACL", "SETUSER", USERS["ingest"], "-mset")
    try:
        outcome = build_ingestor(users("ingest")).process(batch)
        assert outcome.dead_lettered == 0 and outcome.applied + outcome.duplicates == len(records)
        admin = admin_client(target)
        assert redis_state(admin) == model_state({}, records)
        for node in admins(target):
            assert node.execute_command("ACL", "LOG") == []
    finally:
        for node in admins(target):
            node.execute_command("ACL", "SETUSER", USERS["ingest"], "+mset")


@pytest.mark.parametrize("mset", [True, False], ids=["one MSET", "a SET each"])
def test_documents_the_cache_refuses_part_way_fail_the_batch_and_lose_nothing(
    target: Any, users: Any, mset: bool
) -> None:
    """The ingest user may write orders but not products (a prefix added to topics.toml after the
    user was made): a call's documents go out together, the refusal stops the call, the batch
    fails, nothing is dead-lettered or skipped as applied, and the retry ends as the model once the
    user may write them."""
    batch = EventGenerator(seed=37, partitions=2).batch(400, ["orders", "products"])
    rules = ["resetkeys", "~orders:*", "~inventory:*", "~cachesync:offsets*", "~deadletter:ingest"]
    rules += ["~cachesync:batches", "~cachesync:processed", *([] if mset else ["-mset"])]
    try:
        refused_then_allowed(target, users, batch, rules, ["~products:*"], r"(?i)no permissions|noperm")
    finally:
        for node in admins(target):
            node.execute_command("ACL", "SETUSER", USERS["ingest"], "~products:*", "+mset")


def assert_denied(name: str, attempt: Callable[[], Any]) -> None:
    try:
        result = attempt()
    except NOPERM as error:
        assert re.search(r"(?i)no permissions|noperm|user executing the script can't", str(error)), f"{name}: {error}"
    else:
        raise AssertionError(f"{name} was allowed: {result!r}")


def attempts_common(client: RedisClient) -> list[tuple[str, Callable[[], Any]]]:
    return [
        ("FLUSHALL", lambda: client.flushall()),
        ("FLUSHDB", lambda: client.flushdb()),
        ("CONFIG GET", lambda: client.config_get("*")),
        ("CONFIG SET", lambda: client.config_set("maxmemory-policy", "allkeys-lru")),
        ("KEYS", lambda: client.keys("*")),
        ("SCAN", lambda: client.execute_command("SCAN", 0)),
        ("ACL SETUSER", lambda: client.execute_command("ACL", "SETUSER", "intruder", "on", ">x", "+@all", "~*")),
        ("SHUTDOWN", lambda: client.execute_command("SHUTDOWN", "NOSAVE")),
        ("CLIENT KILL", lambda: client.execute_command("CLIENT", "KILL", "TYPE", "normal")),
        ("SCRIPT FLUSH", lambda: client.script_flush()),
        ("GET outside", lambda: client.get("sessions:42")),
        ("SET outside", lambda: client.set("sessions:42", "x")),
    ]


def _seed(target: Any) -> None:
    admin = admin_client(target)
    admin.set("orders:1", b'{"orderid": 1}')
    admin.set("sessions:42", b"secret")
    admin.zadd("inventory:store1", {"sku:1": 5})
    admin.hset(keys.offsets_key(), "orders/0", 3)


def test_the_api_user_reads_only_its_keys(target: Any, users: Any) -> None:
    _seed(target)
    admin = admin_client(target)
    before = redis_state(admin, exclude=())
    client = get_client(users("api"))
    assert client.get("orders:1") == b'{"orderid": 1}'
    writes = [
        ("SET", lambda: client.set("orders:1", "x")),
        ("DEL", lambda: client.delete("orders:1")),
        ("ZADD", lambda: client.zadd("inventory:store1", {"sku:1": 99})),
        ("ZINCRBY", lambda: client.zincrby("inventory:store1", 1, "sku:1")),
        ("EXPIRE", lambda: client.expire("orders:1", 1)),
        ("XADD", lambda: client.xadd("deadletter:ingest", {"x": "y"})),
        ("HGET offsets", lambda: client.hget(keys.offsets_key(), "orders/0")),
        ("EVAL write", lambda: client.eval("return redis.call('SET', KEYS[1], 'x')", 1, "orders:1")),
        ("EVAL del", lambda: client.eval("return redis.call('DEL', KEYS[1])", 1, "products:1")),
        ("EVAL flushall", lambda: client.eval("return redis.call('FLUSHALL')", 0)),
        ("SCRIPT LOAD", lambda: client.script_load("return 1")),
        ("XRANGE dead letters", lambda: client.xrange("deadletter:ingest")),
    ]
    for name, attempt in writes + attempts_common(client):
        assert_denied(name, attempt)
    assert redis_state(admin, exclude=()) == before


def test_the_ingest_user_cannot_step_outside_its_keys_even_from_a_script(target: Any, users: Any) -> None:
    _seed(target)
    admin = admin_client(target)
    before = redis_state(admin, exclude=())
    client = get_client(users("ingest"))
    # its own script runs; any other script it may load runs with its rights and no more
    evil = {
        "set outside": ("return redis.call('SET', KEYS[1], 'x')", ["sessions:42"]),
        "read outside": ("return redis.call('GET', KEYS[1])", ["sessions:42"]),
        "get own key": ("return redis.call('GET', KEYS[1])", ["orders:1"]),  # no GET: it never reads data
        "flushall": ("return redis.call('FLUSHALL')", []),
        "del outside": ("return redis.call('DEL', KEYS[1])", ["sessions:42"]),
        "unlisted command": ("return redis.call('GETDEL', KEYS[1])", ["orders:1"]),
        "keys": ("return redis.call('KEYS', '*')", []),
    }
    for name, (script, script_keys) in evil.items():
        sha = client.script_load(script)
        assert_denied(name, lambda: client.evalsha(sha, len(script_keys), *script_keys))  # noqa: B023
    attempts = [
        ("GET own key", lambda: client.get("orders:1")),
        ("HKEYS offsets", lambda: client.hkeys(keys.offsets_key())),
        ("XRANGE", lambda: client.xrange("deadletter:ingest")),
        *attempts_common(client),
    ]
    for name, attempt in attempts:
        assert_denied(name, attempt)
    assert redis_state(admin, exclude=()) == before
    assert client.script_load(FENCE_SCRIPT)  # what it does need still works


def test_access_strings_are_in_elasticache_rbac_form() -> None:
    settings = Settings.from_env({})
    rules = (acl.ingest_rule(settings), acl.api_rule(settings), acl.api_rule(settings, cluster=True))
    for rule in (*rules, acl.maintenance_rule(settings)):
        text = rule.access_string()
        tokens = text.split()
        assert tokens[0] == "on"
        assert "reset" not in tokens and not any(t.startswith((">", "<", "#", "%", "(")) for t in tokens)
        assert tokens.index("-@all") < min(i for i, t in enumerate(tokens) if t.startswith("+"))
        assert not any(t in ("+@all", "allkeys", "~*", "allcommands", "+@dangerous") for t in tokens)
    api = acl.api_rule(settings).access_string()
    assert "~cachesync:offsets" not in api and "+xadd" not in api and "+xrange " not in api
    ingest = acl.ingest_rule(settings)
    # the fence's commands, each kind's, and nothing else are what fence.lua calls; the ingest
    # user has the fence's and its configured kinds' (no JSON commands without a json topic)
    kinds = {c for commands in acl.KIND_COMMANDS.values() for c in commands}
    assert set(acl.script_commands(FENCE_SCRIPT)) == set(acl.FENCE_COMMANDS) | kinds
    configured = {c for t in settings.topics for c in acl.KIND_COMMANDS[t.kind]}
    assert set(acl.FENCE_COMMANDS) | configured <= set(ingest.commands)
    assert set(acl.script_commands(MOVE_SCRIPT)) <= set(acl.LAYOUT_COMMANDS) <= set(ingest.commands)
    assert "json.set" not in ingest.commands and "hdel" not in ingest.commands
    # the stream takes the dead letters while SQS is down, so the rule does not depend on the queue
    with_queue = acl.ingest_rule(Settings.from_env({"DLQ_QUEUE_URL": "https://sqs/q"}))
    assert "xadd" in with_queue.commands and "deadletter:ingest" in with_queue.key_patterns
    renamed = acl.api_rule(Settings.from_env({"PRODUCTS_KEY_PREFIX": "catalog"})).key_patterns
    assert "catalog:*" in renamed and "products:*" not in renamed
    assert USERS["ingest"] != USERS["api"]


def test_docs_show_the_access_strings_in_force() -> None:
    """docs/security.md is what an operator copies into ElastiCache: it must match the code."""
    text = (Path(__file__).resolve().parents[2] / "docs" / "security.md").read_text()
    settings = Settings.from_env({})
    for rule in (acl.ingest_rule(settings), acl.api_rule(settings), acl.maintenance_rule(settings)):
        assert rule.access_string() in text, f"docs/security.md is out of date for the {rule.role} user"
    assert " ".join(f"+{c}" for c in acl.CLUSTER_COMMANDS) in text


def test_the_command_prints_both_access_strings_for_the_environment() -> None:
    import os
    import subprocess
    import sys
    from pathlib import Path

    from cachesync.config import Settings

    root = Path(__file__).resolve().parents[2]
    # only what the strings depend on: nothing else from this shell's environment
    env = {"PATH": os.environ.get("PATH", ""), "REDIS_CLUSTER": "true"}
    output = subprocess.run(
        [sys.executable, "-m", "devkit.acl"], env=env, capture_output=True, text=True, check=True, timeout=60, cwd=root
    ).stdout
    settings = Settings.from_env({"REDIS_CLUSTER": "true"})
    assert output.splitlines() == [
        f"ingest: {acl.ingest_rule(settings).access_string()}",
        f"api: {acl.api_rule(settings).access_string()}",
        f"maintenance: {acl.maintenance_rule(settings).access_string()}",
    ]


# ---------------------------------------------------------------------- slots under migration
@pytest.fixture(scope="module")
def resharding_cluster(redis7_binary: str) -> Iterator[servers.LocalCluster]:
    """A Redis 7 cluster of its own: the test moves a slot, which no other test should see."""
    cluster = servers.start_cluster(redis7_binary, masters=2)
    yield cluster
    cluster.stop()


def _node_id(node: redis.Redis) -> str:
    return str(node.execute_command("CLUSTER", "MYID").decode())


def test_both_users_follow_an_ask_while_a_slot_migrates(resharding_cluster: servers.LocalCluster) -> None:
    """A slot half moved, as during an online reshard: the key already on the target answers
    ASK at the source, and each user's cluster client follows it with ASKING on the target."""
    nodes = [redis.Redis(port=n.port) for n in resharding_cluster.nodes]
    for node in nodes:
        create_users(_url(node), cluster=True)
    admin = RedisCluster.from_url(resharding_cluster.url)
    admin.flushall()
    key = "orders:42"
    slot = admin.keyslot(key)
    owner = admin.nodes_manager.get_node_from_slot(slot)
    source = next(n for n in nodes if n.connection_pool.connection_kwargs["port"] == owner.port)
    target = next(n for n in nodes if n is not source)
    target_port = target.connection_pool.connection_kwargs["port"]
    admin.set(key, b'{"orderid": 42}')
    # the slot: importing on the target, migrating on the source, and the key moved across
    target.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", _node_id(source))
    source.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", _node_id(target))
    source.execute_command("MIGRATE", "127.0.0.1", target_port, key, 0, 5000)
    with pytest.raises(redis.exceptions.AskError):
        source.get(key)  # the redirect is real
    for node in nodes:
        node.execute_command("ACL", "LOG", "RESET")

    def settings(role: str) -> Settings:
        url = with_user(resharding_cluster.url, role)
        return Settings.from_env({"REDIS_URL": url, "REDIS_CLUSTER": "true"})

    api_settings = settings("api")
    assert Reader(get_client(api_settings), api_settings).order("42") == b'{"orderid": 42}'
    ingest = get_client(settings("ingest"))
    assert ingest.set(key, b'{"orderid": 42, "v": 2}') is True
    assert admin.get(key) == b'{"orderid": 42, "v": 2}'  # through the same ASK
    counts = [n.execute_command("CLUSTER", "COUNTKEYSINSLOT", slot) for n in (source, target)]
    assert counts == [0, 1], "the write landed on the importing node"
    for node in nodes:
        denied = node.execute_command("ACL", "LOG")
        assert denied == [], denied

    # ASKING admits the one next command to the importing slot; the ACL still decides the rest
    for role in ("ingest", "api"):
        direct = redis.Redis(port=target_port, username=USERS[role], password=PASSWORDS[role])
        assert direct.execute_command("ASKING") in (b"OK", True)
        assert_denied(f"{role}: CONFIG GET after ASKING", lambda: direct.config_get("*"))  # noqa: B023
        direct.execute_command("ASKING")
        assert_denied(f"{role}: GET outside after ASKING", lambda: direct.get("sessions:42"))  # noqa: B023
        # reads never go to replicas, so neither user may switch a connection to them
        assert_denied(f"{role}: READONLY", lambda: direct.execute_command("READONLY"))  # noqa: B023
        assert_denied(f"{role}: CLUSTER SETSLOT", lambda: direct.execute_command("CLUSTER", "SETSLOT", slot, "STABLE"))  # noqa: B023
        assert_denied(f"{role}: MIGRATE", lambda: direct.execute_command("MIGRATE", "127.0.0.1", 1, key, 0, 10))  # noqa: B023
        direct.close()
    assert admin.get(key) == b'{"orderid": 42, "v": 2}'


# ---------------------------------------------------------------------- acknowledged means replicated
def test_the_ingest_user_may_wait_for_a_replica_and_the_api_user_may_not(redis7_binary: str) -> None:
    """The writer sends WAIT to a primary with replicas before a batch counts as applied."""
    primary = servers.start_server(redis7_binary)
    replica = servers.start_server(redis7_binary, extra=["--replicaof", "127.0.0.1", str(primary.port)])
    try:
        admin = redis.Redis.from_url(primary.url)

        def replica_online() -> bool:
            info = admin.info("replication")
            return info.get("connected_slaves") == 1 and info.get("slave0", {}).get("state") == "online"

        deadline = time.monotonic() + 60
        while not replica_online():
            assert time.monotonic() < deadline, "the replica did not come online"
            time.sleep(0.05)
        create_users(primary.url)
        ingest = redis.Redis.from_url(with_user(primary.url, "ingest"))
        ingest.set("orders:1", b'{"orderid": 1}')
        # a generous bound: WAIT answers as soon as the replica acknowledges
        assert ingest.execute_command("WAIT", 1, 60_000) == 1
        assert redis.Redis.from_url(replica.url).get("orders:1") == b'{"orderid": 1}'
        api = redis.Redis.from_url(with_user(primary.url, "api"))
        assert_denied("api: WAIT", lambda: api.execute_command("WAIT", 1, 10))
        # the denials logged: the API user's attempt, nothing of the ingest user's
        assert {str(entry["username"]) for entry in admin.acl_log()} == {USERS["api"]}
    finally:
        replica.remove()
        primary.remove()
