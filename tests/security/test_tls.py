"""TLS end to end against Debian's Redis 7: both functions over rediss:// with the
certificate and host name verified, and every way a client could be misled refused."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis

from cachesync.config import Settings
from cachesync.connection import client_options, get_client
from cachesync.ingest import build_ingestor
from cachesync.reads import Reader
from devkit.generator import EventGenerator, RawRecord
from harness.model import model_state, redis_state
from tests.security.conftest import ROOT, USERS, Handler, create_users, lambda_context, userinfo
from tests.security.tlskit import Pki, TlsCluster, TlsServer

FAST_FAIL = {"REDIS_RETRIES": "0", "REDIS_CONNECT_TIMEOUT": "2"}


def event(name: str) -> dict[str, Any]:
    document: dict[str, Any] = json.loads((ROOT / "events" / name).read_text())
    return document


def records_of(batch: dict[str, Any]) -> list[dict[str, Any]]:
    return [record for records in batch["records"].values() for record in records]


def tls_settings(server: TlsServer, ca: Path | None, host: str = "127.0.0.1", **env: str) -> Settings:
    return Settings.from_env(
        {"REDIS_URL": server.url(host), **({"REDIS_CA_CERT": str(ca)} if ca else {}), **FAST_FAIL, **env}
    )


def test_both_functions_work_over_verified_tls_each_with_its_own_user(
    tls_redis: TlsServer, pki: Pki, load_function: Callable[[str, dict[str, str]], Handler]
) -> None:
    admin = redis.Redis.from_url(tls_redis.admin_url)
    admin.flushall()
    create_users(tls_redis.admin_url)

    ingest = load_function(
        "ingest",
        {"REDIS_URL": tls_redis.url(userinfo=userinfo("ingest")), "REDIS_CA_CERT": str(pki.ca)},
    )
    batches = [event(name) for name in ("kafka-products.json", "kafka-inventory.json", "kafka-orders.json")]
    batches.append(EventGenerator(seed=5, partitions=3, first_offset=10_000).batch(300))
    low_stock = RawRecord(
        "inventory", b"store1:0000000007", b'{"type":"count","store":"store1","sku":"0000000007","units":3}'
    )
    batches.append(EventGenerator(partitions=3, first_offset=20_000).event([low_stock]))
    for batch in batches:
        summary = ingest(batch, lambda_context("IngestFunction"))
        assert summary["applied"] + summary["deadLettered"] == summary["records"]
    every_record = [record for batch in batches for record in records_of(batch)]
    assert redis_state(admin) == model_state({}, every_record)

    api = load_function("api", {"REDIS_URL": tls_redis.url(userinfo=userinfo("api")), "REDIS_CA_CERT": str(pki.ca)})
    answers = {
        name: api(event(name), lambda_context("ApiFunction"))
        for name in ("api-get-order.json", "api-get-product.json", "api-get-products.json", "api-get-inventory.json")
    }
    assert {name: reply["statusCode"] for name, reply in answers.items()} == dict.fromkeys(answers, 200), answers
    # what the API user read over TLS is what the cache holds
    order, cached_product = admin.get("orders:18"), admin.get("products:3746317213")
    assert order is not None and json.loads(order)["orderid"] == 18
    assert answers["api-get-order.json"]["body"].encode() == order
    assert answers["api-get-product.json"]["body"].encode() == cached_product
    listed = json.loads(answers["api-get-products.json"]["body"])
    found = {sku: admin.get(f"products:{sku}") for sku in ("3746317213", "9697354961", "0000000000")}
    assert listed["items"] == [json.loads(v) for v in found.values() if v is not None]
    assert listed["missing"] == [sku for sku, v in found.items() if v is None]
    low = admin.zrangebyscore("inventory:store1", "-inf", "(10", withscores=True)
    assert low, "the batches leave low stock in store1"
    assert [(i["sku"], i["quantity"]) for i in json.loads(answers["api-get-inventory.json"]["body"])["items"]] == [
        (member.decode().removeprefix("sku:"), quantity) for member, quantity in low
    ]
    health = api(event("api-get-health.json"), lambda_context("ApiFunction"))
    assert health["statusCode"] == 200 and json.loads(health["body"])["redis"]["reachable"] is True, health["body"]

    # the functions' connections are TLS connections (the TLS port speaks nothing else)
    # authenticated as their own users
    users = {c["user"] for c in admin.client_list() if c.get("name") == "cachesync"}
    assert {USERS["ingest"], USERS["api"]} <= users


def test_host_name_localhost_is_verified_too(tls_redis: TlsServer, pki: Pki) -> None:
    assert get_client(tls_settings(tls_redis, pki.ca, host="localhost")).ping() is True


def _refused(settings: Settings) -> str:
    with pytest.raises(redis.exceptions.ConnectionError) as raised:
        get_client(settings).ping()
    return str(raised.value)


def test_a_server_signed_by_another_ca_is_refused(tls_redis: TlsServer, pki: Pki) -> None:
    message = _refused(tls_settings(tls_redis, pki.other_ca))
    assert "certificate verify failed" in message.lower(), message


def test_the_system_trust_store_does_not_trust_a_private_ca(tls_redis: TlsServer) -> None:
    # the default (no REDIS_CA_CERT), which is right for ElastiCache's Amazon-issued certificates
    message = _refused(tls_settings(tls_redis, None))
    assert "certificate verify failed" in message.lower(), message


def test_a_certificate_for_another_host_is_refused(wrong_host_redis: TlsServer, pki: Pki) -> None:
    # signed by the trusted CA, but for cache.example.invalid: a stolen certificate of another service
    message = _refused(tls_settings(wrong_host_redis, pki.ca))
    assert re.search(r"mismatch|doesn't match|not valid for", message, re.IGNORECASE), message


def test_plaintext_is_never_spoken_to_the_tls_port(tls_redis: TlsServer) -> None:
    plain = Settings.from_env({"REDIS_URL": f"redis://127.0.0.1:{tls_redis.tls_port}/0", **FAST_FAIL})
    with pytest.raises((redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)):
        get_client(plain).ping()


def test_rediss_does_not_fall_back_to_plaintext(tls_redis: TlsServer, pki: Pki) -> None:
    # the plaintext port of the same server: a rediss:// client must fail, not downgrade
    settings = Settings.from_env(
        {"REDIS_URL": f"rediss://127.0.0.1:{tls_redis.server.port}/0", "REDIS_CA_CERT": str(pki.ca), **FAST_FAIL}
    )
    with pytest.raises((redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)):
        get_client(settings).ping()


def test_tls_options_always_verify() -> None:
    with_ca = client_options(Settings.from_env({"REDIS_URL": "rediss://cache:6379/0", "REDIS_CA_CERT": "/ca.pem"}))
    assert with_ca["ssl_cert_reqs"] == "required" and with_ca["ssl_check_hostname"] is True
    assert with_ca["ssl_ca_certs"] == "/ca.pem"
    system = client_options(Settings.from_env({"REDIS_URL": "rediss://cache:6379/0"}))
    assert system["ssl_cert_reqs"] == "required" and system["ssl_check_hostname"] is True
    assert "ssl_ca_certs" not in system  # the system trust store
    plain = client_options(Settings.from_env({"REDIS_URL": "redis://cache:6379/0"}))
    assert not any(name.startswith("ssl") for name in plain)


def test_a_tls_cluster_like_elasticache_serverless(tls_cluster: TlsCluster, pki: Pki) -> None:
    """TLS, cluster client and least-privilege users together: both paths over rediss:// to a
    3-master cluster, each node's certificate verified (the client follows CLUSTER SLOTS to
    the other nodes' TLS ports)."""
    admins = [redis.Redis(port=node.server.port) for node in tls_cluster.nodes]
    for admin in admins:
        admin.flushall()
        create_users(f"redis://127.0.0.1:{admin.connection_pool.connection_kwargs['port']}/0", cluster=True)
    env = {"REDIS_CLUSTER": "true", "REDIS_CA_CERT": str(pki.ca), **FAST_FAIL}
    ingest_settings = Settings.from_env({"REDIS_URL": tls_cluster.url(userinfo("ingest")), **env})
    batch = EventGenerator(seed=17, partitions=3, stores=4, skus=40).batch(1500)
    outcome = build_ingestor(ingest_settings).process(batch)
    assert outcome.applied == 1500
    state: dict[str, Any] = {}
    for admin in admins:
        state |= redis_state(admin)
    assert state == model_state({}, records_of(batch))

    api_settings = Settings.from_env({"REDIS_URL": tls_cluster.url(userinfo("api")), **env})
    reader = Reader(get_client(api_settings), api_settings)
    orders = [key.split(":", 1)[1] for key in state if key.startswith("orders:")]
    products = [key.split(":", 1)[1] for key in state if key.startswith("products:")]
    assert orders and [reader.order(order) for order in orders[:20]] == [state[f"orders:{o}"] for o in orders[:20]]
    listed = reader.products(",".join(products[:10]))  # MGET per slot
    assert listed.documents == [state[f"products:{p}"] for p in products[:10]] and listed.missing == []
    store = next(key for key in state if key.startswith("inventory:")).split(":", 1)[1]
    assert reader.inventory(store, limit=5).items

    for admin in admins:  # every node served the functions' users, and denied them nothing
        users = {c["user"] for c in admin.client_list() if c.get("name") == "cachesync"}
        assert USERS["ingest"] in users, admin
        assert admin.execute_command("ACL", "LOG") == []

    wrong = Settings.from_env(
        {"REDIS_URL": tls_cluster.url(userinfo("api")), **env, "REDIS_CA_CERT": str(pki.other_ca)}
    )
    with pytest.raises((redis.exceptions.ConnectionError, redis.exceptions.RedisClusterException)) as refused:
        get_client(wrong).ping()
    assert "certificate verify failed" in str(refused.value).lower(), refused.value
