"""ApiFunction: the frontend's read API over the cache (API Gateway HTTP API, payload v2).

Thin by design: the reads live in `cachesync.reads`; this module maps HTTP to
them and their failures to status codes. Every answer is JSON, errors too:
400 for bad input, 404 for absent data, 503 with Retry-After while Redis is
unreachable (clients retry, and the next request reconnects by itself).
"""

# No `from __future__ import annotations`: the models and route signatures are read
# at runtime for validation and the OpenAPI document, also when the module is
# loaded under another name (devkit.sam).
import json
import re
from functools import lru_cache
from http import HTTPStatus
from typing import Annotated, Any, Literal
from urllib.parse import parse_qs

import redis
from aws_lambda_powertools import Logger
from aws_lambda_powertools.event_handler import APIGatewayHttpResolver, CORSConfig, Response, content_types
from aws_lambda_powertools.logging import correlation_paths
from aws_lambda_powertools.utilities.typing import LambdaContext

from cachesync.config import settings
from cachesync.connection import get_client
from cachesync.keys import IDENTIFIER_PATTERN
from cachesync.reads import BadRequest, NotFound, Reader

logger = Logger(service="cachesync-api")
config = settings()

TITLE = "cachesync read API"
VERSION = "1.0.0"

# Per-route caching for browsers and CDNs. Errors always get `no-cache` (Powertools
# sets it for every non-200 answer), so a 503 is never cached.
ORDER_CACHE = "private, max-age=5"  # an order belongs to one shopper
PRODUCT_CACHE = "public, max-age=60, stale-while-revalidate=300"  # descriptions change rarely
INVENTORY_CACHE = "public, max-age=5"  # stock moves all the time
NO_STORE = "no-store"

# Redis is unreachable or not serving yet: worth retrying, so 503 rather than 500.
UNAVAILABLE = (
    redis.exceptions.ConnectionError,  # includes BusyLoadingError and AuthenticationError
    redis.exceptions.TimeoutError,
    redis.exceptions.ClusterDownError,
    redis.exceptions.TryAgainError,
    redis.exceptions.MasterDownError,
    redis.exceptions.RedisClusterException,
)

cors = (
    CORSConfig(
        allow_origin=config.cors_allowed_origins[0],
        extra_origins=list(config.cors_allowed_origins[1:]),
        expose_headers=["Retry-After"],
        max_age=600,
    )
    if config.cors_allowed_origins
    else None  # no allow-list, no CORS headers (never a wildcard by default)
)


@lru_cache(maxsize=1)
def reader() -> Reader:
    return Reader(get_client(config), config)


# The failure of a read the fast path (below) already sent: the full path raises it
# again instead of asking Redis a second time, so a 503 takes no longer than one read.
_replayed_failure: Exception | None = None


def _read() -> Reader:
    if _replayed_failure is not None:
        raise _replayed_failure
    return reader()


@lru_cache(maxsize=1)
def openapi_json() -> str:
    """The OpenAPI document generated from the routes above (also `make openapi`)."""
    document = json.loads(resolver().get_openapi_json_schema())
    # invalid input is answered with 400 here (invalid_request below), not Powertools' default 422
    for operations in document["paths"].values():
        for operation in operations.values():
            operation.get("responses", {}).pop("422", None)
    for name in ("HTTPValidationError", "ValidationError"):
        document.get("components", {}).get("schemas", {}).pop(name, None)
    return json.dumps(document, separators=(",", ":"))


def _raw(value: bytes) -> Response[Any]:
    # the projections only cache UTF-8 JSON, so the text is the cached bytes unchanged;
    # anything else goes out as bytes (base64 in the Lambda response), still unchanged
    try:
        body: str | bytes = value.decode()
    except UnicodeDecodeError:
        body = value
    return Response(HTTPStatus.OK, content_types.APPLICATION_JSON, body)


# --- errors: JSON everywhere -------------------------------------------------------
def problem(status: HTTPStatus, message: str, headers: dict[str, str] | None = None, **extra: Any) -> Response[Any]:
    body = {"statusCode": status.value, "error": status.phrase, "message": message, **extra}
    return Response(status, content_types.APPLICATION_JSON, body, headers)


def _retry_after() -> dict[str, str]:
    return {"Retry-After": str(config.retry_after_seconds)}


# --- the fast path ---------------------------------------------------------------
# Powertools' resolver costs more than the Redis read it wraps. Measured with
# devkit/bench_api.py, as `make bench` runs it (in-process, interleaved with a bare redis-py GET of the
# same key, standalone Valkey, 2 CPUs): GET /orders/{id} through
# Logger.inject_lambda_context + APIGatewayHttpResolver with validation took p50 91 µs
# against 35 µs for the bare GET (2.6x); the profile puts most of the difference in the
# event wrapper, the jmespath correlation id lookup, route matching, the validation
# middleware chain and the response builder. So the routes a page load hits are
# answered here when the request is valid and the read succeeds, with the answer
# Powertools would give (same body, headers, CORS). Everything else (invalid input,
# 404, Redis failures, other routes) goes through the resolver below, which owns every
# error answer; a failure the fast path met is replayed there, not read again.
# With it (`make bench`, same run, standalone Valkey): p50 69 µs against 66 µs for the
# bare GET (1.04x), p99 103 µs; product lists of 20 SKUs 92 µs against 77 µs for the
# bare MGET (1.20x); inventory pages of 50 items 121 µs against 103 µs for the bare
# ZRANGE (1.18x). tests/api/test_api_fastpath.py holds the two paths to the same answers.
_FAST_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")  # IDENTIFIER_PATTERN without `$`'s newline
_FAST_INT = re.compile(r"0|-?[1-9][0-9]{0,15}")
_FAST_CURSOR = re.compile(r"[A-Za-z0-9_-]{1,512}")
_CONTENT_TYPE = content_types.APPLICATION_JSON


def _fast_order(event: dict[str, Any]) -> tuple[Any, str] | None:
    order_id = event["rawPath"][8:]  # "/orders/"
    if not _FAST_ID.fullmatch(order_id):
        return None
    return (lambda: _body(reader().order(order_id))), ORDER_CACHE


def _fast_product(event: dict[str, Any]) -> tuple[Any, str] | None:
    sku = event["rawPath"][10:]  # "/products/"
    if not _FAST_ID.fullmatch(sku):
        return None
    return (lambda: _body(reader().product(sku))), PRODUCT_CACHE


def _repeated_parameter(event: dict[str, Any]) -> bool:
    """A parameter given twice is a list to the resolver's validation (400 for these routes)."""
    raw = event.get("rawQueryString") or ""
    return "&" in raw and any(len(v) > 1 for v in parse_qs(raw, keep_blank_values=True).values())


def _fast_products(event: dict[str, Any]) -> tuple[Any, str] | None:
    skus = (event.get("queryStringParameters") or {}).get("skus")
    if not skus or len(skus) > 4096 or _repeated_parameter(event):
        return None
    return (lambda: reader().products(skus).to_json().decode()), PRODUCT_CACHE


def _fast_inventory(event: dict[str, Any]) -> tuple[Any, str] | None:
    path = event["rawPath"]
    store = path[8:-10]  # "/stores/" ... "/inventory"
    if not (path.endswith("/inventory") and _FAST_ID.fullmatch(store)):
        return None
    query = event.get("queryStringParameters") or {}  # other parameters are ignored, as by the resolver
    sort = query.get("sort", "quantity")
    below, limit, cursor = query.get("below"), query.get("limit"), query.get("cursor")
    if sort not in ("quantity", "sku") or _repeated_parameter(event):
        return None
    if below is not None and not (_FAST_INT.fullmatch(below) and abs(int(below)) <= 10**15):
        return None
    if limit is not None and not (_FAST_INT.fullmatch(limit) and 1 <= int(limit) <= config.inventory_max_limit):
        return None
    if cursor is not None and not _FAST_CURSOR.fullmatch(cursor):
        return None

    def read() -> str:
        page = reader().inventory(
            store,
            sort=sort,  # type: ignore[arg-type]
            below=None if below is None else int(below),
            limit=None if limit is None else int(limit),
            cursor=cursor,
        )
        return page.to_json().decode()

    return read, INVENTORY_CACHE


_FAST_ROUTES = {
    "GET /orders/{orderId}": _fast_order,
    "GET /products/{sku}": _fast_product,
    "GET /products": _fast_products,
    "GET /stores/{storeId}/inventory": _fast_inventory,
}


def _body(value: bytes) -> str:
    return value.decode()  # not UTF-8: UnicodeDecodeError, and the resolver sends the bytes as base64


def _origin(headers: dict[str, str]) -> str | None:
    origin = headers.get("origin")  # API Gateway sends header names in lower case
    if origin is None:
        origin = next((v for k, v in headers.items() if k.lower() == "origin"), None)
    return origin


def _fast(event: dict[str, Any]) -> dict[str, Any] | None:
    """The resolver's 200 answer for a valid request to a hot route; None to take the full path."""
    global _replayed_failure
    route = _FAST_ROUTES.get(event.get("routeKey"))  # type: ignore[arg-type]
    if route is None or not isinstance(event.get("rawPath"), str):
        return None
    prepared = route(event)
    if prepared is None:
        return None  # invalid input: the resolver's validation answers it
    read, cache_control = prepared
    try:
        body = read()
    except UnicodeDecodeError:
        return None
    except Exception as error:
        _replayed_failure = error
        return None
    headers = {"Content-Type": _CONTENT_TYPE}
    if cors is not None:
        origin = _origin(event.get("headers") or {})
        if origin:
            allowed = cors.allowed_origin(origin.split(",", 1)[0])  # as the resolver reads the header
            if allowed is not None:
                headers.update(cors.to_dict(allowed))
    headers["Cache-Control"] = cache_control
    if cors is not None:
        headers["Vary"] = "Origin"
    return {"statusCode": 200, "body": body, "isBase64Encoded": False, "headers": headers, "cookies": []}


def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    global _replayed_failure
    try:
        fast = _fast(event)
        if fast is not None:
            return fast
        return _resolve(event, context)
    finally:
        _replayed_failure = None


@logger.inject_lambda_context(correlation_id_path=correlation_paths.API_GATEWAY_HTTP)
def _resolve(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    response = resolver().resolve(event, context)
    if cors is not None:
        # the CORS headers depend on the request's Origin: shared caches must key on it
        response.setdefault("headers", {})["Vary"] = "Origin"
    return response


@lru_cache(maxsize=1)
def resolver() -> APIGatewayHttpResolver:
    """The Powertools resolver: every route with validation, the error answers, the OpenAPI document.

    Built on first use, not at import: its models, validation and the pydantic import
    cost about as much as the rest of the cold start (see devkit/coldstart.py), and the
    fast path answers a page's reads without it.
    """
    from aws_lambda_powertools import single_metric
    from aws_lambda_powertools.event_handler.openapi.exceptions import RequestValidationError
    from aws_lambda_powertools.event_handler.openapi.params import Path, Query
    from aws_lambda_powertools.event_handler.openapi.types import OpenAPIResponse
    from aws_lambda_powertools.metrics import MetricUnit
    from pydantic import BaseModel, ConfigDict, Field

    app = APIGatewayHttpResolver(cors=cors, enable_validation=True)
    app.configure_openapi(
        title=TITLE,
        version=VERSION,
        description=(
            "Orders, products and store inventory, read from the Redis cache that the Kafka topics keep current."
        ),
    )
    app.enable_swagger(path="/swagger")

    # --- response models (for the OpenAPI document) ------------------------------
    class Address(BaseModel):
        model_config = ConfigDict(extra="allow")
        city: str | None = None
        state: str | None = None
        zipcode: int | str | None = None

    # the cache stores documents as produced: only the key field is sure to be there
    class Order(BaseModel):
        model_config = ConfigDict(extra="allow")
        orderid: int | str
        ordertime: int | None = Field(default=None, description="epoch milliseconds")
        itemid: str | None = None
        orderunits: float | None = None
        address: Address | None = None

    class Product(BaseModel):
        model_config = ConfigDict(extra="allow")
        sku: str
        name: str | None = None
        price: float | None = None
        description: str | None = None

    class ProductList(BaseModel):
        items: list[Product] = Field(description="the products found, in the order asked")
        missing: list[str] = Field(description="SKUs asked for that are not in the cache")

    class InventoryItem(BaseModel):
        sku: str
        quantity: float = Field(description="units on hand (whole numbers come as integers)")

    class InventoryPage(BaseModel):
        store: str
        sort: Literal["quantity", "sku"]
        below: int | None
        items: list[InventoryItem]
        nextCursor: str | None = Field(description="pass as `cursor` for the next page; null on the last page")

    class RedisHealth(BaseModel):
        reachable: bool
        latencyMs: float | None = None

    class Health(BaseModel):
        status: Literal["ok", "unavailable"]
        redis: RedisHealth

    class Problem(BaseModel):
        statusCode: int
        error: str
        message: str
        details: list[dict[str, str]] | None = None

    def _json(model: type[BaseModel], description: str = "OK") -> OpenAPIResponse:
        return {"description": description, "content": {content_types.APPLICATION_JSON: {"model": model}}}

    RETRY_AFTER: dict[str, Any] = {
        "Retry-After": {"description": "seconds to wait before retrying", "schema": {"type": "integer"}}
    }
    ERRORS: dict[int, OpenAPIResponse] = {
        400: _json(Problem, "Invalid input"),
        404: _json(Problem, "Not in the cache"),
        503: {**_json(Problem, "Redis is unreachable; retry after Retry-After seconds"), "headers": RETRY_AFTER},
    }

    # --- parameters -----------------------------------------------------------------
    _ID = {"pattern": IDENTIFIER_PATTERN, "min_length": 1, "max_length": 128}
    OrderId = Annotated[str, Path(description="order id, e.g. 18", **_ID)]
    Sku = Annotated[str, Path(description="product SKU", **_ID)]
    StoreId = Annotated[str, Path(description="store id, e.g. store1", **_ID)]

    # --- routes -------------------------------------------------------------------
    @app.get("/orders/<orderId>", cache_control=ORDER_CACHE, responses={200: _json(Order), **ERRORS}, tags=["orders"])
    def get_order(orderId: OrderId) -> Response[Any]:
        """The order JSON exactly as the orders topic delivered it."""
        return _raw(_read().order(orderId))

    @app.get(
        "/products/<sku>", cache_control=PRODUCT_CACHE, responses={200: _json(Product), **ERRORS}, tags=["products"]
    )
    def get_product(sku: Sku) -> Response[Any]:
        """The product document exactly as the products topic delivered it."""
        return _raw(_read().product(sku))

    @app.get("/products", cache_control=PRODUCT_CACHE, responses={200: _json(ProductList), **ERRORS}, tags=["products"])
    def get_products(
        skus: Annotated[
            str,
            Query(
                description=f"comma-separated SKUs, at most {config.products_max_skus}; order is kept",
                min_length=1,
                max_length=4096,  # well within URL limits; 100 ten-digit SKUs take 1,099
            ),
        ],
    ) -> Response[Any]:
        """Several products in one call; SKUs not in the cache are listed under `missing`."""
        return _raw(_read().products(skus).to_json())

    @app.get(
        "/stores/<storeId>/inventory",
        cache_control=INVENTORY_CACHE,
        responses={200: _json(InventoryPage), **ERRORS},
        tags=["inventory"],
    )
    def get_inventory(
        storeId: StoreId,
        sort: Annotated[
            Literal["quantity", "sku"], Query(description="quantity: lowest stock first; sku: by SKU")
        ] = "quantity",
        below: Annotated[
            int | None, Query(description="only items with fewer units than this (low stock)", ge=-(10**15), le=10**15)
        ] = None,
        limit: Annotated[
            int | None,
            Query(
                description=f"items per page (default {config.inventory_default_limit})",
                ge=1,
                le=config.inventory_max_limit,
            ),
        ] = None,
        cursor: Annotated[
            str | None,
            Query(description="the `nextCursor` of the previous page", pattern=r"^[A-Za-z0-9_-]+$", max_length=512),
        ] = None,
    ) -> Response[Any]:
        """A page of a store's stock, with an opaque cursor to the next page."""
        page = _read().inventory(storeId, sort=sort, below=below, limit=limit, cursor=cursor)
        return Response(HTTPStatus.OK, content_types.APPLICATION_JSON, page.to_json().decode())

    @app.get(
        "/stores/<storeId>/inventory/<sku>",
        cache_control=INVENTORY_CACHE,
        responses={200: _json(InventoryItem), **ERRORS},
        tags=["inventory"],
    )
    def get_inventory_item(storeId: StoreId, sku: Sku) -> Response[Any]:
        """Units on hand of one SKU in one store."""
        item = _read().inventory_item(storeId, sku)
        return Response(HTTPStatus.OK, content_types.APPLICATION_JSON, item.as_dict())

    @app.get("/health", cache_control=NO_STORE, responses={200: _json(Health), 503: ERRORS[503]}, tags=["health"])
    def get_health() -> Response[Any]:
        """Whether Redis answers, and how fast."""
        try:
            latency = reader().ping_ms()
        except redis.exceptions.RedisError as error:
            logger.warning("redis unreachable", extra={"error": repr(error)})
            body = {"status": "unavailable", "redis": {"reachable": False, "latencyMs": None}}
            return Response(HTTPStatus.SERVICE_UNAVAILABLE, content_types.APPLICATION_JSON, body, _retry_after())
        body = {"status": "ok", "redis": {"reachable": True, "latencyMs": latency}}
        return Response(HTTPStatus.OK, content_types.APPLICATION_JSON, body)

    @app.get("/openapi.json", cache_control="public, max-age=300", include_in_schema=False)
    def get_openapi() -> Response[Any]:
        return Response(HTTPStatus.OK, content_types.APPLICATION_JSON, openapi_json())

    @app.exception_handler(RequestValidationError)  # type: ignore[untyped-decorator]
    def invalid_request(error: RequestValidationError) -> Response[Any]:
        details = [
            {"location": ".".join(str(part) for part in e["loc"]), "message": str(e.get("msg", e["type"]))}
            for e in error.errors()
        ]
        summary = "; ".join(f"{d['location']}: {d['message']}" for d in details)
        return problem(HTTPStatus.BAD_REQUEST, f"invalid request: {summary}", details=details)

    @app.exception_handler(BadRequest)  # type: ignore[untyped-decorator]
    def bad_request(error: BadRequest) -> Response[Any]:
        return problem(HTTPStatus.BAD_REQUEST, error.message)

    @app.exception_handler(NotFound)  # type: ignore[untyped-decorator]
    def not_found(error: NotFound) -> Response[Any]:
        return problem(HTTPStatus.NOT_FOUND, error.message)

    @app.not_found  # type: ignore[untyped-decorator]
    def no_route(_: Exception) -> Response[Any]:
        path = app.current_event.path
        return problem(HTTPStatus.NOT_FOUND, f"no route for {app.current_event.http_method} {path[:200]}")

    @app.exception_handler(list(UNAVAILABLE))  # type: ignore[untyped-decorator]
    def unavailable(error: Exception) -> Response[Any]:
        logger.warning("redis unreachable", extra={"error": repr(error)})
        with single_metric(name="CacheUnavailable", unit=MetricUnit.Count, value=1, namespace="CacheSync") as metric:
            metric.add_dimension(name="service", value="cachesync-api")
        return problem(HTTPStatus.SERVICE_UNAVAILABLE, "the cache is unreachable; retry shortly", _retry_after())

    @app.exception_handler(redis.exceptions.RedisError)  # type: ignore[untyped-decorator]
    def redis_refused(error: redis.exceptions.RedisError) -> Response[Any]:
        logger.exception("redis refused a read")
        return problem(HTTPStatus.BAD_GATEWAY, "the cache refused the read")

    @app.exception_handler(Exception)  # type: ignore[untyped-decorator]
    def internal(error: Exception) -> Response[Any]:
        logger.exception("unhandled error")
        return problem(HTTPStatus.INTERNAL_SERVER_ERROR, "internal error; it has been logged")

    return app


def __getattr__(name: str) -> Any:
    # `app` (the resolver) as a module attribute, built when first asked for
    if name == "app":
        return resolver()
    raise AttributeError(name)
