"""Requests generated from the OpenAPI document, over real HTTP: never a 5xx while Redis is up.

Schemathesis also checks each answer against the document (status code
documented, JSON matching the response schema, content type).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
import redis
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import (
    content_type_conformance,
    negative_data_rejection,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from cachesync import keys
from devkit import servers
from devkit.apigw import HttpApiServer
from devkit.sam import ROOT
from tests.api.apikit import Api, stock


def _without_security(document: dict[str, Any]) -> dict[str, Any]:
    """The document with its bearer-token requirements left out: the gateway below is the
    function's routing alone, and the JWT authorizer in front of the private routes is
    API Gateway's (tests/api/test_gateway.py checks the local one answers as it does)."""
    document.pop("security", None)
    for operations in document.get("paths", {}).values():
        for operation in operations.values():
            if isinstance(operation, dict):
                operation.pop("security", None)
    return document


# the committed document (test_committed_openapi_document_is_current keeps it in step with the routes)
schema = schemathesis.openapi.from_dict(_without_security(json.loads((ROOT / "docs" / "openapi.json").read_text())))


@pytest.fixture(scope="module")
def base_url(api: Api, api_valkey: servers.ServerProcess) -> Iterator[str]:
    client = redis.Redis.from_url(api_valkey.url)
    client.flushall()
    # a little of everything, so generated ids sometimes hit data (0, "0", "A" are what generators try first)
    for identifier in ("0", "A", "18", "store1"):
        client.set(keys.order_key(identifier), b'{"ordertime":1,"orderid":18,"itemid":"I","orderunits":1,'
                   b'"address":{"city":"c","state":"s","zipcode":1}}')  # fmt: skip
        client.set(keys.product_key(identifier), json.dumps({"sku": identifier, "name": "n", "price": 1}).encode())
        stock(client, identifier, {f"{n}": n % 7 for n in range(40)} | {"0": 3, "A": 0.5})
    server = HttpApiServer(api.gateway).start()
    yield server.url
    server.stop()


@schema.parametrize()
@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_server_errors_and_answers_match_the_document(case: schemathesis.Case, base_url: str) -> None:
    response = case.call(base_url=base_url)
    assert response.status_code < 500, (case.as_curl_command(), response.text[:300])
    case.validate_response(
        response,
        checks=[
            not_a_server_error,
            status_code_conformance,
            content_type_conformance,
            response_schema_conformance,
            negative_data_rejection,  # input outside the document is refused with a 4xx
        ],
    )
