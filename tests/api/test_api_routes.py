"""Every route and every error path of ApiFunction, handler-level, on a real Valkey."""

from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import Any

import pytest
import redis

from cachesync import keys
from cachesync.reads import encode_cursor
from devkit import servers
from devkit.apigw import Route
from devkit.sam import ROOT
from tests.api.apikit import ORIGIN, Api, caller, skus, stock, walk

STAFF = caller()  # a token with the staff scope: reads any order

ORDER = b'{"ordertime": 1497014222380, "orderid": 18, "itemid": "Item_184", "orderunits": 2.5, "address": {"city": "Z\xc3\xbcrich", "state": "ZH", "zipcode": "8001"}}'  # noqa: E501


def problem(reply: Any, status: int) -> dict[str, Any]:
    """The JSON error body every failure carries."""
    assert reply.status == status, reply.body
    assert reply.headers["content-type"] == "application/json"
    body: dict[str, Any] = reply.json
    assert body["statusCode"] == status
    assert isinstance(body["message"], str) and body["message"]
    return body


def product(sku: str, **extra: Any) -> bytes:
    return json.dumps({"sku": sku, "name": f"Product {sku}", "price": 9.5, **extra}).encode()


# --- orders -------------------------------------------------------------------
def test_order_is_returned_byte_for_byte_as_cached(api: Api, store: redis.Redis) -> None:
    store.set(keys.order_key("18"), ORDER)
    reply = api.get("/orders/18", authorizer=STAFF)
    assert reply.status == 200
    assert reply.body == ORDER  # spacing, key order and UTF-8 as the topic delivered them
    assert reply.headers["content-type"] == "application/json"
    assert reply.headers["cache-control"] == "private, max-age=5"


def test_missing_order_is_404(api: Api, store: redis.Redis) -> None:
    body = problem(api.get("/orders/404404", authorizer=STAFF), 404)
    assert "404404" in body["message"]
    assert api.get("/orders/404404", authorizer=STAFF).headers["cache-control"] == "no-cache"


def test_a_request_reads_redis_once_found_or_not(api: Api, store: redis.Redis) -> None:
    store.set(keys.order_key("18"), ORDER)

    def gets() -> int:
        return int(store.info("commandstats").get("cmdstat_get", {}).get("calls", 0))

    for target, status in (("/orders/999", 404), ("/orders/18", 200)):
        before = gets()
        assert api.get(target, authorizer=STAFF).status == status
        assert gets() - before == 1, target


@pytest.mark.parametrize(
    "order_id",
    ["%7Borders:18%7D:offsets", "a%20b", "*", "18%2A", "-18", "x" * 129, "%C3%BC", "a%0D%0Ab"],
)
def test_ids_that_could_name_another_key_are_400(api: Api, store: redis.Redis, order_id: str) -> None:
    store.set(keys.order_key("18"), ORDER)
    store.hset(keys.offsets_key(), "orders/0", 7)
    body = problem(api.get(f"/orders/{order_id}", authorizer=STAFF), 400)
    assert "orderId" in body["message"]
    assert body["details"][0]["location"] == "path.orderId"


def test_no_id_reaches_the_offsets_hashes(api: Api, store: redis.Redis) -> None:
    store.hset(keys.offsets_key(), "orders/0", 7)
    # every key the API reads starts with a data prefix, so this is orders:cachesync:offsets, absent
    problem(api.get(f"/orders/{keys.offsets_key()}", authorizer=STAFF), 404)
    problem(api.get(f"/stores/{keys.offsets_key()}/inventory"), 404)
    assert keys.is_offsets_key(keys.offsets_key())


def test_order_ids_may_use_the_whole_identifier_alphabet(api: Api, store: redis.Redis) -> None:
    store.set(keys.order_key("A-1.b_2:c"), b'{"orderid":"A-1.b_2:c"}')
    assert api.get("/orders/A-1.b_2:c", authorizer=STAFF).body == b'{"orderid":"A-1.b_2:c"}'


# --- products -----------------------------------------------------------------
def test_product_and_missing_product(api: Api, store: redis.Redis) -> None:
    store.set(keys.product_key("0123456789"), product("0123456789"))
    reply = api.get("/products/0123456789")
    assert reply.status == 200 and reply.body == product("0123456789")
    assert reply.headers["cache-control"].startswith("public, max-age=60")
    problem(api.get("/products/9999999999"), 404)
    problem(api.get("/products/%7Bx%7D"), 400)


def test_product_list_keeps_order_drops_repeats_and_reports_missing(api: Api, store: redis.Redis) -> None:
    for sku in ("a1", "b2", "c3"):
        store.set(keys.product_key(sku), product(sku))
    reply = api.get("/products?skus=c3,nope,a1,c3,b2")
    assert reply.status == 200
    body = reply.json
    assert [p["sku"] for p in body["items"]] == ["c3", "a1", "b2"]
    assert body["missing"] == ["nope"]
    assert body["items"][0] == json.loads(product("c3"))


@pytest.mark.parametrize(
    ("query", "mentions"),
    [
        ("", "skus"),  # required
        ("?skus=", "skus"),
        ("?skus=a,,b", "empty"),
        ("?skus=a,%7Bb%7D", "not a valid identifier"),
        ("?skus=" + ",".join(f"s{n}" for n in range(101)), "at most 100"),
    ],
)
def test_bad_product_lists_are_400(api: Api, store: redis.Redis, query: str, mentions: str) -> None:
    assert mentions in problem(api.get(f"/products{query}"), 400)["message"]


def test_product_list_at_the_bound_is_one_answer(api: Api, store: redis.Redis) -> None:
    wanted = [f"s{n}" for n in range(100)]
    store.mset({keys.product_key(s): product(s) for s in wanted[::2]})
    body = api.get("/products?skus=" + ",".join(wanted)).json
    assert [p["sku"] for p in body["items"]] == wanted[::2]
    assert body["missing"] == wanted[1::2]


# --- inventory ------------------------------------------------------------------
def test_inventory_item(api: Api, store: redis.Redis) -> None:
    stock(store, "store1", {"0123456789": 7, "1111111111": 2.5})
    reply = api.get("/stores/store1/inventory/0123456789")
    assert reply.status == 200
    assert reply.json == {"sku": "0123456789", "quantity": 7}
    assert isinstance(reply.json["quantity"], int)
    assert reply.headers["cache-control"] == "public, max-age=5"
    assert api.get("/stores/store1/inventory/1111111111").json["quantity"] == 2.5
    assert "not stocked" in problem(api.get("/stores/store1/inventory/2222222222"), 404)["message"]
    problem(api.get("/stores/store9/inventory/0123456789"), 404)
    problem(api.get("/stores/st%20ore/inventory/0123456789"), 400)


def test_low_stock_lists_only_items_below_the_threshold_lowest_first(api: Api, store: redis.Redis) -> None:
    stock(store, "store1", {"a": 12, "b": 3, "c": 0, "d": 10, "e": 9, "f": -2, "g": 500})
    page = api.get("/stores/store1/inventory?below=10").json
    assert page["items"] == [
        {"sku": "f", "quantity": -2},
        {"sku": "c", "quantity": 0},
        {"sku": "b", "quantity": 3},
        {"sku": "e", "quantity": 9},
    ]
    assert page["nextCursor"] is None and page["below"] == 10 and page["sort"] == "quantity"
    assert api.get("/stores/store1/inventory?below=-5").json["items"] == []


def test_inventory_sorted_by_sku(api: Api, store: redis.Redis) -> None:
    stock(store, "store1", {"b": 1, "a": 50, "c": 3, "A": 2})
    page = api.get("/stores/store1/inventory?sort=sku").json
    assert skus(page["items"]) == ["A", "a", "b", "c"]  # byte order, as Redis orders members
    assert skus(api.get("/stores/store1/inventory?sort=sku&below=3").json["items"]) == ["A", "b"]


def test_unknown_store_is_404(api: Api, store: redis.Redis) -> None:
    assert "store9" in problem(api.get("/stores/store9/inventory"), 404)["message"]
    problem(api.get("/stores/store9/inventory?sort=sku"), 404)


def test_default_limit_and_its_bounds(api: Api, store: redis.Redis) -> None:
    stock(store, "store1", {f"s{n:03d}": n for n in range(60)})
    first = api.get("/stores/store1/inventory").json
    assert len(first["items"]) == 50 and first["nextCursor"]
    assert len(api.get("/stores/store1/inventory?limit=500").json["items"]) == 60
    for bad in ("0", "501", "-1", "ten", "1.5"):
        assert "limit" in problem(api.get(f"/stores/store1/inventory?limit={bad}"), 400)["message"]


@pytest.mark.parametrize(
    "query",
    [
        "sort=price",
        "below=abc",
        "below=1e400",
        "cursor=***",
        "cursor=" + "A" * 600,
        "cursor=bm90LWpzb24",
        "cursor=" + encode_cursor("quantity", None, 10**309, "a"),  # an integer beyond a double's range
        "cursor=" + encode_cursor("quantity", None, 1, "{a}"),  # a SKU that is no identifier
    ],
)
def test_bad_inventory_queries_are_400(api: Api, store: redis.Redis, query: str) -> None:
    stock(store, "store1", {"a": 1})
    problem(api.get(f"/stores/store1/inventory?{query}"), 400)


def test_cursor_is_bound_to_its_query(api: Api, store: redis.Redis) -> None:
    stock(store, "store1", {f"s{n}": n for n in range(5)})
    cursor = api.get("/stores/store1/inventory?limit=2&below=4").json["nextCursor"]
    assert cursor
    for other in ("&below=5", "", "&sort=sku&below=4"):
        body = problem(api.get(f"/stores/store1/inventory?limit=2&cursor={cursor}{other}"), 400)
        assert "another query" in body["message"]
    following = api.get(f"/stores/store1/inventory?limit=2&below=4&cursor={cursor}")
    assert following.status == 200 and following.json["items"] == [
        {"sku": "s2", "quantity": 2},
        {"sku": "s3", "quantity": 3},
    ]


@pytest.mark.parametrize("sort", ["quantity", "sku"])
@pytest.mark.parametrize("limit", [1, 7, 50])
def test_paging_returns_every_item_once_in_order(api: Api, store: redis.Redis, sort: str, limit: int) -> None:
    # many ties on one quantity: the cursor must step through them, not skip or repeat
    quantities = {f"{n:04d}": (0 if n % 3 else n % 11) for n in range(120)}
    stock(store, "store1", quantities)
    items = walk(api, "store1", f"&sort={sort}", limit)
    key = (lambda i: i["sku"]) if sort == "sku" else (lambda i: (i["quantity"], i["sku"]))
    assert [key(i) for i in items] == sorted(key({"sku": s, "quantity": q}) for s, q in quantities.items())
    assert {i["sku"]: i["quantity"] for i in items} == quantities


def test_sku_sort_refuses_stores_beyond_its_bound(load_api: Any, api_valkey: Any, store: redis.Redis, api: Api) -> None:
    small = load_api(api_valkey.url, INVENTORY_SKU_SORT_MAX="10")
    stock(store, "store1", {f"s{n}": n for n in range(11)})
    assert "sort=quantity" in problem(small.get("/stores/store1/inventory?sort=sku"), 400)["message"]
    assert len(small.get("/stores/store1/inventory?sort=quantity").json["items"]) == 11
    stock(store, "store2", {f"s{n}": n for n in range(10)})
    at_the_bound = small.get("/stores/store2/inventory?sort=sku")
    assert at_the_bound.status == 200 and skus(at_the_bound.json["items"]) == [f"s{n}" for n in range(10)]


# --- health and the OpenAPI document ---------------------------------------------------
def test_health(api: Api, store: redis.Redis) -> None:
    reply = api.get("/health")
    assert reply.status == 200
    assert reply.json["status"] == "ok" and reply.json["redis"]["reachable"] is True
    assert reply.json["redis"]["latencyMs"] >= 0
    assert reply.headers["cache-control"] == "no-store"


def test_openapi_document_covers_every_template_route(api: Api, api_routes: list[Route]) -> None:
    reply = api.get("/openapi.json")
    assert reply.status == 200
    document = reply.json
    assert document["openapi"].startswith("3.")
    undocumented = ("/openapi.json", "/swagger")  # the document itself and its viewer
    template = {(r.method.lower(), r.path) for r in api_routes if r.path not in undocumented}
    served = {(m, p) for p, ops in document["paths"].items() for m in ops}
    assert served == template
    for path, operations in document["paths"].items():
        if "{" in path:
            assert set(operations["get"]["responses"]) >= {"200", "400", "404", "503"}, path


def test_committed_openapi_document_is_current(api: Api) -> None:
    committed = json.loads((ROOT / "docs" / "openapi.json").read_text())
    assert committed == api.get("/openapi.json").json, "run `make openapi`"


def test_swagger_ui_is_served(api: Api) -> None:
    reply = api.get("/swagger")
    assert reply.status == 200 and b"swagger-ui" in reply.body
    assert reply.headers["content-type"].startswith("text/html")


# --- routing ----------------------------------------------------------------
def test_unrouted_requests_get_json_404s(api: Api) -> None:
    # what API Gateway itself answers for a path with no route
    assert api.get("/nope").status == 404 and api.get("/nope").json == {"message": "Not Found"}
    # and what the function answers if it is invoked for one anyway ($default route)
    event = api.gateway.event("GET", "/health")
    assert event is not None
    event.update(routeKey="$default", requestContext={**event["requestContext"], "http": {"method": "POST"}})
    event["requestContext"]["http"] |= {"path": "/nope", "sourceIp": "127.0.0.1", "userAgent": ""}
    result = api.invoke(event)
    assert result["statusCode"] == 404
    assert json.loads(result["body"])["error"] == "Not Found"


def test_the_function_sends_no_cors_headers(api: Api, store: redis.Redis) -> None:
    # CORS is the HTTP API's (tests/api/test_gateway.py): whatever a function sends, API Gateway drops
    store.set(keys.order_key("18"), ORDER)
    for target in ("/orders/18", "/orders/nope", "/health"):
        event = api.gateway.event("GET", target, [("Origin", ORIGIN)])
        assert event is not None
        headers = api.invoke(event).get("headers") or {}
        assert not any(name.lower().startswith("access-control-") or name.lower() == "vary" for name in headers)


# --- sample events ----------------------------------------------------------------------
SAMPLE_STOCK = {"3746317213": 4, "9697354961": 25, "0000000001": 0}
# what each sample event must answer, with the data above and the seed's order 18 cached
SAMPLE_ANSWERS: dict[str, tuple[int, Any]] = {
    "api-get-admin-stats.json": (200, lambda body: {"appliedPerSecond", "totals", "partitions"} <= set(body)),
    "api-get-health.json": (200, lambda body: body["status"] == "ok" and body["redis"]["reachable"] is True),
    "api-get-inventory-by-sku.json": (
        200,
        lambda body: body["items"] == [{"sku": "0000000001", "quantity": 0}, {"sku": "3746317213", "quantity": 4}],
    ),
    "api-get-inventory-item.json": (200, {"sku": "3746317213", "quantity": 4}),
    "api-get-inventory.json": (
        200,
        lambda body: body["items"] == [{"sku": "0000000001", "quantity": 0}, {"sku": "3746317213", "quantity": 4}],
    ),
    "api-get-openapi.json": (200, lambda body: "/orders/{orderId}" in body["paths"]),
    "api-get-order-invalid.json": (400, lambda body: "orderId" in body["message"]),
    "api-get-order.json": (200, json.loads(ORDER)),
    "api-get-product.json": (200, json.loads(product("3746317213"))),
    "api-get-products.json": (
        200,
        {"items": [json.loads(product("3746317213")), json.loads(product("9697354961"))], "missing": ["0000000000"]},
    ),
}


@pytest.mark.parametrize("path", sorted((ROOT / "events").glob("api-*.json")), ids=lambda p: p.name)
def test_sample_events_are_what_the_gateway_sends(
    api: Api, api_routes: list[Route], store: redis.Redis, path: Path
) -> None:
    event = json.loads(path.read_text())
    route_keys = {r.key for r in api_routes}
    assert event["version"] == "2.0"
    assert event["routeKey"] in route_keys or event["requestContext"]["http"]["method"] == "OPTIONS"
    rebuilt = api.gateway.event(
        event["requestContext"]["http"]["method"],
        event["rawPath"] + "?" * bool(event["rawQueryString"]) + event["rawQueryString"],
    )
    assert rebuilt is not None
    assert (rebuilt["routeKey"], rebuilt.get("pathParameters")) == (event["routeKey"], event.get("pathParameters"))
    assert rebuilt.get("queryStringParameters") == event.get("queryStringParameters")
    assert path.name in SAMPLE_ANSWERS, f"say what {path.name} must answer in SAMPLE_ANSWERS"
    store.set(keys.order_key("18"), ORDER)
    for sku in ("3746317213", "9697354961"):
        store.set(keys.product_key(sku), product(sku))
    stock(store, "store1", SAMPLE_STOCK)
    result = api.invoke(event)
    status, expected = SAMPLE_ANSWERS[path.name]
    body = json.loads(result["body"])
    assert result["statusCode"] == status, result["body"]
    assert expected(body) if callable(expected) else body == expected, result["body"]


def test_the_seeds_order_ingested_as_printed_is_served_byte_for_byte(
    api: Api, store: redis.Redis, api_valkey: servers.ServerProcess
) -> None:
    from cachesync.config import Settings
    from cachesync.ingest import build_ingestor
    from devkit.generator import EventGenerator, RawRecord

    seed = (
        b'{"ordertime": 1497014222380, "orderid": 18, "itemid": "Item_184", '
        b'"address": {"city": "Mountain View", "state": "CA", "zipcode": 94041}}'
    )
    event = EventGenerator(seed=3).event([RawRecord("orders", b"18", seed)])
    outcome = build_ingestor(Settings.from_env({"REDIS_URL": api_valkey.url})).process(event)
    assert (outcome.applied, outcome.dead_lettered) == (1, 0)
    reply = api.get("/orders/18", authorizer=STAFF)
    assert reply.status == 200 and reply.body == seed


def test_log_lines_carry_the_request_id_as_correlation_id(api: Api, store: redis.Redis) -> None:
    event = api.gateway.event("GET", "/orders/18", [("Host", "api.example")])
    assert event is not None
    event["requestContext"]["requestId"] = "req-42"
    event["requestContext"]["authorizer"] = STAFF
    assert api.invoke(event)["statusCode"] == 404
    logger = inspect.unwrap(api.handler).__globals__["logger"]
    assert logger.get_correlation_id() == "req-42"
