"""ApiFunction: the frontend's read API over the cache (API Gateway HTTP API, payload v2).

Thin by design: the reads live in `cachesync.reads`; this module declares the
routes for Powertools' resolver (which validates the input and generates the
OpenAPI document) and maps failures to status codes. Every answer is JSON,
errors too: 400 for bad input, 404 for absent data, 503 with Retry-After while
Redis is unreachable (clients retry, and the next request reconnects by itself),
500 when the cache refuses the function's credentials or permissions (no retry
helps: an operator must act, and the CacheAuthFailed metric alarms).

Authentication and CORS are the HTTP API's (template.yaml): its JWT authorizer
admits a request to an order or to /admin/stats before this function runs, and
API Gateway answers preflights and sets the CORS headers on every answer. Which
order a token may read is decided here, on the order (cachesync.access).
"""

# No `from __future__ import annotations`: the models and route signatures are read
# at runtime for validation and the OpenAPI document.
import time
from functools import lru_cache
from http import HTTPStatus
from typing import Annotated, Any
from urllib.parse import urlsplit

import redis
from aws_lambda_powertools import Logger, single_metric
from aws_lambda_powertools.event_handler import APIGatewayHttpResolver, Response, content_types
from aws_lambda_powertools.event_handler.openapi.exceptions import RequestValidationError
from aws_lambda_powertools.event_handler.openapi.params import Query
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext

from cachesync import api_schema as schema
from cachesync import snapstart
from cachesync.access import Caller, Forbidden, OrderAccess, Unauthenticated
from cachesync.config import settings
from cachesync.connection import AUTH_FAILURES, RedisClient, cache_auth_failure, get_client
from cachesync.opstats import operator_view
from cachesync.reads import BadRequest, NotFound, Reader

logger = Logger(service="cachesync-api")
config = settings()
JSON = content_types.APPLICATION_JSON

# Per-route caching for browsers and CDNs. Errors always get `no-cache` (Powertools
# sets it for every non-200 answer), so a 503 is never cached.
ORDER_CACHE = "private, max-age=5"  # an order belongs to one shopper
PRODUCT_CACHE = "public, max-age=60, stale-while-revalidate=300"  # descriptions change rarely
INVENTORY_CACHE = "public, max-age=5"  # stock moves all the time

# The routes the template's JWT authorizer guards, with the scopes it asks for (AdminScope's
# default), for the OpenAPI document: the gateway enforces them. Which orders a token may read
# is this function's (cachesync.access): any with the staff scope, else the deploy's owner rule.
PRIVATE_ROUTES = {"/orders/{orderId}": [], "/admin/stats": ["cachesync/admin"]}

# Redis is unreachable or not serving yet: worth retrying, so 503 rather than 500. An
# authentication or permission failure (a ConnectionError too, for redis-py) is not: see
# `cache_auth_failure`.
UNAVAILABLE = (
    redis.exceptions.ConnectionError,  # includes BusyLoadingError and AuthenticationError
    redis.exceptions.TimeoutError,
    redis.exceptions.ClusterDownError,
    redis.exceptions.TryAgainError,
    redis.exceptions.MasterDownError,
    redis.exceptions.RedisClusterException,
)

app = APIGatewayHttpResolver(enable_validation=True)
app.configure_openapi(
    title="cachesync read API",
    version="1.0.0",
    description="Orders, products and store inventory, read from the Redis cache that the Kafka topics keep current.",
)


# the parameters whose bounds come from the settings (the others are in cachesync.api_schema)
Skus = Annotated[
    str,
    Query(
        description=f"comma-separated SKUs, at most {config.products_max_skus}; order is kept",
        min_length=1,
        max_length=4096,  # well within URL limits; 100 ten-digit SKUs take 1,099
    ),
]
Limit = Annotated[
    int | None,
    Query(
        description=f"items per page (default {config.inventory_default_limit})", ge=1, le=config.inventory_max_limit
    ),
]


def reader() -> Reader:
    # the current client: after a SnapStart restore, connection.py has built a new one
    return _reader_of(get_client(config))


@lru_cache(maxsize=1)
def _reader_of(client: RedisClient) -> Reader:
    return Reader(client, config)


@lru_cache(maxsize=1)
def order_access() -> OrderAccess:
    return OrderAccess(config)


def ok(body: str | bytes | dict[str, Any]) -> Response[Any]:
    return Response(HTTPStatus.OK, JSON, body)


def cached(value: bytes) -> Response[Any]:
    # the projections only cache UTF-8 JSON, so the text is the cached bytes unchanged;
    # anything else goes out as bytes (base64 in the Lambda response), still unchanged
    try:
        return ok(value.decode())
    except UnicodeDecodeError:
        return ok(value)


# --- routes --------------------------------------------------------------------------
@app.get(
    "/orders/<orderId>",
    cache_control=ORDER_CACHE,
    responses=schema.responses(schema.Order, private=True, forbidden=schema.ORDER_FORBIDDEN),
    tags=["orders"],
)
def get_order(orderId: schema.OrderId) -> Response[Any]:
    """The order JSON exactly as the orders topic delivered it: any order for a token with the
    staff scope; with the deploy's ownership rule, a shopper's own orders (another's answers 404)."""
    caller = Caller.from_event(app.current_event.raw_event)
    if not order_access().needs_order(caller):
        return cached(reader().order(orderId))
    order = reader().order(orderId)
    if not order_access().owns(caller, order):
        raise NotFound(f"order {orderId} not found")  # as a missing one: an id tells nothing
    return cached(order)


@app.get("/products/<sku>", cache_control=PRODUCT_CACHE, responses=schema.responses(schema.Product), tags=["products"])
def get_product(sku: schema.Sku) -> Response[Any]:
    """The product document exactly as the products topic delivered it."""
    return cached(reader().product(sku))


@app.get("/products", cache_control=PRODUCT_CACHE, responses=schema.responses(schema.ProductList), tags=["products"])
def get_products(skus: Skus) -> Response[Any]:
    """Several products in one call; SKUs not in the cache are listed under `missing`."""
    return cached(reader().products(skus).to_json())


@app.get(
    "/stores/<storeId>/inventory",
    cache_control=INVENTORY_CACHE,
    responses=schema.responses(schema.InventoryPage),
    tags=["inventory"],
)
def get_inventory(
    storeId: schema.StoreId,
    sort: schema.SortBy = "quantity",
    below: schema.Below = None,
    limit: Limit = None,
    cursor: schema.Cursor = None,
) -> Response[Any]:
    """A page of a store's stock, with an opaque cursor to the next page."""
    return ok(reader().inventory(storeId, sort=sort, below=below, limit=limit, cursor=cursor).to_json().decode())


@app.get(
    "/stores/<storeId>/inventory/<sku>",
    cache_control=INVENTORY_CACHE,
    responses=schema.responses(schema.InventoryItem),
    tags=["inventory"],
)
def get_inventory_item(storeId: schema.StoreId, sku: schema.Sku) -> Response[Any]:
    """Units on hand of one SKU in one store."""
    return ok(reader().inventory_item(storeId, sku).as_dict())


@app.get("/health", cache_control="no-store", responses=schema.HEALTH_RESPONSES, tags=["health"])
def get_health() -> Response[Any]:
    """Whether Redis answers, and how fast."""
    try:
        latency = reader().ping_ms()
    except redis.exceptions.RedisError as error:
        if cache_auth_failure(error) is not None:
            raise  # not a 503 to wait out: cache_refused_us answers it
        logger.warning("redis unreachable", extra={"error": repr(error)})
        body = {"status": "unavailable", "redis": {"reachable": False, "latencyMs": None}}
        return Response(HTTPStatus.SERVICE_UNAVAILABLE, JSON, body, _retry_after())
    return ok({"status": "ok", "redis": {"reachable": True, "latencyMs": latency}})


@app.get(
    "/admin/stats",
    cache_control="no-store",
    responses=schema.responses(schema.OperatorStats, private=True),
    tags=["operations"],
)
def get_admin_stats() -> Response[Any]:
    """What the operator's page shows: records applied per second, duplicates skipped, dead letters
    and their reasons, the freshness lag over the last minutes, and each partition's processed offset."""
    return ok(operator_view(get_client(config), config, int(time.time() * 1000)))


@app.get("/openapi.json", cache_control="public, max-age=300", include_in_schema=False)
def get_openapi() -> Response[Any]:
    return ok(openapi_json())


@app.get("/swagger", include_in_schema=False)
def get_swagger() -> Response[Any]:
    return Response(HTTPStatus.OK, content_types.TEXT_HTML, swagger_html())


@lru_cache(maxsize=1)
def swagger_html() -> str:
    return schema.swagger_page(openapi_json())


@lru_cache(maxsize=1)
def openapi_json() -> str:
    """The OpenAPI document generated from the routes above (also `make openapi`)."""
    return schema.openapi_document(app.get_openapi_json_schema(), PRIVATE_ROUTES)


# --- errors: JSON everywhere ---------------------------------------------------------
def problem(status: HTTPStatus, message: str, headers: dict[str, str] | None = None, **extra: Any) -> Response[Any]:
    body = {"statusCode": status.value, "error": status.phrase, "message": message, **extra}
    return Response(status, JSON, body, headers)


def _retry_after() -> dict[str, str]:
    return {"Retry-After": str(config.retry_after_seconds)}


@app.exception_handler(RequestValidationError)  # type: ignore[untyped-decorator]
def invalid_request(error: RequestValidationError) -> Response[Any]:
    details = [
        {"location": ".".join(str(part) for part in e["loc"]), "message": str(e.get("msg", e["type"]))}
        for e in error.errors()
    ]
    summary = "; ".join(f"{d['location']}: {d['message']}" for d in details)
    return problem(HTTPStatus.BAD_REQUEST, f"invalid request: {summary}", details=details)


@app.exception_handler([BadRequest, NotFound])  # type: ignore[untyped-decorator]
def read_refused(error: BadRequest | NotFound) -> Response[Any]:
    return problem(HTTPStatus.NOT_FOUND if isinstance(error, NotFound) else HTTPStatus.BAD_REQUEST, error.message)


@app.exception_handler([Unauthenticated, Forbidden])  # type: ignore[untyped-decorator]
def refused(error: Unauthenticated | Forbidden) -> Response[Any]:
    if isinstance(error, Unauthenticated):
        return problem(HTTPStatus.UNAUTHORIZED, str(error))
    return problem(HTTPStatus.FORBIDDEN, str(error))


@app.not_found  # type: ignore[untyped-decorator]
def no_route(_: Exception) -> Response[Any]:
    return problem(HTTPStatus.NOT_FOUND, f"no route for {app.current_event.http_method} {app.current_event.path[:200]}")


@app.exception_handler(list(UNAVAILABLE))  # type: ignore[untyped-decorator]
def unavailable(error: Exception) -> Response[Any]:
    if cache_auth_failure(error) is not None:
        return cache_refused_us(error)
    logger.warning("redis unreachable", extra={"error": repr(error)})
    with single_metric(name="CacheUnavailable", unit=MetricUnit.Count, value=1, namespace="CacheSync") as metric:
        metric.add_dimension(name="service", value="cachesync-api")
    return problem(HTTPStatus.SERVICE_UNAVAILABLE, "the cache is unreachable; retry shortly", _retry_after())


@app.exception_handler(redis.exceptions.RedisError)  # type: ignore[untyped-decorator]
def redis_refused(error: redis.exceptions.RedisError) -> Response[Any]:
    if cache_auth_failure(error) is not None:
        return cache_refused_us(error)
    logger.exception("redis refused a read")
    return problem(HTTPStatus.BAD_GATEWAY, "the cache refused the read")


@app.exception_handler(list(AUTH_FAILURES))  # type: ignore[untyped-decorator]
def auth_failed(error: Exception) -> Response[Any]:
    return cache_refused_us(error)


def cache_refused_us(error: Exception) -> Response[Any]:
    refusal = cache_auth_failure(error) or error
    # No retry helps until someone fixes the cache user, its secret or its access string: a 500
    # (not a 503 that clients would retry for ever), a log line that says so, and a metric that alarms.
    logger.error(
        "the cache refused ApiFunction's credentials or permissions: check the cache user, its secret "
        "(REDIS_SECRET_ARN) or IAM policy, and its access string (docs/security.md)",
        extra={
            "error": f"{type(refusal).__name__}: {refusal}",
            # the user as configured; a secret holding {"username", "password"} may name another
            "user": config.redis_username or urlsplit(config.redis_url).username or "default",
            "secret": config.redis_secret_arn,
            "iamAuth": config.iam_auth,
        },
    )
    with single_metric(name="CacheAuthFailed", unit=MetricUnit.Count, value=1, namespace="CacheSync") as metric:
        metric.add_dimension(name="service", value="cachesync-api")
    return problem(HTTPStatus.INTERNAL_SERVER_ERROR, "the API cannot sign in to its cache; it has been logged")


@app.exception_handler(Exception)  # type: ignore[untyped-decorator]
def internal(error: Exception) -> Response[Any]:
    logger.exception("unhandled error")
    return problem(HTTPStatus.INTERNAL_SERVER_ERROR, "internal error; it has been logged")


# --- SnapStart: what a first request would build, built once before the snapshot ---------
# Requests that fail validation (no cache involved) set up each route's validation, and the
# OpenAPI document is generated: every copy restored from the snapshot starts with them. The
# cache client is made too, so that the restore hook (cachesync.connection) connects it again.
PRIMING_PATHS = ("/orders/{x}", "/products/{x}", "/products", "/stores/{x}/inventory", "/stores/{x}/inventory/{x}")


def prime_routes() -> None:
    try:
        reader()
    except Exception as error:  # a cluster client maps the slots when made; the restore will retry
        logger.warning("no cache client before the snapshot", extra={"error": repr(error)})
    for path in PRIMING_PATHS:
        app.resolve(
            {
                "version": "2.0",
                "routeKey": "$default",
                "rawPath": path,
                "rawQueryString": "",
                "headers": {},
                "requestContext": {"http": {"method": "GET", "path": path}, "requestId": "prime", "stage": "$default"},
                "isBase64Encoded": False,
            },
            None,  # type: ignore[arg-type]  # no invocation: the resolver does not read it
        )
    openapi_json()


snapstart.register(before_snapshot=prime_routes)


@logger.inject_lambda_context
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    # the request id API Gateway assigned, as correlation_paths.API_GATEWAY_HTTP names it, read
    # directly: the decorator's correlation_id_path runs a JMESPath search on every request
    logger.set_correlation_id((event.get("requestContext") or {}).get("requestId"))
    return app.resolve(event, context)
