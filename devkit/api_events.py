"""Writes events/api-*.json: API Gateway HTTP API (payload v2) events for each ApiFunction route.

    python -m devkit.api_events

Usable with `make invoke FUNCTION=ApiFunction EVENT=events/api-get-order.json` and
`sam local invoke ApiFunction -e ...`. The ids match the records in
events/kafka-*.json, so invoke those first to have something to read.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from devkit.apigw import LocalGateway, http_routes
from devkit.sam import ROOT, describe

ORIGIN = "http://localhost:5173"  # a local frontend's origin (make run and samconfig's dev environment allow it)
# name -> (method, path and query)
SAMPLES = {
    "api-get-order": ("GET", "/orders/18"),
    "api-get-product": ("GET", "/products/3746317213"),
    "api-get-products": ("GET", "/products?skus=3746317213,9697354961,0000000000"),
    "api-get-inventory": ("GET", "/stores/store1/inventory?below=10"),
    "api-get-inventory-by-sku": ("GET", "/stores/store1/inventory?sort=sku&limit=2"),
    "api-get-inventory-item": ("GET", "/stores/store1/inventory/3746317213"),
    "api-get-health": ("GET", "/health"),
    "api-get-openapi": ("GET", "/openapi.json"),
    "api-get-order-invalid": ("GET", "/orders/%7Bx%7D"),
    "api-get-admin-stats": ("GET", "/admin/stats"),
}
# what the JWT authorizer hands the function on the routes it guards (a Cognito access token)
ISSUER = "https://cognito-idp.us-east-1.amazonaws.com/us-east-1_AbCdEfGhI"
CLAIMS = {
    "sub": "6418b458-d091-705e-122e-04bf2945fcdf",
    "iss": ISSUER,
    "client_id": "3n4b5urk1ft4fl3mg5e62d9ado",
    "token_use": "access",
    "iat": "1710268438",
    "exp": "1710272038",
}


def sample(method: str, target: str) -> dict[str, object]:
    headers = [
        ("Host", "abc123.execute-api.us-east-1.amazonaws.com"),
        ("User-Agent", "curl/8.5.0"),
        ("Accept", "application/json"),
        ("Origin", ORIGIN),
    ]
    routes = http_routes("ApiFunction")
    route = next(r for r in routes if r.match(method, urlsplit(target).path) is not None)
    if route.authorizer:
        headers.append(("Authorization", "Bearer eyJraWQiOi...signed-by-the-issuer"))
    gateway = LocalGateway(_unused, routes, dict)
    event = gateway.event(method, target, headers, ip="203.0.113.7")
    assert event is not None, f"no ApiFunction route for {method} {target}"
    if route.authorizer:
        scopes = list(route.scopes) or ["openid"]
        if route.path == "/orders/{orderId}":
            # a customer-service token, which reads any order: the template sets no ownership rule
            scopes.append(describe("ApiFunction").environment["STAFF_SCOPE"])
        claims = {**CLAIMS, "scope": " ".join(scopes)}
        event["requestContext"]["authorizer"] = {"jwt": {"claims": claims, "scopes": list(route.scopes) or None}}
    # fixed ids and times keep the files stable when they are written again
    event["headers"]["x-amzn-trace-id"] = "Root=1-65f0c2a0-0123456789abcdef01234567"
    context = event["requestContext"]
    context.update(requestId="JKJaXmPLvHcESHA=", time="12/Mar/2024:19:03:58 +0000", timeEpoch=1710270238000)
    context["domainName"] = "abc123.execute-api.us-east-1.amazonaws.com"
    context["domainPrefix"] = "abc123"
    context["apiId"] = "abc123"
    event["headers"]["x-forwarded-port"] = "443"
    event["headers"]["x-forwarded-proto"] = "https"
    return event


def _unused(event: dict[str, Any], context: Any) -> None:
    raise AssertionError("only builds events")


def main() -> None:
    for name, (method, target) in SAMPLES.items():
        path = ROOT / "events" / f"{name}.json"
        path.write_text(json.dumps(sample(method, target), indent=2) + "\n")
        print(f"wrote {Path(path).relative_to(ROOT)}")


if __name__ == "__main__":
    main()
