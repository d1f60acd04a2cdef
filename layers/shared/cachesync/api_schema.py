"""The read API's parameters (validated by Powertools), its response models and its documentation pages.

The response models feed the OpenAPI document only: the handler sends the cached
JSON as it is, never parsed or serialised through them.
"""

# No `from __future__ import annotations`: pydantic reads the annotations at runtime.
import json
from pathlib import Path as FilePath
from typing import Annotated, Any, Literal

from aws_lambda_powertools.event_handler import content_types
from aws_lambda_powertools.event_handler.openapi.params import Path, Query
from aws_lambda_powertools.event_handler.openapi.types import OpenAPIResponse
from pydantic import BaseModel, ConfigDict, Field

from cachesync.keys import IDENTIFIER_PATTERN

# --- parameters --------------------------------------------------------------------
_ID = {"pattern": IDENTIFIER_PATTERN, "min_length": 1, "max_length": 128}
OrderId = Annotated[str, Path(description="order id, e.g. 18", **_ID)]
Sku = Annotated[str, Path(description="product SKU", **_ID)]
StoreId = Annotated[str, Path(description="store id, e.g. store1", **_ID)]
SortBy = Annotated[Literal["quantity", "sku"], Query(description="quantity: lowest stock first; sku: by SKU")]
Below = Annotated[
    int | None, Query(description="only items with fewer units than this (low stock)", ge=-(10**15), le=10**15)
]
Cursor = Annotated[
    str | None, Query(description="the `nextCursor` of the previous page", pattern=r"^[A-Za-z0-9_-]+$", max_length=512)
]


# --- response models ------------------------------------------------------------------


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


class StatsBucket(BaseModel):
    at: int = Field(description="start of the bucket, epoch milliseconds")
    applied: int
    duplicates: int
    deadLettered: int
    maxLagMs: int | None = Field(description="worst freshness lag of the bucket's batches")


class DeadLetterReason(BaseModel):
    reason: str
    count: int = Field(description="batches of the window that dead-lettered a record for it (first five a batch)")


class RecentDeadLetter(BaseModel):
    at: int
    topic: str | None
    partition: int | None
    offset: int | None
    reason: str


class DeadLetters(BaseModel):
    sink: Literal["sqs", "stream"] = Field(description="where dead letters go: the SQS queue, or the Redis stream")
    reasons: list[DeadLetterReason]
    recent: list[RecentDeadLetter] = Field(description="the newest letters in the Redis stream")


class OperatorStats(BaseModel):
    now: int
    windowSeconds: int
    bucketSeconds: int
    lastBatchAt: int | None = Field(description="when the newest batch of the window was recorded")
    appliedPerSecond: float = Field(description="records applied per second over the last minute")
    totals: dict[str, int] = Field(description="batches, applied, duplicates, deadLettered over the window")
    freshnessLagMs: int | None = Field(description="the newest batch's worst apply time minus record timestamp")
    series: list[StatsBucket]
    deadLetters: DeadLetters
    partitions: dict[str, dict[str, int]] = Field(
        description="topic -> partition -> the last offset a batch processed (Kafka's end offsets are not in the cache)"
    )


class Problem(BaseModel):
    statusCode: int
    error: str
    message: str
    details: list[dict[str, str]] | None = None


def json_response(model: type[BaseModel], description: str = "OK") -> OpenAPIResponse:
    return {"description": description, "content": {content_types.APPLICATION_JSON: {"model": model}}}


RETRY_AFTER: dict[str, Any] = {
    "Retry-After": {"description": "seconds to wait before retrying", "schema": {"type": "integer"}}
}
ERRORS: dict[int, OpenAPIResponse] = {
    400: json_response(Problem, "Invalid input"),
    404: json_response(Problem, "Not in the cache"),
    503: {**json_response(Problem, "Redis is unreachable; retry after Retry-After seconds"), "headers": RETRY_AFTER},
}


class GatewayMessage(BaseModel):
    message: str


# answered by API Gateway's JWT authorizer before the function runs
AUTH_ERRORS: dict[int, OpenAPIResponse] = {
    401: json_response(GatewayMessage, "No token, or an expired, badly signed or foreign one (issuer, audience)"),
    403: json_response(GatewayMessage, "A valid token without the route's scope"),
}


# answered by ApiFunction for an order (cachesync.access); another shopper's order is a 404
ORDER_FORBIDDEN = json_response(
    Problem,
    "A valid token that may not read orders: without the staff scope where the deploy has no ownership "
    "rule, or without the claim the rule matches",
)


def responses(
    model: type[BaseModel], private: bool = False, forbidden: OpenAPIResponse | None = None
) -> dict[int, OpenAPIResponse]:
    """A route's documented answers: `model` when it succeeds, the error answers otherwise."""
    answers = {200: json_response(model), **ERRORS, **(AUTH_ERRORS if private else {})}
    if forbidden is not None:
        answers[403] = forbidden
    return answers


HEALTH_RESPONSES: dict[int, OpenAPIResponse] = {200: json_response(Health), 503: ERRORS[503]}


def openapi_document(generated: str, private: dict[str, list[str]] | None = None) -> str:
    """Powertools' OpenAPI document (JSON) without its 422 answers (invalid input gets a 400 Problem
    here), and with the bearer token that `private` paths need (path -> scopes)."""
    document = json.loads(generated)
    if private:
        schemes = document.setdefault("components", {}).setdefault("securitySchemes", {})
        schemes["jwt"] = {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}
        for path, scopes in private.items():
            for operation in document["paths"].get(path, {}).values():
                operation["security"] = [{"jwt": scopes}]
    for operations in document["paths"].values():
        for operation in operations.values():
            operation.get("responses", {}).pop("422", None)
    for name in ("HTTPValidationError", "ValidationError"):
        document.get("components", {}).get("schemas", {}).pop(name, None)
    return json.dumps(document, separators=(",", ":"))


def swagger_page(document: str) -> str:
    """Powertools' Swagger UI page over `document`, its script and styles inline.

    Not `enable_swagger()` on the resolver: that imports the OpenAPI document's own
    models when it registers the page, so every cold start would pay for what only
    the page and the document use. Imported here, they load on the first request for either.
    """
    from aws_lambda_powertools.event_handler.openapi import swagger_ui

    assets = FilePath(swagger_ui.__file__).parent
    js, css = (assets / "swagger-ui-bundle.min.js").read_text(), (assets / "swagger-ui.min.css").read_text()
    return str(swagger_ui.generate_swagger_html(document.replace("</", "<\\/"), js, css, "", None))
