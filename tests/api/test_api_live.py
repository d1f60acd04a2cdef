"""The read API while the stream writes, and while Redis is down."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis

from cachesync import config, keys
from devkit import servers
from devkit.generator import EventGenerator, RawRecord
from devkit.sam import LocalContext, describe, load_handler
from tests.api.apikit import Api, caller, skus, stock, walk
from tests.bounds import assert_within, redis_command_bound


def _count(store: str, sku: str, units: int) -> RawRecord:
    value = {"type": "count", "store": store, "sku": sku, "units": units, "eventtime": 1}
    return RawRecord("inventory", f"{store}:{sku}".encode(), json.dumps(value).encode())


class Stream:
    """Generated inventory events through the real IngestFunction handler, on a thread.

    `step()` blocks until at least one more batch has been applied, so the test
    can make sure writes land between every two pages, without sleeping.
    """

    def __init__(self, ingest: Callable[[dict[str, Any]], Any], make_batch: Callable[[], list[RawRecord]]):
        self.ingest, self.make_batch = ingest, make_batch
        self.generator = EventGenerator(seed=3, first_offset=10_000)
        self.batches = 0
        self._applied = threading.Condition()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.ingest(self.generator.event(self.make_batch()))
            with self._applied:
                self.batches += 1
                self._applied.notify_all()

    def step(self) -> None:
        with self._applied:
            seen = self.batches
            assert self._applied.wait_for(lambda: self.batches > seen or not self._thread.is_alive(), timeout=30)
            assert self._thread.is_alive(), "the stream thread died"

    def __enter__(self) -> Stream:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)


@pytest.fixture(scope="module")
def ingest(api_valkey: servers.ServerProcess) -> Iterator[Callable[[dict[str, Any]], Any]]:
    """The real IngestFunction handler, writing to the API's Valkey."""
    function = describe("IngestFunction", {"RedisUrl": api_valkey.url})
    saved = dict(os.environ)
    os.environ.update({**function.environment, "REDIS_URL": api_valkey.url, "POWERTOOLS_METRICS_DISABLED": "true"})
    config.settings.cache_clear()
    handler = load_handler(function)

    def apply(event: dict[str, Any]) -> Any:
        return handler(event, LocalContext(function))

    apply(EventGenerator().event([]))  # binds the handler's client to this server now
    os.environ.clear()
    os.environ.update(saved)
    config.settings.cache_clear()
    yield apply


@pytest.mark.parametrize("limit", [3, 17])
def test_sku_paging_under_a_live_stream_returns_every_sku_once(
    api: Api, store: redis.Redis, ingest: Callable[[dict[str, Any]], Any], limit: int
) -> None:
    original = [f"{n:05d}" for n in range(0, 400, 3)]
    stock(store, "store1", {s: 50 for s in original})
    g = EventGenerator(seed=5)

    def batch() -> list[RawRecord]:
        # every original SKU's quantity moves, and new SKUs keep arriving on both sides of the cursor
        moves = [g.inventory(kind=g.random.choice(["shipment", "purchase"]), store="store1", sku=s) for s in original]
        fresh = [_count("store1", f"{g.random.randrange(400):05d}x", 5) for _ in range(5)]
        return g.random.sample(moves, 40) + fresh

    with Stream(ingest, batch) as stream:
        items = walk(api, "store1", "&sort=sku", limit, between=stream.step)
        # a batch lands between every two pages: one fewer than the pages
        assert stream.batches >= (len(items) - 1) // limit

    listed = skus(items)
    assert listed == sorted(set(listed)), "pages overlap or go back"
    counts = Counter(listed)
    assert all(counts[s] == 1 for s in original), [s for s in original if counts[s] != 1]


def test_quantity_paging_under_a_live_stream(
    api: Api, store: redis.Redis, ingest: Callable[[dict[str, Any]], Any]
) -> None:
    steady = [f"s{n:03d}" for n in range(150)]
    moving = [f"m{n:03d}" for n in range(30)]
    stock(store, "store1", {s: n % 20 for n, s in enumerate(steady)} | {m: 10 for m in moving})
    g = EventGenerator(seed=9)

    def batch() -> list[RawRecord]:
        moves = [g.inventory(kind=g.random.choice(["shipment", "purchase"]), store="store1", sku=m) for m in moving]
        fresh = [_count("store1", f"n{g.random.randrange(10**6):06d}", g.random.randrange(20)) for _ in range(3)]
        return moves + fresh

    with Stream(ingest, batch) as stream:
        items = walk(api, "store1", "", 11, between=stream.step)

    order = [(i["quantity"], i["sku"]) for i in items]
    assert order == sorted(set(order)), "pages overlap or go back"
    counts = Counter(skus(items))
    # SKUs whose quantity does not move are each listed exactly once
    assert all(counts[s] == 1 for s in steady), [s for s in steady if counts[s] != 1]


STAFF = caller()  # the order route answers a staff token whatever the deploy's ownership rule


# --- Redis down --------------------------------------------------------------------
DATA_ROUTES = [
    "/orders/18",
    "/products/0123456789",
    "/products?skus=0123456789,1",
    "/stores/store1/inventory",
    "/stores/store1/inventory?sort=sku",
    "/stores/store1/inventory?below=10",
    "/stores/store1/inventory/0123456789",
]


@pytest.fixture
def lonely() -> Iterator[servers.ServerProcess]:
    """A server of its own, to stop and start."""
    server = servers.start_server()
    yield server
    server.remove()


def _seed(url: str) -> None:
    client = redis.Redis.from_url(url)
    client.set(keys.order_key("18"), b'{"orderid":18}')
    client.set(keys.product_key("0123456789"), b'{"sku":"0123456789","name":"n","price":1}')
    stock(client, "store1", {"0123456789": 4})
    client.close()


def _assert_unavailable(api: Api) -> None:
    for route in [*DATA_ROUTES, "/health"]:
        reply = api.get(route, authorizer=STAFF)
        assert reply.status == 503, (route, reply.body)
        assert int(reply.headers["retry-after"]) >= 1, route
        assert reply.headers["cache-control"] == "no-cache", route
        body = reply.json
        if route == "/health":
            assert body["status"] == "unavailable" and body["redis"]["reachable"] is False
        else:
            assert body["statusCode"] == 503 and "unreachable" in body["message"]


SEEDED_ITEMS = [{"sku": "0123456789", "quantity": 4}]


def _page(sort: str, below: int | None) -> dict[str, Any]:
    return {"store": "store1", "sort": sort, "below": below, "items": SEEDED_ITEMS, "nextCursor": None}


SEEDED_PRODUCT = {"sku": "0123456789", "name": "n", "price": 1}
# what each route answers once `_seed` ran
SERVED = {
    "/orders/18": {"orderid": 18},
    "/products/0123456789": SEEDED_PRODUCT,
    "/products?skus=0123456789,1": {"items": [SEEDED_PRODUCT], "missing": ["1"]},
    "/stores/store1/inventory": _page("quantity", None),
    "/stores/store1/inventory?sort=sku": _page("sku", None),
    "/stores/store1/inventory?below=10": _page("quantity", 10),
    "/stores/store1/inventory/0123456789": SEEDED_ITEMS[0],
}


def _assert_serving(api: Api) -> None:
    assert set(SERVED) == set(DATA_ROUTES)
    for route, expected in SERVED.items():
        reply = api.get(route, authorizer=STAFF)
        assert reply.status == 200, (route, reply.body)
        assert reply.json == expected, route
    health = api.get("/health")
    assert health.status == 200 and health.json["status"] == "ok", health.body


def test_redis_down_is_503_with_retry_after_and_recovers_by_itself(
    lonely: servers.ServerProcess, load_api: Callable[..., Api]
) -> None:
    api = load_api(lonely.url)
    _seed(lonely.url)
    _assert_serving(api)  # warm: the pooled connections exist

    lonely.stop()
    _assert_unavailable(api)
    document = api.get("/openapi.json")  # needs no Redis
    assert document.status == 200 and "/orders/{orderId}" in document.json["paths"]

    lonely.restart()  # empty: no persistence
    gone = api.get("/orders/18", authorizer=STAFF)  # answering again, with no new client or cold start
    assert gone.status == 404 and gone.json["statusCode"] == 404 and "18" in gone.json["message"]
    _seed(lonely.url)
    _assert_serving(api)


def test_redis_that_hangs_is_503_within_the_socket_timeout(
    lonely: servers.ServerProcess, load_api: Callable[..., Api]
) -> None:
    timeouts = {"REDIS_SOCKET_TIMEOUT": "0.2", "REDIS_CONNECT_TIMEOUT": "0.2", "REDIS_RETRIES": "1"}
    api = load_api(lonely.url, **timeouts)
    bound = redis_command_bound(config.Settings.from_env(timeouts))  # each route reads Redis once
    _seed(lonely.url)
    _assert_serving(api)
    os.kill(lonely.process.pid, signal.SIGSTOP)
    try:
        for route in ("/orders/18", "/stores/store1/inventory", "/health"):
            started = time.monotonic()
            reply = api.get(route, authorizer=STAFF)
            assert_within(time.monotonic() - started, bound, f"the 503 of {route}")
            assert reply.status == 503, (route, reply.body)
            assert "retry-after" in reply.headers
    finally:
        os.kill(lonely.process.pid, signal.SIGCONT)
    _assert_serving(api)
