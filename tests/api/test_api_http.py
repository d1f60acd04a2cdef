"""`make run`'s server over real HTTP, in-process (tests/functional/test_make_run.py runs the command)."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from cachesync import keys
from devkit.localrun import LocalRun


def fetch(url: str, method: str = "GET", headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, {k.lower(): v for k, v in response.headers.items()}, response.read()
    except urllib.error.HTTPError as error:
        return error.code, {k.lower(): v for k, v in error.headers.items()}, error.read()


@pytest.fixture(scope="module")
def run() -> Iterator[LocalRun]:
    # no live stream here, so what was seeded stays put; the stream has its own test below
    local = LocalRun(port=0, rate=0, orders=300, movements=300).start()
    yield local
    local.stop()


def shopper(run: LocalRun) -> dict[str, str]:
    return {"Authorization": f"Bearer {run.shopper_token}"}


def staff(run: LocalRun) -> dict[str, str]:
    """Reads any order: the generated orders carry no owner, so no ownership rule applies."""
    return {"Authorization": f"Bearer {run.staff_token}"}


def test_seeded_order_over_http_is_the_cached_bytes(run: LocalRun) -> None:
    assert run.redis_url and run.valkey is not None  # its own private Valkey
    cached = redis.Redis.from_url(run.redis_url).get(keys.order_key("18"))
    assert cached is not None
    status, headers, body = fetch(f"{run.url}/orders/18", headers=staff(run))
    assert status == 200 and body == cached
    assert headers["content-type"] == "application/json"
    assert headers["content-length"] == str(len(cached))


def test_low_stock_in_store1(run: LocalRun) -> None:
    status, _, body = fetch(f"{run.url}/stores/store1/inventory?below=10")
    assert status == 200
    items = json.loads(body)["items"]
    assert items, "the local run seeds low stock in store1"
    assert all(item["quantity"] < 10 for item in items)
    assert {item["sku"] for item in items} <= set(run.low_stock)


def test_every_route_over_http(run: LocalRun) -> None:
    """Each route's answer is what the seeded cache holds."""
    cache = redis.Redis.from_url(run.redis_url or "")

    def answer(path: str) -> Any:
        status, _, body = fetch(run.url + path)
        assert status == 200, (path, body[:200])
        return body

    first, second = run.generator.skus[:2]
    cached = cache.get(keys.product_key(first))
    assert cached is not None and answer(f"/products/{first}") == cached
    listed = json.loads(answer(f"/products?skus={first},{second},no-such-sku"))
    found = {sku: cache.get(keys.product_key(sku)) for sku in (first, second)}
    assert listed["items"] == [json.loads(v) for v in found.values() if v is not None]
    assert listed["missing"] == [sku for sku, v in found.items() if v is None] + ["no-such-sku"]
    stock = cache.zrange(keys.inventory_key("store2"), 0, -1, withscores=True)
    by_sku = sorted((keys.sku_from_member(m.decode()), q) for m, q in stock)
    assert len(by_sku) > 5
    page = json.loads(answer("/stores/store2/inventory?sort=sku&limit=5"))
    assert [(i["sku"], i["quantity"]) for i in page["items"]] == by_sku[:5] and page["nextCursor"]
    low = run.low_stock[0]
    units = cache.zscore(keys.inventory_key("store1"), keys.sku_member(low))
    assert json.loads(answer(f"/stores/store1/inventory/{low}")) == {"sku": low, "quantity": units}
    assert json.loads(answer("/health"))["status"] == "ok"
    assert "/orders/{orderId}" in json.loads(answer("/openapi.json"))["paths"]
    assert b"swagger-ui" in answer("/swagger")
    status, _, body = fetch(f"{run.url}/orders/999999", headers=staff(run))
    assert status == 404 and json.loads(body)["statusCode"] == 404
    status, _, body = fetch(f"{run.url}/orders/18", headers=shopper(run))
    assert status == 403 and "cachesync/staff" in json.loads(body)["message"]  # no owner rule locally
    status, _, body = fetch(f"{run.url}/orders/a%7Bb", headers=staff(run))
    assert status == 400 and "orderId" in json.loads(body)["message"]


def test_gateway_behaviour_over_http(run: LocalRun) -> None:
    status, _, body = fetch(f"{run.url}/not/a/route")
    assert status == 404 and json.loads(body) == {"message": "Not Found"}
    status, _, body = fetch(f"{run.url}/orders/18", method="POST")
    assert status == 404 and json.loads(body) == {"message": "Not Found"}  # no POST route, as in the template
    origin = "http://localhost:5173"  # the origin make run allows (the template allows none by default)
    status, headers, _ = fetch(f"{run.url}/orders/18", headers={"Origin": origin})
    assert status == 401 and headers["access-control-allow-origin"] == origin  # the template's authorizer
    status, headers, _ = fetch(f"{run.url}/orders/18", headers={"Origin": origin, **staff(run)})
    assert status == 200 and headers["access-control-expose-headers"] == "retry-after"
    status, headers, _ = fetch(
        f"{run.url}/orders/18", method="OPTIONS", headers={"Origin": origin, "Access-Control-Request-Method": "GET"}
    )
    assert status == 204 and headers["access-control-allow-origin"] == origin
    status, headers, body = fetch(f"{run.url}/admin/stats", headers={"Authorization": f"Bearer {run.admin_token}"})
    assert status == 200 and json.loads(body)["partitions"], body[:200]
    assert fetch(f"{run.url}/admin/stats", headers=shopper(run))[0] == 403


def test_event_is_what_api_gateway_sends(run: LocalRun) -> None:
    assert run.server is not None
    fetch(f"{run.url}/stores/store1/inventory?below=10&limit=5&limit=6", headers={"Cookie": "a=1; b=2"})
    event: Any = run.server.gateway.last_event
    assert event["version"] == "2.0"
    assert event["routeKey"] == "GET /stores/{storeId}/inventory"
    assert event["rawPath"] == "/stores/store1/inventory"
    assert event["rawQueryString"] == "below=10&limit=5&limit=6"
    assert event["queryStringParameters"] == {"below": "10", "limit": "5,6"}  # repeats joined, like API Gateway
    assert event["pathParameters"] == {"storeId": "store1"}
    assert event["cookies"] == ["a=1", "b=2"] and "cookie" not in event["headers"]
    assert event["requestContext"]["http"]["method"] == "GET"
    assert event["requestContext"]["stage"] == "$default"
    assert all(name == name.lower() for name in event["headers"])


def test_live_stream_reaches_the_api() -> None:
    local = LocalRun(port=0, rate=500, orders=10, movements=10).start()
    try:
        next_order = local.generator.next_order_id  # the stream's orders come after the seeded ones
        client = redis.Redis.from_url(local.redis_url or "")
        deadline = time.monotonic() + 240  # generous: a busy machine is slow, and it is left at once
        while not client.exists(keys.order_key(str(next_order))) and time.monotonic() < deadline:
            local._stop.wait(0.05)
        status, _, body = fetch(f"{local.url}/orders/{next_order}", headers=staff(local))
        assert status == 200 and json.loads(body)["orderid"] == next_order
        assert local.streamed > 0 and local.stream_errors == 0
    finally:
        local.stop()
    assert local.server is None
