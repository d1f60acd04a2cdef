"""SnapStart in the template: ApiFunction is served from published versions behind an alias,
and a new version is published whenever what its environment is made of changes."""

from __future__ import annotations

import itertools
import json
from typing import Any

import pytest

from tests.template.cfn import REQUIRED, Resolved, get_att, ref
from tests.template.test_template import SCENARIOS

ALIAS = "ApiFunctionAliaslive"
# a stack-created cache's endpoint as long as ElastiCache Serverless makes them
ENDPOINT = "cachesync-0a1b2c3d-abcdef.serverless.euc1.cache.amazonaws.com"


@pytest.fixture(autouse=True)
def _region(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")


def _version(stack: Resolved) -> tuple[str, dict[str, Any]]:
    (name,) = [n for n, r in stack.resources.items() if r["Type"] == "AWS::Lambda::Version"]
    return name, stack.resources[name]


def test_the_api_runs_from_snapshots_of_published_versions() -> None:
    stack = Resolved(dict(REQUIRED))
    assert stack.props("ApiFunction")["SnapStart"] == {"ApplyOn": "PublishedVersions"}
    name, version = _version(stack)
    assert version["Properties"]["FunctionName"] == ref("ApiFunction")
    assert version["DeletionPolicy"] == "Delete"  # a replaced version does not keep its snapshot cached
    alias = stack.props(ALIAS)
    assert alias["Name"] == "live" and alias["FunctionVersion"] == get_att(name, "Version")
    # API Gateway invokes the alias, never $LATEST (which SnapStart does not cover)
    paths = stack.props("HttpApi")["Body"]["paths"]
    uris = {json.dumps(op["x-amazon-apigateway-integration"]["uri"]) for p in paths.values() for op in p.values()}
    assert uris == {
        json.dumps(
            {"Fn::Sub": f"arn:aws:apigateway:us-east-1:lambda:path/2015-03-31/functions/${{{ALIAS}}}/invocations"}
        )
    }
    permissions = [r["Properties"] for r in stack.of_type("AWS::Lambda::Permission").values()]
    api_permissions = [p for p in permissions if p["Principal"] == "apigateway.amazonaws.com"]
    assert api_permissions and all(p["FunctionName"] == ref(ALIAS) for p in api_permissions)


def test_ingest_and_maintenance_start_cold_on_purpose() -> None:
    # no page waits on them; their mappings invoke the function itself (docs/deploy.md)
    stack = Resolved(dict(REQUIRED))
    for name in ("IngestFunction", "MaintenanceFunction"):
        assert "SnapStart" not in stack.props(name)
    for mapping in ("OrdersMapping", "InventoryMapping", "ProductsMapping"):
        assert stack.props(mapping)["FunctionName"] == ref("IngestFunction")


def _environment(stack: Resolved) -> str:
    props = stack.props("ApiFunction")
    return json.dumps([props["Environment"], props.get("VpcConfig")], sort_keys=True)


def _description(stack: Resolved) -> str:
    return json.dumps(_version(stack)[1]["Properties"]["Description"], sort_keys=True)


VARIANTS = {
    **SCENARIOS,
    "debug logs": {**REQUIRED, "LogLevel": "DEBUG"},
    "no auth": {**REQUIRED, "CacheAuthMode": "none"},
    "an ownership rule": {**REQUIRED, "OrderOwnerField": "customer.id"},
    "another owner claim": {**REQUIRED, "OrderOwnerField": "customer.id", "OrderOwnerClaim": "email"},
    "another staff scope": {**REQUIRED, "StaffScope": "shop/support"},
}


@pytest.mark.parametrize(("first", "second"), list(itertools.combinations(sorted(VARIANTS), 2)))
def test_a_changed_environment_publishes_a_new_version(first: str, second: str) -> None:
    """SAM names the version after the properties with their Refs unresolved, so only the
    version's description can tell that a parameter changed what the function runs with."""
    a, b = Resolved(VARIANTS[first]), Resolved(VARIANTS[second])
    if _environment(a) != _environment(b):
        assert _description(a) != _description(b)


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_the_version_description_fits(name: str) -> None:
    description = _version(Resolved(VARIANTS[name]))[1]["Properties"]["Description"]
    if isinstance(description, str):  # every part known before deployment (an existing cache)
        assert len(description) <= 256
        return
    separator, parts = description["Fn::Join"]

    def text(part: Any) -> str:
        if isinstance(part, str):
            return part
        if part == get_att("Cache", "Endpoint.Address"):
            return ENDPOINT
        if "Fn::Join" in part:  # the stack's own subnets
            return ",".join("subnet-0123456789abcdef0" for _ in part["Fn::Join"][1])
        return "cachesync-0a1b2c3d-api"  # a stack-created user or cache name

    assert len(separator.join(text(p) for p in parts)) <= 256  # Lambda's limit on a version's description
