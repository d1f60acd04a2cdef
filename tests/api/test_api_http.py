"""`make run`'s server over real HTTP: in-process, and as the command a developer runs."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from cachesync import keys
from devkit.localrun import LocalRun
from devkit.sam import ROOT
from devkit.servers import free_port


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
    origin = "http://localhost:5173"  # the template's default allow-list
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
        for _ in range(600):
            if client.exists(keys.order_key(str(next_order))):
                break
            local._stop.wait(0.05)
        status, _, body = fetch(f"{local.url}/orders/{next_order}", headers=staff(local))
        assert status == 200 and json.loads(body)["orderid"] == next_order
        assert local.streamed > 0 and local.stream_errors == 0
    finally:
        local.stop()
    assert local.server is None


def test_make_run_command_starts_serves_and_stops_cleanly() -> None:
    port = free_port()
    command = [sys.executable, "-m", "devkit.localrun", "--rate", "5", "--orders", "50"]
    env = {**os.environ, "PORT": str(port)}
    env.pop("REDIS_URL", None)
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        banner = []
        assert process.stdout is not None
        for line in process.stdout:
            banner.append(line)
            if "Ctrl-C" in line:
                break
        text = "".join(banner)
        assert f"http://127.0.0.1:{port}" in text, text
        order_url = re.search(r"curl -H \"Authorization: Bearer \$STAFF_TOKEN\" (http://\S+/orders/\d+)", text)
        token, shopper_token = re.search(r"STAFF_TOKEN=(\S+)", text), re.search(r"SHOPPER_TOKEN=(\S+)", text)
        assert order_url and token and shopper_token, text
        redis_url = re.search(r"\(Redis (redis://\S+),", text)
        assert redis_url, text
        status, _, body = fetch(order_url.group(1), headers={"Authorization": f"Bearer {token.group(1)}"})
        assert status == 200 and "orderid" in json.loads(body)
        assert fetch(order_url.group(1))[0] == 401  # the template's authorizer, as deployed
        assert fetch(order_url.group(1), headers={"Authorization": f"Bearer {shopper_token[1]}"})[0] == 403
        status, _, body = fetch(f"http://127.0.0.1:{port}/")
        assert status == 200 and b"cachesync shop" in body  # the storefront
        status, _, body = fetch(f"http://127.0.0.1:{port}/stores/store1/inventory?below=10")
        assert status == 200 and json.loads(body)["items"]
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    stderr = process.stderr.read() if process.stderr else ""
    assert "seeded" in stderr and "stopped" in stderr
    with pytest.raises(redis.exceptions.ConnectionError):  # its Valkey is gone
        redis.Redis.from_url(redis_url.group(1), socket_timeout=1).ping()
    with pytest.raises(urllib.error.URLError):  # and so is the server
        urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)


@pytest.mark.parametrize("registry", [None, "JSON"])
def test_make_run_with_avro_values_serves_the_decoded_documents(registry: str | None) -> None:
    """`make run VALUES=avro` (and `REGISTRY=JSON`): the seed and the stream in Avro, Confluent's
    wire format, through the mappings and IngestFunction to the API as JSON."""
    port = free_port()
    command = ["make", "-s", "run", f"PORT={port}", "VALUES=avro", *([f"REGISTRY={registry}"] if registry else [])]
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "KAFKA_BOOTSTRAP")}
    process = subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        assert process.stdout is not None
        banner = ""
        for line in process.stdout:
            banner += line
            if "Ctrl-C" in line:
                break
        assert "(avro values, Confluent's wire format)" in banner, banner
        assert (f"through the local schema registry ({registry})" in banner) == (registry is not None)
        token = re.search(r"STAFF_TOKEN=(\S+)", banner)
        assert token, banner
        status, _, body = fetch(f"http://127.0.0.1:{port}/orders/18", headers={"Authorization": f"Bearer {token[1]}"})
        order = json.loads(body)
        assert status == 200 and order["orderid"] == 18
        assert set(order) == {"ordertime", "orderid", "itemid", "orderunits", "address"}
        status, _, body = fetch(f"http://127.0.0.1:{port}/stores/store1/inventory?below=10")
        assert status == 200 and json.loads(body)["items"]
    finally:
        os.killpg(process.pid, signal.SIGINT)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
