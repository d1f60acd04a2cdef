"""The handler's fast path answers exactly as the Powertools resolver would, or leaves the request to it."""

from __future__ import annotations

import copy
import json
from typing import Any
from urllib.parse import quote

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cachesync import keys
from devkit.sam import LocalContext
from tests.api.apikit import ORIGIN, OTHER_ORIGIN, Api, stock

SKUS = [f"{n:010d}" for n in range(1000000000, 1000000030)]
ORIGINS = [None, ORIGIN, OTHER_ORIGIN, "https://evil.example", f"{ORIGIN},https://evil.example"]


@pytest.fixture
def seeded(store: redis.Redis) -> redis.Redis:
    store.set(keys.order_key("18"), b'{"orderid": 18, "city": "Z\xc3\xbcrich"}')
    store.set(keys.order_key("a.b_c:d-e"), b'{"orderid": "a.b_c:d-e"}')
    store.set(keys.order_key("binary"), b"\xff\xfe not UTF-8")
    for sku in SKUS[:20]:
        store.set(keys.product_key(sku), json.dumps({"sku": sku, "name": "n", "price": 1.5}).encode())
    stock(store, "store1", {sku: (i % 7) + (0.5 if i % 5 == 0 else 0) for i, sku in enumerate(SKUS)})
    return store


def _module(api: Api) -> dict[str, Any]:
    return api.handler.__globals__


def _event(api: Api, target: str, origin: str | None) -> dict[str, Any]:
    headers = [("Host", "api.example")] + ([("Origin", origin)] if origin else [])
    event = api.gateway.event("GET", target, headers)
    assert event is not None, target
    return event


def _both(api: Api, target: str, origin: str | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the handler's answer, the resolver's answer) to the same event."""
    event = _event(api, target, origin)
    context = LocalContext(api.function)
    handler = api.handler(copy.deepcopy(event), context)
    resolver = _module(api)["_resolve"](copy.deepcopy(event), context)
    return handler, resolver


HOT = [
    "/orders/18",
    "/orders/a.b_c:d-e",
    "/products/" + SKUS[0],
    "/products?skus=" + ",".join(SKUS[:20]),
    "/products?skus=" + ",".join(SKUS[15:25]),  # some missing
    "/stores/store1/inventory",
    "/stores/store1/inventory?limit=5",
    "/stores/store1/inventory?limit=5&below=3",
    "/stores/store1/inventory?sort=sku&limit=7&below=-2",
    "/stores/store1/inventory?below=0&extra=ignored",
]

EDGES = [
    "/orders/999",  # 404
    "/orders/binary",  # not UTF-8: base64 from the resolver
    "/orders/" + quote("a\n"),
    "/orders/" + quote("a b"),
    "/orders/%61bc",
    "/orders/" + "x" * 129,
    "/orders/_x",
    "/products/nope",
    "/products?skus=",
    "/products?skus=" + quote(",,"),
    "/products?skus=" + quote("a b"),
    "/products?skus=" + ",".join(SKUS[:20]) + "&skus=" + SKUS[21],
    "/products?skus=" + "1," * 2100,
    "/products",
    "/stores/store1/inventory?limit=0",
    "/stores/store1/inventory?limit=501",
    "/stores/store1/inventory?limit=07",
    "/stores/store1/inventory?limit=+5",
    "/stores/store1/inventory?limit=5&limit=6",
    "/stores/store1/inventory?limit=",
    "/stores/store1/inventory?below=1000000000000001",
    "/stores/store1/inventory?below=-0",
    "/stores/store1/inventory?sort=price",
    "/stores/store1/inventory?sort=",
    "/stores/store1/inventory?cursor=" + quote("not a cursor!"),
    "/stores/store1/inventory?cursor=abc",
    "/stores/nowhere/inventory",
    "/stores/store1/inventory/" + SKUS[0],
]


@pytest.mark.parametrize("origin", ORIGINS)
@pytest.mark.parametrize("target", HOT)
def test_hot_routes_take_the_fast_path_with_the_resolvers_answer(
    api: Api, seeded: redis.Redis, target: str, origin: str | None
) -> None:
    assert _module(api)["_fast"](_event(api, target, origin)) is not None, target
    handler, resolver = _both(api, target, origin)
    assert handler["statusCode"] == 200, handler
    assert handler == resolver


@pytest.mark.parametrize("target", EDGES)
def test_everything_else_gets_the_resolvers_answer(api: Api, seeded: redis.Redis, target: str) -> None:
    for origin in (None, ORIGIN):
        handler, resolver = _both(api, target, origin)
        assert handler == resolver, target


def _gets(client: redis.Redis) -> int:
    return int(client.info("commandstats").get("cmdstat_get", {}).get("calls", 0))


def test_a_miss_on_the_fast_path_is_not_read_twice(api: Api, seeded: redis.Redis) -> None:
    before = _gets(seeded)
    assert api.get("/orders/999").status == 404
    assert _gets(seeded) - before == 1
    before = _gets(seeded)
    assert api.get("/orders/18").status == 200
    assert _gets(seeded) - before == 1


def test_no_cors_allow_list_no_cors_headers_on_the_fast_path(
    load_api: Any, api_valkey: Any, api: Api, seeded: redis.Redis
) -> None:
    closed = load_api(api_valkey.url, CORS_ALLOWED_ORIGINS="")
    for target in HOT:
        handler, resolver = _both(closed, target, ORIGIN)
        assert handler == resolver
        assert "Vary" not in handler["headers"]
        assert not any(h.lower().startswith("access-control-") for h in handler["headers"])


ID_TEXT = st.text(st.sampled_from("abcXYZ019._:-/%+ \n{}*é"), min_size=0, max_size=12)
QUERY_VALUE = st.one_of(st.integers(-(10**16), 10**16).map(str), ID_TEXT)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    order_id=ID_TEXT,
    query=st.dictionaries(st.sampled_from(["sort", "below", "limit", "cursor", "skus", "other"]), QUERY_VALUE),
)
def test_any_input_gets_the_same_answer_both_ways(
    api: Api, seeded: redis.Redis, order_id: str, query: dict[str, str]
) -> None:
    encoded = "&".join(f"{k}={quote(v, safe='')}" for k, v in query.items())
    for target in (
        f"/orders/{quote(order_id, safe='')}",
        f"/stores/{quote(order_id, safe='') or 'store1'}/inventory?{encoded}",
        f"/stores/store1/inventory?{encoded}",
        f"/products?{encoded}",
    ):
        if api.gateway.event("GET", target) is None:
            continue  # API Gateway itself answers 404
        handler, resolver = _both(api, target, ORIGIN)
        assert handler == resolver, target
