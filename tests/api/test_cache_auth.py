"""The cache refusing the API's credentials or permissions (WRONGPASS, NOAUTH, NOPERM) is a
500 with a log line that says what to check and a CacheAuthFailed metric (the template alarms
on it), never a 503 that clients retry for ever. On Valkey, Redis 7 and a cluster."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
from redis.cluster import RedisCluster

from cachesync.config import Settings
from cachesync.reads import encode_cursor
from devkit import acl, servers
from tests.api.apikit import Api, Reply, caller, stock
from tests.conftest import Target

USER, PASSWORD = "cachesync-api-auth-test", "right-pass-4e1d"
ROUTES = ["/orders/18", "/products/a1", "/products?skus=a1,b2", "/stores/store1/inventory", "/health"]


def nodes(target: Target) -> list[redis.Redis]:
    if target.cluster:
        primaries = RedisCluster.from_url(target.url).get_primaries()  # type: ignore[no-untyped-call]
        return [redis.Redis(host=n.host, port=n.port) for n in primaries]
    return [redis.Redis.from_url(target.url)]


def as_user(url: str, user: str, password: str) -> str:
    return url.replace("redis://", f"redis://{user}:{password}@", 1)


@pytest.fixture
def api_user(target: Target) -> Iterator[Callable[..., None]]:
    """Sets up the API's own user (devkit.acl's rule, less `without`) on every node."""

    def create(without: tuple[str, ...] = (), password: str = PASSWORD) -> None:
        rule = acl.api_rule(Settings.from_env({}), target.cluster)
        arguments = [a for a in rule.setuser_args(USER, password) if a.lstrip("+") not in without]
        for node in nodes(target):
            node.execute_command(*arguments)

    yield create
    for node in nodes(target):
        node.execute_command("ACL", "DELUSER", USER)


def seed(target: Target) -> None:
    client = RedisCluster.from_url(target.url) if target.cluster else redis.Redis.from_url(target.url)
    client.set("orders:18", b'{"orderid":18}')
    client.set("products:a1", b'{"sku":"a1"}')
    stock(client, "store1", {f"s{n}": n % 3 for n in range(20)})  # type: ignore[arg-type]


def events(output: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in output.splitlines() if line.startswith("{")]


def assert_refused_us(reply: Reply, output: str, records: list[logging.LogRecord], route: str) -> None:
    assert reply.status == 500, (route, reply.body)
    assert "retry-after" not in reply.headers, route
    body = reply.json
    assert body["statusCode"] == 500 and "sign in to its cache" in body["message"], route
    logged = [r for r in records if "refused ApiFunction's credentials" in r.getMessage()]
    assert logged and logged[0].levelname == "ERROR", (route, [r.getMessage() for r in records])
    reason = str(getattr(logged[0], "error", ""))
    # the class and the server's words: WRONGPASS, NOAUTH, NOPERM, or a script's denied call
    kind, _, words = reason.partition(": ")
    assert kind in ("AuthenticationError", "NoPermissionError", "ResponseError") and words, reason
    metrics = [e for e in events(output) if "_aws" in e]
    names = {m["Name"] for e in metrics for d in e["_aws"]["CloudWatchMetrics"] for m in d["Metrics"]}
    assert "CacheAuthFailed" in names and "CacheUnavailable" not in names, (route, names)
    assert all(e.get("service") == "cachesync-api" for e in metrics if "CacheAuthFailed" in e)


@pytest.fixture
def refused(capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture) -> Callable[[Api, str], None]:
    """Asks `api` for a route and checks it was answered as a refusal of our credentials."""

    def check(api: Api, route: str) -> None:
        capfd.readouterr()
        caplog.clear()
        reply = api.get(route, authorizer=caller())  # a staff token: orders too reach the cache
        assert_refused_us(reply, capfd.readouterr().out, caplog.records, route)

    return check


def test_a_wrong_password_is_a_500_and_an_alarm_not_a_503(
    target: Target, api_user: Callable[..., None], load_api: Callable[..., Api], refused: Callable[[Api, str], None]
) -> None:
    api_user()
    seed(target)
    api = load_api(as_user(target.url, USER, "wrong-pass"), REDIS_CLUSTER=str(target.cluster).lower())
    for route in ROUTES:
        refused(api, route)


def test_a_revoked_user_is_a_500_until_it_is_back_then_reads_resume_by_themselves(
    target: Target, api_user: Callable[..., None], load_api: Callable[..., Api], refused: Callable[[Api, str], None]
) -> None:
    api_user()
    seed(target)
    api = load_api(as_user(target.url, USER, PASSWORD), REDIS_CLUSTER=str(target.cluster).lower())
    assert api.get("/stores/store1/inventory").status == 200  # connected and serving
    for node in nodes(target):
        node.execute_command("ACL", "DELUSER", USER)  # also closes the user's connections
    for route in ("/stores/store1/inventory", "/health"):
        refused(api, route)
    api_user()  # restored: the same process serves again, no restart
    assert api.get("/stores/store1/inventory").status == 200
    assert api.get("/health").status == 200


def test_a_command_the_user_may_not_run_is_a_500_and_an_alarm(
    target: Target, api_user: Callable[..., None], load_api: Callable[..., Api], refused: Callable[[Api, str], None]
) -> None:
    # an access string from before the paging scripts looked cursors up by rank
    api_user(without=("zrank", "zcount"))
    seed(target)
    api = load_api(as_user(target.url, USER, PASSWORD), REDIS_CLUSTER=str(target.cluster).lower())
    assert api.get("/stores/store1/inventory").status == 200  # no cursor: nothing denied
    refused(api, f"/stores/store1/inventory?cursor={encode_cursor('quantity', None, 1, 's1')}")


def test_a_user_denied_what_a_connection_sends_first_is_a_500(
    target: Target, api_user: Callable[..., None], load_api: Callable[..., Api], refused: Callable[[Api, str], None]
) -> None:
    api_user(without=("client|setname",))  # NOPERM on connect: the client names its connections
    seed(target)
    api = load_api(as_user(target.url, USER, PASSWORD), REDIS_CLUSTER=str(target.cluster).lower())
    refused(api, "/products/a1")


@pytest.fixture
def password_only_server() -> Iterator[servers.ServerProcess]:
    server = servers.start_server()
    redis.Redis.from_url(server.url).config_set("requirepass", PASSWORD)
    yield server
    server.remove()


def test_no_credentials_where_the_cache_requires_them_is_a_500(
    password_only_server: servers.ServerProcess, load_api: Callable[..., Api], refused: Callable[[Api, str], None]
) -> None:
    api = load_api(password_only_server.url)  # NOAUTH on the first command
    for route in ("/orders/18", "/health"):
        refused(api, route)
    good = load_api(as_user(password_only_server.url, "default", PASSWORD))
    assert good.get("/health").status == 200
