"""template.yaml, checked the way CloudFormation would take it, without an AWS account.

The SAM translator turns the template into plain CloudFormation in-process;
`cfn.Resolved` applies a scenario's parameter values (conditions, `Fn::If`,
defaults) so each test sees the resources one deployment would create.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any
from unittest.mock import MagicMock

import pytest

from cachesync.config import ConfigError, Settings
from tests.template.cfn import (
    REQUIRED,
    ROOT,
    TEMPLATE,
    Resolved,
    get_att,
    load,
    parameter_values,
    ref,
    source_text,
    transform,
)

BIN = Path(sys.executable).parent

SCRAM_SECRET = "arn:aws:secretsmanager:us-east-1:123456789012:secret:cachesync/scram-XyZ123"
CACHE_SECRET = "arn:aws:secretsmanager:us-east-1:123456789012:secret:cachesync/cache-acl-QwErTy"
API_CACHE_SECRET = "arn:aws:secretsmanager:us-east-1:123456789012:secret:cachesync/cache-acl-api-AsDfGh"
KMS_KEY = "arn:aws:kms:us-east-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab"

# Each scenario is one way to deploy: parameter overrides on top of the defaults.
SCENARIOS: dict[str, dict[str, str]] = {
    # sam deploy --guided with only the Kafka values: new VPC, new cache, on-demand pollers
    "defaults": dict(REQUIRED),
    # an existing network and cache, provisioned pollers, SCRAM, ACL secret, alarms by mail
    "existing-everything": {
        "KafkaBootstrapServers": "broker-1.internal:9096",
        "JwtIssuer": "https://login.example.com/oauth2/default",
        "JwtAudience": "api://shop",
        "AdminScope": "shop.ops",
        "KafkaSecretArn": SCRAM_SECRET,
        "KafkaAuthMechanism": "SASL_SCRAM_512_AUTH",
        "KafkaSecretKmsKeyArn": KMS_KEY,
        "OrdersTopic": "shop.orders",
        "InventoryTopic": "shop.stock",
        "ProductsTopic": "shop.catalog",
        "KafkaConsumerGroupId": "cache-prod",
        "KafkaStartingPosition": "LATEST",
        "KafkaBatchSize": "1000",
        "KafkaBatchingWindowSeconds": "2",
        "PollerMode": "PROVISIONED",
        "MinimumPollers": "2",
        "MaximumPollers": "8",
        "KafkaMaximumRetryAttempts": "5",
        "KafkaBisectBatchOnError": "true",
        "ExistingVpcId": "vpc-0123456789abcdef0",
        "ExistingSubnetIds": "subnet-0aaaaaaaaaaaaaaa1,subnet-0bbbbbbbbbbbbbbb2,subnet-0ccccccccccccccc3",
        "CreateVpcEndpoints": "false",
        "RedisUrl": "rediss://master.shop-cache.abc123.use1.cache.amazonaws.com:6390",
        "RedisCluster": "true",
        "ExistingCacheSecurityGroupId": "sg-0123456789abcdef0",
        "ExistingCachePort": "6390",
        "CacheAuthMode": "password",
        "CacheUsername": "cachesync",
        "CacheAuthSecretArn": CACHE_SECRET,
        "AlarmEmail": "oncall@example.com",
    },
    # an existing VPC that needs our endpoints, a stack-created cache with an ACL user group,
    # one ACL user (and secret) per function
    "existing-vpc-new-cache": {
        **REQUIRED,
        "ExistingVpcId": "vpc-0fedcba9876543210",
        "ExistingSubnetIds": "subnet-0ddddddddddddddd4,subnet-0eeeeeeeeeeeeeee5",
        "CreateVpcEndpoints": "true",
        "CacheAuthMode": "password",
        "CacheAuthSecretArn": CACHE_SECRET,
        "ApiCacheAuthSecretArn": API_CACHE_SECRET,
        "CacheUserGroupId": "cachesync-users",
        "PollerMode": "PROVISIONED",
        "KafkaBisectBatchOnError": "false",
    },
    # IAM authentication on the stack's cache: it creates the users and their group
    "iam-new-cache": {**REQUIRED, "CacheAuthMode": "iam"},
    # IAM authentication on an existing node-based cache with its own IAM-enabled users
    "iam-existing-cache": {
        **REQUIRED,
        "ExistingVpcId": "vpc-0123456789abcdef0",
        "ExistingSubnetIds": "subnet-0aaaaaaaaaaaaaaa1,subnet-0bbbbbbbbbbbbbbb2",
        "RedisUrl": "rediss://master.shop-cache.abc123.use1.cache.amazonaws.com:6379",
        "RedisCluster": "true",
        "ExistingCacheSecurityGroupId": "sg-0123456789abcdef0",
        "CacheAuthMode": "iam",
        "ExistingCacheName": "shop-cache",
        "ExistingCacheKind": "replicationgroup",
        "ExistingCacheIngestUserId": "cachesync-ingest",
        "ExistingCacheApiUserId": "cachesync-api",
    },
}

MAPPINGS = {"orders": "OrdersMapping", "inventory": "InventoryMapping", "products": "ProductsMapping"}
TOPIC_PARAMETERS = {"orders": "OrdersTopic", "inventory": "InventoryTopic", "products": "ProductsTopic"}
FUNCTIONS = ("IngestFunction", "ApiFunction")


@pytest.fixture(autouse=True)
def _region(monkeypatch: pytest.MonkeyPatch) -> None:
    # the translator asks boto for the partition of the current region; no call is made
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_REGION", "us-east-1")


@pytest.fixture(params=sorted(SCENARIOS), scope="module")
def scenario(request: pytest.FixtureRequest) -> tuple[str, dict[str, str], Resolved]:
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    name = request.param
    return name, SCENARIOS[name], Resolved(SCENARIOS[name])


def given(overrides: dict[str, str], name: str) -> str:
    """A parameter's value in a scenario (its default when not overridden)."""
    return overrides.get(name, str(load()["Parameters"][name].get("Default", "")))


def may_skip(overrides: dict[str, str]) -> bool:
    """Whether the mappings may skip a batch, and so have an on-failure destination: provisioned
    pollers with bounded retries (with -1 and a destination Lambda would retry only 10 times)."""
    return given(overrides, "PollerMode") == "PROVISIONED" and given(overrides, "KafkaMaximumRetryAttempts") != "-1"


# ---------------------------------------------------------------------- linters
def test_sam_validate_lint_is_clean() -> None:
    result = subprocess.run(
        [str(BIN / "sam"), "validate", "--lint", "--template-file", str(TEMPLATE)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
        env={**os.environ, "SAM_CLI_TELEMETRY": "0"},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "is a valid SAM Template" in result.stdout + result.stderr


def test_cfn_lint_is_clean() -> None:
    result = subprocess.run(
        [str(BIN / "cfn-lint"), str(TEMPLATE)], cwd=ROOT, capture_output=True, text=True, timeout=180
    )
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout + result.stderr


# ---------------------------------------------------------------------- Kafka
def test_one_mapping_per_topic(scenario: tuple[str, dict[str, str], Resolved]) -> None:
    _, overrides, stack = scenario
    mappings = {
        n: m for n, m in stack.of_type("AWS::Lambda::EventSourceMapping").items() if "Topics" in m["Properties"]
    }
    assert sorted(mappings) == sorted(MAPPINGS.values())

    servers = given(overrides, "KafkaBootstrapServers").split(",")
    groups = set()
    for kind, name in MAPPINGS.items():
        props = stack.props(name)
        assert props["FunctionName"] == ref("IngestFunction")
        assert props["Topics"] == [given(overrides, TOPIC_PARAMETERS[kind])]
        assert props["SelfManagedEventSource"] == {"Endpoints": {"KafkaBootstrapServers": servers}}
        assert props["SourceAccessConfigurations"] == [
            {"Type": given(overrides, "KafkaAuthMechanism"), "URI": given(overrides, "KafkaSecretArn")}
        ]
        group = props["SelfManagedKafkaEventSourceConfig"]["ConsumerGroupId"]
        assert group == f"{given(overrides, 'KafkaConsumerGroupId')}-{kind}"
        groups.add(group)
        assert int(props["BatchSize"]) == int(given(overrides, "KafkaBatchSize"))
        assert int(props["MaximumBatchingWindowInSeconds"]) == int(given(overrides, "KafkaBatchingWindowSeconds"))
        assert props["StartingPosition"] == given(overrides, "KafkaStartingPosition")
        # the ingest function fails batches whole: never ask it for partial batch responses
        assert "FunctionResponseTypes" not in props
        # no VPC access configuration: Confluent Cloud is reached on its public endpoint
        assert {c["Type"] for c in props["SourceAccessConfigurations"]}.isdisjoint({"VPC_SUBNET", "VPC_SECURITY_GROUP"})
    assert len(groups) == 3, "each mapping needs a consumer group of its own"


def test_poller_mode_settings(scenario: tuple[str, dict[str, str], Resolved]) -> None:
    _, overrides, stack = scenario
    provisioned = given(overrides, "PollerMode") == "PROVISIONED"
    skips = may_skip(overrides)
    for name in MAPPINGS.values():
        props = stack.props(name)
        if not provisioned:
            # on-demand mappings take none of the provisioned-mode error controls
            for key in (
                "ProvisionedPollerConfig",
                "MaximumRetryAttempts",
                "MaximumRecordAgeInSeconds",
                "BisectBatchOnFunctionError",
                "DestinationConfig",
            ):
                assert key not in props, f"{name}: {key} in on-demand mode"
            continue
        assert props["ProvisionedPollerConfig"] == {
            "MinimumPollers": given(overrides, "MinimumPollers"),
            "MaximumPollers": given(overrides, "MaximumPollers"),
        }
        assert int(props["MaximumRetryAttempts"]) == int(given(overrides, "KafkaMaximumRetryAttempts"))
        assert int(props["MaximumRecordAgeInSeconds"]) == int(given(overrides, "KafkaMaximumRecordAgeInSeconds"))
        if given(overrides, "KafkaBisectBatchOnError") == "true":
            assert props["BisectBatchOnFunctionError"] is True
        else:
            assert "BisectBatchOnFunctionError" not in props
        if skips:
            assert props["DestinationConfig"] == {"OnFailure": {"Destination": get_att("MappingFailureQueue", "Arn")}}
        else:  # retries until success: with a destination Lambda would make them 10 (test_retry_budget)
            assert "DestinationConfig" not in props
    assert ("MappingFailureQueue" in stack.resources) == skips
    assert ("MappingFailureQueueAlarm" in stack.resources) == skips


SCHEMA_REGISTRY = {
    "PollerMode": "PROVISIONED",
    "KafkaMaximumRetryAttempts": "10",  # refused records go to the destination, which bounded retries get
    "SchemaRegistryUri": "https://psrc-abc12.us-east-2.aws.confluent.cloud",
    "SchemaRegistrySecretArn": "arn:aws:secretsmanager:us-east-1:123456789012:secret:cachesync/registry-AbCdEf",
}


def _ingest_statements(stack: Resolved) -> dict[str, dict[str, Any]]:
    return {s["Sid"]: s for s in _statements(stack)["IngestFunctionRole"] if "Sid" in s}


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (
            SCHEMA_REGISTRY,
            {
                "SchemaRegistryURI": SCHEMA_REGISTRY["SchemaRegistryUri"],
                "EventRecordFormat": "JSON",
                "AccessConfigs": [{"Type": "BASIC_AUTH", "URI": SCHEMA_REGISTRY["SchemaRegistrySecretArn"]}],
                "SchemaValidationConfigs": [{"Attribute": "VALUE"}],
            },
        ),
        (
            {
                **SCHEMA_REGISTRY,
                "SchemaRegistrySecretArn": "",
                "SchemaRegistryEventRecordFormat": "SOURCE",
                "SchemaRegistryValidatedAttributes": "KEY_AND_VALUE",
            },
            {
                "SchemaRegistryURI": SCHEMA_REGISTRY["SchemaRegistryUri"],
                "EventRecordFormat": "SOURCE",
                "SchemaValidationConfigs": [{"Attribute": "KEY"}, {"Attribute": "VALUE"}],
            },
        ),
    ],
    ids=["json-basic-auth", "source-keys-no-auth"],
)
def test_a_schema_registry_on_every_topic_mapping(overrides: dict[str, str], expected: dict[str, Any]) -> None:
    stack = Resolved({**REQUIRED, **overrides, "SkippedBatchesTopic": "cachesync-skipped"})
    for name in MAPPINGS.values():
        assert stack.props(name)["SelfManagedKafkaEventSourceConfig"]["SchemaRegistryConfig"] == expected, name
    # the skipped records' mapping reads Lambda's JSON invocation records, never through the registry
    assert "SchemaRegistryConfig" not in stack.props("SkippedBatchesMapping")["SelfManagedKafkaEventSourceConfig"]
    # the pollers read the registry's secret with the function's role, and only that secret
    statements = _ingest_statements(stack)
    if "AccessConfigs" in expected:
        registry_secret = statements["MappingsReadSchemaRegistrySecret"]
        assert registry_secret["Action"] == "secretsmanager:GetSecretValue"
        assert registry_secret["Resource"] == SCHEMA_REGISTRY["SchemaRegistrySecretArn"]
    else:
        assert "MappingsReadSchemaRegistrySecret" not in statements
    assert broken_rules({**REQUIRED, **overrides}) == []


def test_no_schema_registry_by_default(scenario: tuple[str, dict[str, str], Resolved]) -> None:
    _, _, stack = scenario
    for name in MAPPINGS.values():
        assert "SchemaRegistryConfig" not in stack.props(name)["SelfManagedKafkaEventSourceConfig"]
    assert "MappingsReadSchemaRegistrySecret" not in _ingest_statements(stack)


@pytest.mark.parametrize(
    ("overrides", "complaint"),
    [
        ({**SCHEMA_REGISTRY, "PollerMode": "ON_DEMAND"}, "SchemaRegistryUri needs PollerMode=PROVISIONED"),
        ({"SchemaRegistryUri": SCHEMA_REGISTRY["SchemaRegistryUri"]}, "SchemaRegistryUri needs PollerMode"),
        ({"SchemaRegistrySecretArn": SCHEMA_REGISTRY["SchemaRegistrySecretArn"]}, "are for a schema registry"),
        ({"PollerMode": "PROVISIONED", "SchemaRegistryEventRecordFormat": "SOURCE"}, "are for a schema registry"),
        ({"SchemaRegistryValidatedAttributes": "KEY_AND_VALUE"}, "are for a schema registry"),
    ],
)
def test_rules_keep_the_schema_registry_to_provisioned_mode(overrides: dict[str, str], complaint: str) -> None:
    failures = broken_rules({**REQUIRED, **overrides})
    assert any(complaint in failure for failure in failures), failures


def _samconfig_overrides() -> dict[str, dict[str, str]]:
    import tomllib

    config = tomllib.loads((ROOT / "samconfig.toml").read_text())
    overrides = {}
    for env, sections in config.items():
        if isinstance(sections, dict) and "deploy" in sections:
            text = sections["deploy"]["parameters"].get("parameter_overrides", "")
            overrides[env] = dict(pair.split("=", 1) for pair in text.split())
    return overrides


def test_no_default_or_environment_skips_a_failed_batch() -> None:
    """A skipped batch leaves the cache diverged for good (the offsets move past it), so
    every default and every samconfig environment retries until success, with no age limit."""
    parameters = load()["Parameters"]
    assert parameters["KafkaMaximumRetryAttempts"]["Default"] == -1
    assert parameters["KafkaMaximumRecordAgeInSeconds"]["Default"] == -1
    environments = _samconfig_overrides()
    assert {"default", "dev", "prod"} <= set(environments)
    for env, overrides in environments.items():
        for name in ("KafkaMaximumRetryAttempts", "KafkaMaximumRecordAgeInSeconds"):
            assert overrides.get(name, "-1") == "-1", f"samconfig {env}: {name}={overrides[name]} skips batches"
    stack = Resolved({**SCENARIOS["defaults"], "PollerMode": "PROVISIONED"})
    for name in MAPPINGS.values():
        props = stack.props(name)
        assert (int(props["MaximumRetryAttempts"]), int(props["MaximumRecordAgeInSeconds"])) == (-1, -1)


def test_mappings_consume_in_partition_order() -> None:
    """No unordered consumption mode (Kafka share groups) can be chosen: none is exposed."""
    template = load()
    assert not [name for name in template["Parameters"] if "consumption" in name.lower()]
    for name in MAPPINGS.values():
        assert "ConsumptionMode" not in template["Resources"][name]["Properties"]


def test_the_stacks_cache_takes_daily_snapshots() -> None:
    props = Resolved(SCENARIOS["defaults"]).props("Cache")
    assert (int(props["SnapshotRetentionLimit"]), props["DailySnapshotTime"]) == (7, "04:00")


# ---------------------------------------------------------------------- functions
def test_functions_run_python313_arm64_in_the_vpc(scenario: tuple[str, dict[str, str], Resolved]) -> None:
    _, overrides, stack = scenario
    existing_subnets = given(overrides, "ExistingSubnetIds")
    expected_subnets = (
        existing_subnets.split(",") if existing_subnets else [ref("PrivateSubnetA"), ref("PrivateSubnetB")]
    )
    layers = [name for name in stack.resources if name.startswith("SharedLayer")]
    assert len(layers) == 1
    for name in FUNCTIONS:
        props = stack.props(name)
        assert props["Runtime"] == "python3.13"
        assert props["Architectures"] == ["arm64"]
        assert props["TracingConfig"] == {"Mode": "Active"}
        assert props["Layers"] == [ref(layers[0])]
        assert props["VpcConfig"] == {"SecurityGroupIds": [ref("FunctionSecurityGroup")], "SubnetIds": expected_subnets}
    role_of = {name: stack.props(name)["Role"] for name in FUNCTIONS}
    assert role_of == {
        "IngestFunction": get_att("IngestFunctionRole", "Arn"),
        "ApiFunction": get_att("ApiFunctionRole", "Arn"),
    }


def test_no_scenario_turns_the_replica_wait_off(scenario: tuple[str, dict[str, str], Resolved]) -> None:
    """Acknowledged means replicated by default: the template never sets REDIS_WAIT_REPLICAS=0,
    which would report a batch applied before any replica has it (cachesync.transport)."""
    _, _, stack = scenario
    variables = stack.props("IngestFunction")["Environment"]["Variables"]
    assert Settings.from_env({k: str(v) for k, v in variables.items() if k.startswith("REDIS_WAIT")}).wait_replicas != 0


def test_stack_created_subnets_span_two_zones() -> None:
    stack = Resolved(SCENARIOS["defaults"])
    zones = [stack.props(name)["AvailabilityZone"] for name in ("PrivateSubnetA", "PrivateSubnetB")]
    assert zones[0] != zones[1]
    assert all(z["Fn::Select"][1] == {"Fn::GetAZs": ""} for z in zones)
    # a private VPC: no internet gateway, no NAT, no routes besides the VPC-local one
    for forbidden in ("AWS::EC2::InternetGateway", "AWS::EC2::NatGateway", "AWS::EC2::Route", "AWS::EC2::EIP"):
        assert not stack.of_type(forbidden), forbidden
    for name in ("PrivateSubnetA", "PrivateSubnetB"):
        assert stack.props(name)["MapPublicIpOnLaunch"] is False


def _code_environment_names() -> set[str]:
    """Environment variable names the code reads (config.py)."""
    config = (ROOT / "layers/shared/cachesync/config.py").read_text()
    names = set(re.findall(r'env\.get\("([A-Z_]+)"', config))
    names |= set(re.findall(r'_\w+\(env, "([A-Z_]+)"', config))  # _number(env, "NAME", ...) and the like
    table = tomllib.loads((ROOT / "layers/shared/cachesync/topics.toml").read_text())
    for entry in table["topic"]:
        upper = entry["name"].upper()
        names |= {f"TOPIC_{upper}", f"{upper}_KEY_PREFIX", f"{upper}_KEY_FIELD", f"{upper}_TTL_SECONDS"}
    return names


# each function's cache user in the stack-created IAM mode, and the other's
CACHE_USERS = {"IngestFunction": "IngestCacheUser", "ApiFunction": "ApiCacheUser"}
EXISTING_USER_PARAMETERS = {"IngestFunction": "ExistingCacheIngestUserId", "ApiFunction": "ExistingCacheApiUserId"}


def expected_cache_auth(overrides: dict[str, str], function: str) -> dict[str, Any]:
    """The cache authentication variables a function should get in a scenario."""
    mode = given(overrides, "CacheAuthMode")
    if mode == "iam":
        created = not given(overrides, "RedisUrl")
        return {
            "REDIS_IAM_AUTH": "true",
            "REDIS_IAM_CACHE_NAME": ref("Cache") if created else given(overrides, "ExistingCacheName"),
            "REDIS_IAM_SERVERLESS": "true"
            if created or given(overrides, "ExistingCacheKind") == "serverlesscache"
            else "false",
            "REDIS_USERNAME": ref(CACHE_USERS[function])
            if created
            else given(overrides, EXISTING_USER_PARAMETERS[function]),
            "REDIS_SECRET_ARN": "",
        }
    secret = ""
    if mode == "password":
        secret = given(overrides, "CacheAuthSecretArn")
        if function == "ApiFunction" and given(overrides, "ApiCacheAuthSecretArn"):
            secret = given(overrides, "ApiCacheAuthSecretArn")
    return {
        "REDIS_IAM_AUTH": "false",
        "REDIS_IAM_CACHE_NAME": "",
        "REDIS_IAM_SERVERLESS": "false",
        "REDIS_USERNAME": given(overrides, "CacheUsername"),
        "REDIS_SECRET_ARN": secret,
    }


def test_function_environment(scenario: tuple[str, dict[str, str], Resolved]) -> None:
    _, overrides, stack = scenario
    known = _code_environment_names()
    assert {"REDIS_URL", "REDIS_CLUSTER", "DLQ_QUEUE_URL", "TOPIC_ORDERS", "REDIS_IAM_AUTH"} <= known  # parsed
    env = {name: stack.props(name)["Environment"]["Variables"] for name in FUNCTIONS}
    for name, variables in env.items():
        unknown = {k for k in variables if not k.startswith("POWERTOOLS_")} - known
        assert not unknown, f"{name} sets variables no code reads: {unknown}"
        assert variables["TOPIC_ORDERS"] == given(overrides, "OrdersTopic")
        assert variables["TOPIC_INVENTORY"] == given(overrides, "InventoryTopic")
        assert variables["TOPIC_PRODUCTS"] == given(overrides, "ProductsTopic")
        expected = expected_cache_auth(overrides, name)
        assert {k: variables[k] for k in expected} == expected, name
        assert variables["POWERTOOLS_LOG_LEVEL"] == given(overrides, "LogLevel")
        if given(overrides, "RedisUrl"):
            assert variables["REDIS_URL"] == given(overrides, "RedisUrl")
            assert variables["REDIS_CLUSTER"] == given(overrides, "RedisCluster")
        else:  # the stack's serverless cache: TLS and the cluster client, always
            assert variables["REDIS_URL"] == {"Fn::Sub": "rediss://${Cache.Endpoint.Address}:${Cache.Endpoint.Port}"}
            assert variables["REDIS_CLUSTER"] == "true"
    assert env["IngestFunction"]["DLQ_QUEUE_URL"] == ref("DeadLetterQueue")
    assert "DLQ_QUEUE_URL" not in env["ApiFunction"]
    assert not any(name.startswith("CORS") for name in env["ApiFunction"])  # CORS is the HTTP API's alone
    assert env["IngestFunction"]["POWERTOOLS_SERVICE_NAME"] == "cachesync-ingest"
    assert env["ApiFunction"]["POWERTOOLS_SERVICE_NAME"] == "cachesync-api"


def test_local_invoke_resolves_redis_url_from_the_parameter() -> None:
    # `make invoke` reads the template with the SAM CLI providers and passes RedisUrl
    from devkit.sam import describe

    for name in FUNCTIONS:
        function = describe(name, {"RedisUrl": "redis://127.0.0.1:6399/0"})
        assert function.environment["REDIS_URL"] == "redis://127.0.0.1:6399/0"
        assert function.environment["REDIS_CLUSTER"] == "false"
        assert function.handler == "app.lambda_handler"
        # local runs resolve the template with CacheAuthMode=none (devkit.sam): no IAM tokens,
        # no secret, the URL's user
        for variable in ("REDIS_IAM_CACHE_NAME", "REDIS_USERNAME", "REDIS_SECRET_ARN"):
            assert function.environment.get(variable, "") == "", variable
        assert function.environment.get("REDIS_IAM_AUTH", "false") == "false"


# ---------------------------------------------------------------------- HTTP API
def _api_function_routes() -> tuple[set[tuple[str, str]], str]:
    """(method, path) of every route the ApiFunction's resolver serves, and where they came from."""
    app = ROOT / "functions/api/app.py"
    if not app.exists():
        return FALLBACK_ROUTES, "constant list (functions/api/app.py absent)"
    script = """
import importlib.util, json, sys
sys.path[:0] = [sys.argv[1], sys.argv[2]]
spec = importlib.util.spec_from_file_location("api_app_routes", sys.argv[3])
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
from aws_lambda_powertools.event_handler.api_gateway import ApiGatewayResolver
resolvers = [v for v in vars(module).values() if isinstance(v, ApiGatewayResolver)]
assert len(resolvers) == 1 and isinstance(resolvers[0], ApiGatewayResolver), resolvers
routes = resolvers[0]._static_routes + resolvers[0]._dynamic_routes
print(json.dumps(sorted({(r.method, r.openapi_path) for r in routes})))
"""
    result = subprocess.run(
        [sys.executable, "-c", script, str(ROOT / "layers/shared"), str(app.parent), str(app)],
        capture_output=True,
        text=True,
        timeout=120,
        env={k: v for k, v in os.environ.items() if not k.startswith(("REDIS_", "CORS_"))},
    )
    assert result.returncode == 0, result.stderr
    return {tuple(route) for route in json.loads(result.stdout.strip().splitlines()[-1])}, "functions/api/app.py"  # type: ignore[misc]


# used only while functions/api/app.py does not exist
FALLBACK_ROUTES = {
    ("GET", "/orders/{orderId}"),
    ("GET", "/products/{sku}"),
    ("GET", "/products"),
    ("GET", "/stores/{storeId}/inventory"),
    ("GET", "/stores/{storeId}/inventory/{sku}"),
    ("GET", "/health"),
    ("GET", "/openapi.json"),
}


def test_http_api_routes_are_the_api_functions_routes() -> None:
    stack = Resolved(SCENARIOS["defaults"])
    body = stack.props("HttpApi")["Body"]
    deployed = {(method.upper(), path) for path, methods in body["paths"].items() for method in methods}
    for path, methods in body["paths"].items():
        for method, operation in methods.items():
            uri = operation["x-amazon-apigateway-integration"]["uri"]["Fn::Sub"]
            # the alias of its published versions (SnapStart), see test_snapstart.py
            assert "${ApiFunctionAliaslive}" in uri, f"{method} {path} is not integrated with ApiFunction"
    expected, source = _api_function_routes()
    assert deployed == expected, (
        f"routes differ from {source}: only in template {deployed - expected}, only in code {expected - deployed}"
    )


def test_the_defaults_are_the_secure_settings() -> None:
    """A deployment that gives only the required values gets a cache that needs IAM authentication,
    with one least-privilege user per function and a default user that can do nothing, and an API
    that answers no cross-origin request."""
    stack = Resolved(dict(REQUIRED))
    assert stack.props("Cache")["UserGroupId"] == ref("CacheUserGroup")
    group = stack.props("CacheUserGroup")["UserIds"]
    assert ref("DefaultCacheUser") in group and len(group) == 4
    default = stack.props("DefaultCacheUser")
    assert default["UserName"] == "default" and default["AccessString"] == "off -@all"
    for user in ("IngestCacheUser", "ApiCacheUser", "MaintenanceCacheUser"):
        props = stack.props(user)
        assert props["AuthenticationMode"] == {"Type": "iam"}
        assert "+@all" not in props["AccessString"] and "+flushall" not in props["AccessString"]
    for name in FUNCTIONS:
        assert stack.props(name)["Environment"]["Variables"]["REDIS_IAM_AUTH"] == "true"
    assert "x-amazon-apigateway-cors" not in stack.props("HttpApi")["Body"]
    assert load()["Parameters"]["CorsAllowedOrigins"]["Default"] == ""
    # the local origin is the dev environment's own choice, never a default
    dev = tomllib.loads((ROOT / "samconfig.toml").read_text())["dev"]["deploy"]["parameters"]
    assert "CorsAllowedOrigins=http://localhost:5173" in dev["parameter_overrides"].split()


def test_cors_origins_reject_wildcards() -> None:
    pattern = load()["Parameters"]["CorsAllowedOrigins"]["AllowedPattern"]
    assert re.fullmatch(pattern, "https://shop.example.com,http://localhost:5173")
    assert re.fullmatch(pattern, "")  # no cross-origin access at all
    for bad in ("*", "https://*.example.com", "https://a.example.com, https://b.example.com", "shop.example.com"):
        assert not re.fullmatch(pattern, bad), bad


def test_http_api_cors_throttling_and_access_logs() -> None:
    overrides = {**REQUIRED, "CorsAllowedOrigins": "https://shop.example.com,https://admin.example.com"}
    stack = Resolved(overrides)
    # SAM writes the CORS settings into the API definition at transform time
    cors = stack.props("HttpApi")["Body"]["x-amazon-apigateway-cors"]
    assert cors["allowOrigins"] == ["https://shop.example.com", "https://admin.example.com"]
    assert set(cors["allowMethods"]) == {"GET", "OPTIONS"}
    assert cors["exposeHeaders"] == ["Retry-After"]  # a page can read a 503's Retry-After
    assert {h.lower() for h in cors["allowHeaders"]} >= {"authorization"}
    stage = stack.props("HttpApiApiGatewayDefaultStage")
    throttling = {k: int(v) for k, v in stage["DefaultRouteSettings"].items()}
    assert throttling == {"ThrottlingRateLimit": 200, "ThrottlingBurstLimit": 400}
    routes = {key: {k: int(v) for k, v in value.items()} for key, value in stage["RouteSettings"].items()}
    assert routes == {
        "GET /orders/{orderId}": {"ThrottlingRateLimit": 20, "ThrottlingBurstLimit": 40},
        "GET /admin/stats": {"ThrottlingRateLimit": 5, "ThrottlingBurstLimit": 10},
    }
    paths = stack.props("HttpApi")["Body"]["paths"]
    assert {f"GET {path}" for path in paths} >= set(routes)  # each throttled route exists
    assert stage["AccessLogSettings"]["DestinationArn"] == get_att("ApiAccessLogGroup", "Arn")
    fields = json.loads(stage["AccessLogSettings"]["Format"])
    assert {"requestId", "status", "routeKey", "integrationError"} <= set(fields)
    assert not any(name.startswith("CORS") for name in stack.props("ApiFunction")["Environment"]["Variables"])
    # no origins: API Gateway answers no preflight and sets no CORS header
    closed = Resolved({**REQUIRED, "CorsAllowedOrigins": ""})
    assert "x-amazon-apigateway-cors" not in closed.props("HttpApi")["Body"]


def test_orders_and_the_operator_route_need_a_token_and_the_rest_is_public() -> None:
    stack = Resolved({**REQUIRED, "AdminScope": "shop-api/ops"})
    body = stack.props("HttpApi")["Body"]
    scheme = body["components"]["securitySchemes"]["OidcAuthorizer"]["x-amazon-apigateway-authorizer"]
    assert scheme["type"] == "jwt"
    assert scheme["identitySource"] == "$request.header.Authorization"
    assert scheme["jwtConfiguration"] == {"issuer": REQUIRED["JwtIssuer"], "audience": [REQUIRED["JwtAudience"]]}
    security = {
        f"{method.upper()} {path}": operation.get("security")
        for path, methods in body["paths"].items()
        for method, operation in methods.items()
    }
    assert security.pop("GET /orders/{orderId}") == [{"OidcAuthorizer": []}]
    assert security.pop("GET /admin/stats") == [{"OidcAuthorizer": ["shop-api/ops"]}]
    assert security and all(value is None for value in security.values()), security  # products, inventory...


def test_the_authorizer_parameters_refuse_what_api_gateway_would() -> None:
    parameters = load()["Parameters"]
    issuer, audience = parameters["JwtIssuer"]["AllowedPattern"], parameters["JwtAudience"]["AllowedPattern"]
    assert re.fullmatch(issuer, REQUIRED["JwtIssuer"]) and re.fullmatch(issuer, "https://login.example.com/")
    for bad in ("", "http://idp.example.com", "https://idp.example.com /x"):
        assert not re.fullmatch(issuer, bad), bad
    assert re.fullmatch(audience, REQUIRED["JwtAudience"])
    assert not re.fullmatch(audience, "") and not re.fullmatch(audience, "a,b")


def test_the_order_ownership_rule_reaches_the_api_function_and_its_pattern_matches_the_settings() -> None:
    defaults = Resolved(REQUIRED).props("ApiFunction")["Environment"]["Variables"]
    assert (defaults["ORDER_OWNER_FIELD"], defaults["ORDER_OWNER_CLAIM"], defaults["STAFF_SCOPE"]) == (
        "",
        "sub",
        "cachesync/staff",
    )  # no rule: staff only
    rule = {"OrderOwnerField": "customer.id", "OrderOwnerClaim": "custom:customer_id", "StaffScope": "shop/cs"}
    variables = Resolved({**REQUIRED, **rule}).props("ApiFunction")["Environment"]["Variables"]
    assert (variables["ORDER_OWNER_FIELD"], variables["ORDER_OWNER_CLAIM"], variables["STAFF_SCOPE"]) == tuple(
        rule.values()
    )
    pattern = load()["Parameters"]["OrderOwnerField"]["AllowedPattern"]
    for field in ("", "customerid", "customer.id", "a.b.c", "custom:owner"):
        assert re.fullmatch(pattern, field), field
        Settings.from_env({"ORDER_OWNER_FIELD": field})
    for field in ("customer..id", ".id", "id.", "customer id"):
        assert not re.fullmatch(pattern, field), field
        with pytest.raises(ConfigError):
            Settings.from_env({"ORDER_OWNER_FIELD": field})


# ---------------------------------------------------------------------- IAM
# Actions AWS offers no resource-level permissions for (or documents only with "*").
STAR_ALLOWED = {
    "ec2:CreateNetworkInterface",
    "ec2:DescribeNetworkInterfaces",
    "ec2:DescribeSubnets",
    "ec2:DeleteNetworkInterface",
    "ec2:AssignPrivateIpAddresses",
    "ec2:UnassignPrivateIpAddresses",
    "xray:PutTraceSegments",
    "xray:PutTelemetryRecords",
}


def _statements(stack: Resolved) -> dict[str, list[dict[str, Any]]]:
    found: dict[str, list[dict[str, Any]]] = {}
    for name, resource in stack.resources.items():
        props = resource.get("Properties", {})
        if resource["Type"] == "AWS::IAM::Role":
            # only the stack's own managed policies, checked below like the inline ones
            own = [arn for arn in props.get("ManagedPolicyArns", []) if arn.get("Ref") in stack.resources]
            assert own == props.get("ManagedPolicyArns", []), f"{name} has managed policies from outside the stack"
            found[name] = [s for p in props.get("Policies", []) for s in p["PolicyDocument"]["Statement"]]
            for attached in own:  # what the role's own managed policies grant, it grants
                found[name] += stack.props(attached["Ref"])["PolicyDocument"]["Statement"]
        elif resource["Type"] in ("AWS::IAM::Policy", "AWS::IAM::ManagedPolicy"):
            found[name] = props["PolicyDocument"]["Statement"]
    return found


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def test_iam_has_no_wildcard_resources_except_where_aws_requires(
    scenario: tuple[str, dict[str, str], Resolved],
) -> None:
    _, _, stack = scenario
    statements = _statements(stack)
    assert set(statements) == {"IngestFunctionRole", "ApiFunctionRole", "FunctionNetworkPolicy"}
    for role, items in statements.items():
        for statement in items:
            assert statement["Effect"] == "Allow"
            actions = set(_as_list(statement["Action"]))
            assert not any(a.endswith("*") for a in actions), f"{role}: wildcard action in {statement}"
            if "*" in _as_list(statement["Resource"]):
                assert actions <= STAR_ALLOWED, f"{role}: Resource '*' for {actions - STAR_ALLOWED}"


def test_every_wildcard_resource_is_commented_in_the_template() -> None:
    lines = source_text().splitlines()
    stars = [i for i, line in enumerate(lines) if re.search(r'Resource: "\*"', line)]
    assert stars, "the VPC and X-Ray statements need Resource '*'"
    for i in stars:
        statement_start = max(j for j in range(i) if lines[j].lstrip().startswith("- Sid:"))
        comment_window = lines[max(0, statement_start - 3) : i]
        assert any(line.lstrip().startswith("#") for line in comment_window), (
            f"line {i + 1}: Resource '*' without a comment"
        )


def _grants(stack: Resolved, role: str) -> dict[str, list[Any]]:
    """action -> resources granted by the role."""
    grants: dict[str, list[Any]] = {}
    for statement in _statements(stack)[role]:
        for action in _as_list(statement["Action"]):
            grants.setdefault(action, []).extend(_as_list(statement["Resource"]))
    return grants


def test_each_function_gets_only_what_it_calls(scenario: tuple[str, dict[str, str], Resolved]) -> None:
    _, overrides, stack = scenario
    ingest, api = _grants(stack, "IngestFunctionRole"), _grants(stack, "ApiFunctionRole")

    queues = [get_att("DeadLetterQueue", "Arn")]
    if may_skip(overrides):
        queues.append(get_att("MappingFailureQueue", "Arn"))
    assert sorted(map(json.dumps, ingest["sqs:SendMessage"])) == sorted(map(json.dumps, queues))
    assert "sqs:SendMessage" not in api

    # each function reads only its own cache secret (password mode), the mappings the Kafka one
    secrets = [given(overrides, "KafkaSecretArn")]
    if given(overrides, "CacheAuthMode") == "password":
        secrets.append(given(overrides, "CacheAuthSecretArn"))
        api_secret = given(overrides, "ApiCacheAuthSecretArn") or given(overrides, "CacheAuthSecretArn")
        assert api["secretsmanager:GetSecretValue"] == [api_secret]
    else:
        assert "secretsmanager:GetSecretValue" not in api
    assert sorted(ingest["secretsmanager:GetSecretValue"]) == sorted(secrets)

    if given(overrides, "KafkaSecretKmsKeyArn"):
        assert ingest["kms:Decrypt"] == [given(overrides, "KafkaSecretKmsKeyArn")]
    else:
        assert "kms:Decrypt" not in ingest
    assert "kms:Decrypt" not in api

    assert ingest["logs:PutLogEvents"] == [get_att("IngestLogGroup", "Arn")]
    assert api["logs:PutLogEvents"] == [get_att("ApiLogGroup", "Arn")]
    assert stack.props("IngestFunction")["LoggingConfig"] == {"LogGroup": ref("IngestLogGroup")}
    assert stack.props("ApiFunction")["LoggingConfig"] == {"LogGroup": ref("ApiLogGroup")}


def _connect_resources(overrides: dict[str, str], function: str) -> list[Any]:
    """The two ARNs a function may connect with in IAM mode: the cache and its own user."""
    arn = "arn:aws:elasticache:us-east-1:123456789012"
    if given(overrides, "RedisUrl"):
        cache = f"{arn}:{given(overrides, 'ExistingCacheKind')}:{given(overrides, 'ExistingCacheName')}"
        user = f"{arn}:user:{given(overrides, EXISTING_USER_PARAMETERS[function])}"
        return [cache, user]
    return [
        {"Fn::Sub": f"{arn}:serverlesscache:${{Cache}}"},
        {"Fn::Sub": f"{arn}:user:${{{CACHE_USERS[function]}}}"},
    ]


def test_iam_auth_connects_each_function_as_its_own_user_only(
    scenario: tuple[str, dict[str, str], Resolved],
) -> None:
    _, overrides, stack = scenario
    roles = {"IngestFunction": "IngestFunctionRole", "ApiFunction": "ApiFunctionRole"}
    for function, role in roles.items():
        connects = [s for s in _statements(stack)[role] if "elasticache:Connect" in _as_list(s["Action"])]
        if given(overrides, "CacheAuthMode") != "iam":
            assert connects == [], f"{role} may connect with IAM outside iam mode"
            continue
        (statement,) = connects
        assert statement["Effect"] == "Allow" and _as_list(statement["Action"]) == ["elasticache:Connect"]
        assert "Condition" not in statement
        resources = _as_list(statement["Resource"])
        expected = _connect_resources(overrides, function)
        if function == "IngestFunction" and not given(overrides, "RedisUrl"):
            # the role the maintenance functions share, as their own user on a stack-created cache
            expected.append({"Fn::Sub": "arn:aws:elasticache:us-east-1:123456789012:user:${MaintenanceCacheUser}"})
        assert resources == expected, role
        assert not any("*" in json.dumps(r) for r in resources), f"{role}: a wildcard in {resources}"
        # the other function's user is not among them
        other = next(f for f in roles if f != function)
        assert _connect_resources(overrides, other)[1] not in resources


# ---------------------------------------------------------------------- network
def _ingress_rules(stack: Resolved) -> list[tuple[str, dict[str, Any]]]:
    rules = [(name, r["Properties"]) for name, r in stack.of_type("AWS::EC2::SecurityGroupIngress").items()]
    for name, group in stack.of_type("AWS::EC2::SecurityGroup").items():
        for rule in group["Properties"].get("SecurityGroupIngress", []):
            rules.append((name, {**rule, "GroupId": ref(name)}))
    return rules


def test_cache_admits_only_the_function_group(scenario: tuple[str, dict[str, str], Resolved]) -> None:
    _, overrides, stack = scenario
    existing = bool(given(overrides, "RedisUrl"))
    cache_group: Any = given(overrides, "ExistingCacheSecurityGroupId") if existing else ref("CacheSecurityGroup")
    ports = (int(given(overrides, "ExistingCachePort")),) * 2 if existing else (6379, 6380)

    rules = _ingress_rules(stack)
    for name, rule in rules:
        assert "CidrIp" not in rule and "CidrIpv6" not in rule, f"{name} admits an address range"
        assert rule["SourceSecurityGroupId"] == ref("FunctionSecurityGroup"), f"{name} admits another source"
    into_cache = [rule for _, rule in rules if rule["GroupId"] == cache_group]
    assert len(into_cache) == 1
    assert (int(into_cache[0]["FromPort"]), int(into_cache[0]["ToPort"])) == ports
    assert into_cache[0]["IpProtocol"] == "tcp"

    if existing:
        assert "Cache" not in stack.resources and "CacheSecurityGroup" not in stack.resources
    else:
        cache = stack.props("Cache")
        assert cache["Engine"] == "valkey"
        assert cache["SecurityGroupIds"] == [ref("CacheSecurityGroup")]
        assert stack.props("CacheSecurityGroup")["SecurityGroupEgress"] == [
            {
                "Description": "no outbound traffic (replaces the default allow-all rule)",
                "IpProtocol": "-1",
                "CidrIp": "127.0.0.1/32",
            }
        ]


# ---------------------------------------------------------------------- cache authentication
def test_cache_users_and_group_only_for_iam_on_the_stacks_cache(
    scenario: tuple[str, dict[str, str], Resolved],
) -> None:
    _, overrides, stack = scenario
    users = stack.of_type("AWS::ElastiCache::User")
    groups = stack.of_type("AWS::ElastiCache::UserGroup")
    created_cache = not given(overrides, "RedisUrl")
    if not (created_cache and given(overrides, "CacheAuthMode") == "iam"):
        assert users == {} and groups == {}
        if created_cache:
            attached = stack.props("Cache").get("UserGroupId")
            if given(overrides, "CacheAuthMode") == "password" and given(overrides, "CacheUserGroupId"):
                assert attached == given(overrides, "CacheUserGroupId")
            else:
                assert attached is None
        return

    assert set(users) == {"IngestCacheUser", "ApiCacheUser", "MaintenanceCacheUser", "DefaultCacheUser"}
    assert set(groups) == {"CacheUserGroup"}
    assert stack.props("Cache")["UserGroupId"] == ref("CacheUserGroup")
    group = stack.props("CacheUserGroup")
    assert sorted(map(json.dumps, group["UserIds"])) == sorted(json.dumps(ref(name)) for name in users)
    assert {u["Properties"]["Engine"] for u in users.values()} == {group["Engine"]}
    ids = [json.dumps(u["Properties"]["UserId"]) for u in users.values()]
    assert len(set(ids)) == len(users), "user ids are unique per account and region"
    assert all("${Suffix}" in i for i in ids), "ids carry the stack's suffix"

    for name in ("IngestCacheUser", "ApiCacheUser"):
        props = stack.props(name)
        assert props["AuthenticationMode"] == {"Type": "iam"}
        assert props["UserName"] == props["UserId"], "an IAM-enabled user's name must equal its id"
        assert props["AccessString"].startswith("on ") and "-@all" in props["AccessString"]
        assert "Passwords" not in props and "NoPasswordRequired" not in props

    # every user group needs a user named default: this one can do nothing at all
    default = stack.props("DefaultCacheUser")
    assert default["UserName"] == "default"
    assert default["AccessString"].split() == ["off", "-@all"]


def _template_environment(stack: Resolved, function: str) -> dict[str, str]:
    """A function's environment as Lambda would see it, placeholders for deploy-time values."""
    placeholders = {
        "REDIS_URL": "rediss://cachesync-0a1b2c3d.serverless.use1.cache.amazonaws.com:6379",
        "DLQ_QUEUE_URL": "https://sqs.us-east-1.amazonaws.com/123456789012/cachesync-DeadLetterQueue",
        "REDIS_IAM_CACHE_NAME": "cachesync-0a1b2c3d",
        "REDIS_USERNAME": f"cachesync-0a1b2c3d-{function}",
    }
    variables = stack.props(function)["Environment"]["Variables"]
    env = {k: v if isinstance(v, str) else placeholders[k] for k, v in variables.items()}
    return {**env, "AWS_REGION": "us-east-1"}


def test_created_users_access_strings_are_what_devkit_acl_makes() -> None:
    """One source of truth: the template's access strings are devkit.acl's, for the
    settings the template gives each function (cluster client, dead letters in SQS)."""
    from cachesync.config import Settings
    from devkit import acl

    stack = Resolved(SCENARIOS["iam-new-cache"])
    rules = {"IngestFunction": acl.ingest_rule, "ApiFunction": acl.api_rule}
    for function, user in CACHE_USERS.items():
        settings = Settings.from_env(_template_environment(stack, function))
        assert settings.iam_auth and settings.cluster and settings.tls
        assert stack.props(user)["AccessString"] == rules[function](settings).access_string(), user
    maintenance = stack.props("MaintenanceCacheUser")["AccessString"]
    settings = Settings.from_env(_template_environment(stack, "IngestFunction"))
    assert maintenance == acl.maintenance_rule(settings).access_string()
    assert stack.props("MaintenanceFunction")["Environment"]["Variables"]["REDIS_USERNAME"] == ref(
        "MaintenanceCacheUser"
    )
    # the API user reads; only the ingest user writes or touches the offsets
    api = stack.props("ApiCacheUser")["AccessString"].split()
    assert not {"+set", "+del", "+hset", "+zadd", "+zincrby", "+xadd", "+script|load"} & set(api)
    assert not any("offsets" in rule for rule in api)


@pytest.mark.parametrize("name", sorted(n for n, o in SCENARIOS.items() if o.get("CacheAuthMode") == "iam"))
def test_iam_mode_environment_configures_the_token_provider(name: str) -> None:
    """What the functions' environment makes of cachesync's IAM credential provider."""
    from cachesync.config import Settings
    from cachesync.iam_auth import provider_for

    overrides = SCENARIOS[name]
    stack = Resolved(overrides)
    for function in FUNCTIONS:
        settings = Settings.from_env(_template_environment(stack, function))
        provider = provider_for(settings)
        assert provider.serverless == (expected_cache_auth(overrides, function)["REDIS_IAM_SERVERLESS"] == "true")
        assert settings.redis_secret_arn is None


def test_function_egress_is_limited(scenario: tuple[str, dict[str, str], Resolved]) -> None:
    _, overrides, stack = scenario
    group = stack.props("FunctionSecurityGroup")
    inline = group["SecurityGroupEgress"]
    assert len(inline) == 1  # listing a rule removes the default allow-all egress
    extra = {name: r["Properties"] for name, r in stack.of_type("AWS::EC2::SecurityGroupEgress").items()}
    assert all(rule["GroupId"] == ref("FunctionSecurityGroup") for rule in extra.values())
    open_https = [rule for rule in [*inline, *extra.values()] if rule.get("CidrIp") == "0.0.0.0/0"]
    uses_own_endpoints = given(overrides, "ExistingVpcId") == "" or given(overrides, "CreateVpcEndpoints") == "true"
    if uses_own_endpoints:
        assert not open_https, "with the stack's endpoints nothing leaves the VPC"
        assert extra["FunctionEgressToEndpoints"]["DestinationSecurityGroupId"] == ref("EndpointSecurityGroup")
    else:
        assert [(r["FromPort"], r["ToPort"]) for r in open_https] == [(443, 443)]


def test_interface_endpoints_cover_what_the_functions_call(scenario: tuple[str, dict[str, str], Resolved]) -> None:
    _, overrides, stack = scenario
    endpoints = {
        r["Properties"]["ServiceName"]: r["Properties"] for r in stack.of_type("AWS::EC2::VPCEndpoint").values()
    }
    uses_own_endpoints = given(overrides, "ExistingVpcId") == "" or given(overrides, "CreateVpcEndpoints") == "true"
    expected = set()
    if uses_own_endpoints:
        expected.add("com.amazonaws.us-east-1.sqs")  # dead letters (and on-failure records)
        if given(overrides, "CacheAuthSecretArn"):
            expected.add("com.amazonaws.us-east-1.secretsmanager")  # the cache's ACL secret
    assert set(endpoints) == expected
    for props in endpoints.values():
        assert props["VpcEndpointType"] == "Interface"
        assert props["PrivateDnsEnabled"] is True
        assert props["SecurityGroupIds"] == [ref("EndpointSecurityGroup")]
        assert props["SubnetIds"] == stack.props("IngestFunction")["VpcConfig"]["SubnetIds"]
        if given(overrides, "ExistingVpcId") == "":
            # in the stack's own VPC the endpoints serve only this stack's resources
            assert all("*" not in _as_list(s["Resource"]) for s in props["PolicyDocument"]["Statement"])


# ---------------------------------------------------------------------- queues, alarms, outputs
def test_queues_are_encrypted_and_tls_only(scenario: tuple[str, dict[str, str], Resolved]) -> None:
    _, _, stack = scenario
    queues = stack.of_type("AWS::SQS::Queue")
    assert "DeadLetterQueue" in queues
    for name, queue in queues.items():
        assert queue["Properties"]["SqsManagedSseEnabled"] is True, name
        policy = stack.props(f"{name}Policy")
        assert policy["Queues"] == [ref(name)]
        (deny,) = policy["PolicyDocument"]["Statement"]
        assert deny["Effect"] == "Deny" and deny["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}


def test_alarms(scenario: tuple[str, dict[str, str], Resolved]) -> None:
    _, overrides, stack = scenario
    alarms = stack.of_type("AWS::CloudWatch::Alarm")
    metrics = {
        (a["Properties"]["Namespace"], a["Properties"]["MetricName"])
        for a in alarms.values()
        if "Namespace" in a["Properties"]
    }
    # records arriving and all of them skipped: applied == 0 while duplicates > 0, 5-minute sums
    everything_skipped = stack.props("AllSkippedAlarm")
    queries = {m["Id"]: m for m in everything_skipped["Metrics"]}
    assert queries["allskipped"]["Expression"] == "IF(skipped > 0 AND applied == 0, 1, 0)"
    assert queries["applied"]["MetricStat"]["Metric"]["MetricName"] == "RecordsApplied"
    assert queries["skipped"]["MetricStat"]["Metric"]["MetricName"] == "DuplicatesSkipped"
    if may_skip(overrides):  # skipped batches: sent to the queue, taken by a function
        assert ("AWS/SQS", "NumberOfMessagesSent") in metrics
        failures = stack.resources["MappingFailuresFunctionSkippedBatches"]["Properties"]
        assert failures["EventSourceArn"] == {"Fn::GetAtt": ["MappingFailureQueue", "Arn"]}
    assert {
        ("AWS/Lambda", "Errors"),
        ("AWS/SQS", "ApproximateNumberOfMessagesVisible"),
        ("AWS/Lambda", "OffsetLag"),
        ("AWS/ApiGateway", "5xx"),
    } <= metrics
    lag = stack.props("OffsetLagAlarm")
    assert lag["Dimensions"] == [{"Name": "FunctionName", "Value": ref("IngestFunction")}]
    assert lag["Threshold"] == given(overrides, "OffsetLagAlarmThreshold")
    email = given(overrides, "AlarmEmail")
    assert ("AlarmTopic" in stack.resources) == bool(email)
    for name, alarm in alarms.items():
        if email:
            assert alarm["Properties"]["AlarmActions"] == [ref("AlarmTopic")], name
        else:
            assert "AlarmActions" not in alarm["Properties"], name
    if email:
        assert stack.props("AlarmTopic")["Subscription"] == [{"Protocol": "email", "Endpoint": email}]


def test_outputs(scenario: tuple[str, dict[str, str], Resolved]) -> None:
    _, overrides, stack = scenario
    assert {"ApiUrl", "CacheEndpoint", "DeadLetterQueueUrl", "IngestFunctionName", "ApiFunctionName"} <= set(
        stack.outputs
    )
    assert stack.outputs["DeadLetterQueueUrl"]["Value"] == ref("DeadLetterQueue")
    assert ("MappingFailureQueueUrl" in stack.outputs) == may_skip(overrides)


# ---------------------------------------------------------------------- parameters
def _referenced_names(node: Any) -> set[str]:
    names: set[str] = set()
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "Ref" and isinstance(value, str):
                names.add(value)
            elif key == "Fn::Sub":
                text = value if isinstance(value, str) else value[0]
                names |= set(re.findall(r"\$\{([^}.!]+)", text))
                names |= _referenced_names(value)
            else:
                names |= _referenced_names(value)
    elif isinstance(node, list):
        for item in node:
            names |= _referenced_names(item)
    return names


def test_every_parameter_is_used_and_described() -> None:
    template = load()
    # Rules and Metadata do not count: a parameter must reach a resource, condition or output
    used = _referenced_names({k: template.get(k) for k in ("Globals", "Conditions", "Resources", "Outputs")})
    parameters = template["Parameters"]
    assert set(parameters) - used == set()
    for name, spec in parameters.items():
        assert len(spec.get("Description", "")) >= 20, f"{name} needs a description"
    grouped = {
        p for g in template["Metadata"]["AWS::CloudFormation::Interface"]["ParameterGroups"] for p in g["Parameters"]
    }
    assert grouped == set(parameters)


def test_only_the_kafka_values_lack_defaults() -> None:
    parameters = load()["Parameters"]
    assert {name for name, spec in parameters.items() if "Default" not in spec} == set(REQUIRED)


def _rule_value(node: Any, values: dict[str, Any]) -> Any:
    if isinstance(node, dict):
        ((function, args),) = node.items()
        if function == "Ref":
            return values[args]
        if function == "Fn::Equals":
            return _rule_value(args[0], values) == _rule_value(args[1], values)
        if function == "Fn::Not":
            return not _rule_value(args[0], values)
        if function == "Fn::And":
            return all(_rule_value(arg, values) for arg in args)
        if function == "Fn::Or":
            return any(_rule_value(arg, values) for arg in args)
        if function == "Fn::Contains":
            return _rule_value(args[1], values) in _rule_value(args[0], values)
        raise AssertionError(f"rule function {function} not evaluated here")
    return node


def broken_rules(overrides: dict[str, str]) -> list[str]:
    """The AssertDescriptions CloudFormation would fail the deployment with."""
    values = parameter_values(overrides)
    failures = []
    for rule in load()["Rules"].values():
        if "RuleCondition" in rule and not _rule_value(rule["RuleCondition"], values):
            continue
        failures += [a["AssertDescription"] for a in rule["Assertions"] if not _rule_value(a["Assert"], values)]
    return failures


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_rules_accept_complete_configurations(name: str) -> None:
    assert broken_rules(SCENARIOS[name]) == []


@pytest.mark.parametrize(
    ("overrides", "complaint"),
    [
        ({"RedisUrl": "rediss://cache.example:6379"}, "needs ExistingVpcId"),
        (
            {
                "RedisUrl": "rediss://cache.example:6379",
                "ExistingVpcId": "vpc-0123456789abcdef0",
                "ExistingSubnetIds": "subnet-0aaaaaaaaaaaaaaa1,subnet-0bbbbbbbbbbbbbbb2",
            },
            "needs ExistingCacheSecurityGroupId",
        ),
        ({"ExistingVpcId": "vpc-0123456789abcdef0"}, "ExistingVpcId needs ExistingSubnetIds"),
        ({"ExistingSubnetIds": "subnet-0aaaaaaaaaaaaaaa1"}, "ExistingSubnetIds needs ExistingVpcId"),
    ],
)
def test_rules_reject_half_configured_networks(overrides: dict[str, str], complaint: str) -> None:
    failures = broken_rules({**REQUIRED, **overrides})
    assert any(complaint in failure for failure in failures), failures


EXISTING_IAM_CACHE = {
    "RedisUrl": "rediss://master.shop-cache.abc123.use1.cache.amazonaws.com:6379",
    "ExistingVpcId": "vpc-0123456789abcdef0",
    "ExistingSubnetIds": "subnet-0aaaaaaaaaaaaaaa1,subnet-0bbbbbbbbbbbbbbb2",
    "ExistingCacheSecurityGroupId": "sg-0123456789abcdef0",
    "CacheAuthMode": "iam",
}
EXISTING_IAM_USERS = {
    "ExistingCacheName": "shop-cache",
    "ExistingCacheKind": "replicationgroup",
    "ExistingCacheIngestUserId": "cachesync-ingest",
    "ExistingCacheApiUserId": "cachesync-api",
}


@pytest.mark.parametrize(
    ("overrides", "complaint"),
    [
        # password mode without its secret, or a second secret equal to the first
        ({"CacheAuthMode": "password"}, "CacheAuthMode=password needs CacheAuthSecretArn"),
        (
            {"CacheAuthMode": "password", "CacheAuthSecretArn": CACHE_SECRET, "ApiCacheAuthSecretArn": CACHE_SECRET},
            "ApiCacheAuthSecretArn is for a second user",
        ),
        # a secret for the stack's cache, whose users only a user group can bring
        (
            {"CacheAuthMode": "password", "CacheAuthSecretArn": CACHE_SECRET},
            "with the stack-created cache needs CacheUserGroupId",
        ),
        (
            {
                **EXISTING_IAM_CACHE,
                "CacheAuthMode": "password",
                "CacheAuthSecretArn": CACHE_SECRET,
                "CacheUserGroupId": "my-users",
            },
            "attached to a stack-created cache only",
        ),
        # password settings outside password mode (they would be ignored, or worse, half used)
        ({"CacheAuthSecretArn": CACHE_SECRET}, "are for CacheAuthMode=password"),
        ({"CacheUsername": "cachesync"}, "are for CacheAuthMode=password"),
        ({"CacheAuthMode": "iam", "CacheUserGroupId": "my-users"}, "are for CacheAuthMode=password"),
        ({"CacheAuthMode": "iam", "ApiCacheAuthSecretArn": API_CACHE_SECRET}, "are for CacheAuthMode=password"),
        # iam mode on an existing cache without its name, kind or users
        (EXISTING_IAM_CACHE, "needs ExistingCacheName"),
        ({**EXISTING_IAM_CACHE, **EXISTING_IAM_USERS, "ExistingCacheKind": ""}, "needs ExistingCacheKind"),
        (
            {**EXISTING_IAM_CACHE, **EXISTING_IAM_USERS, "ExistingCacheApiUserId": ""},
            "needs ExistingCacheIngestUserId and ExistingCacheApiUserId",
        ),
        (
            {**EXISTING_IAM_CACHE, **EXISTING_IAM_USERS, "ExistingCacheApiUserId": "cachesync-ingest"},
            "must be two users",
        ),
        # existing-cache IAM settings where they would be ignored
        ({"CacheAuthMode": "iam", **EXISTING_IAM_USERS}, "a stack-created cache gets its own users"),
        (
            {**EXISTING_IAM_CACHE, **EXISTING_IAM_USERS, "CacheAuthMode": "none"},
            "are for CacheAuthMode=iam with an existing cache",
        ),
        ({"ExistingCacheName": "shop-cache"}, "are for CacheAuthMode=iam with an existing cache"),
    ],
)
def test_rules_reject_half_configured_cache_auth(overrides: dict[str, str], complaint: str) -> None:
    failures = broken_rules({**REQUIRED, **overrides})
    assert any(complaint in failure for failure in failures), failures


def test_rules_accept_each_cache_auth_mode() -> None:
    assert broken_rules(REQUIRED) == []
    assert broken_rules(SCENARIOS["existing-vpc-new-cache"]) == []  # password, a user group, two secrets
    assert broken_rules(SCENARIOS["existing-everything"]) == []  # password on an existing cache
    assert broken_rules({**REQUIRED, "CacheAuthMode": "iam"}) == []
    assert broken_rules({**REQUIRED, **EXISTING_IAM_CACHE, **EXISTING_IAM_USERS}) == []
    assert (
        broken_rules({**REQUIRED, **EXISTING_IAM_CACHE, **EXISTING_IAM_USERS, "ExistingCacheKind": "serverlesscache"})
        == []
    )


def test_existing_serverless_cache_in_iam_mode() -> None:
    overrides = {**REQUIRED, **EXISTING_IAM_CACHE, **EXISTING_IAM_USERS, "ExistingCacheKind": "serverlesscache"}
    stack = Resolved(overrides)
    for function in FUNCTIONS:
        variables = stack.props(function)["Environment"]["Variables"]
        assert variables["REDIS_IAM_SERVERLESS"] == "true"
        assert variables["REDIS_IAM_CACHE_NAME"] == "shop-cache"
    (connect,) = [s for s in _statements(stack)["ApiFunctionRole"] if s["Action"] == "elasticache:Connect"]
    assert connect["Resource"] == [
        "arn:aws:elasticache:us-east-1:123456789012:serverlesscache:shop-cache",
        "arn:aws:elasticache:us-east-1:123456789012:user:cachesync-api",
    ]


def test_rules_guard_half_configured_networks() -> None:
    rules = load()["Rules"]
    text = json.dumps(rules)
    assert {"ExistingCacheNeedsItsNetwork", "ExistingVpcNeedsSubnets", "ExistingSubnetsNeedTheirVpc"} <= set(rules)
    assert {
        "PasswordAuthNeedsSecret",
        "PasswordAuthOnStackCacheNeedsUserGroup",
        "ExistingCacheTakesNoUserGroup",
        "PasswordSettingsNeedPasswordAuth",
        "IamAuthOnExistingCacheNeedsItsUsers",
        "ExistingCacheIamSettingsNeedIamAuth",
    } <= set(rules)
    assert "ExistingCacheSecurityGroupId" in text
    # the transform keeps them, so CloudFormation enforces them at deploy time
    assert transform(REQUIRED)["Rules"] == rules


def test_translated_template_has_no_sam_leftovers() -> None:
    resources = transform(REQUIRED)["Resources"]
    assert not [n for n, r in resources.items() if r["Type"].startswith("AWS::Serverless::")]


def test_sam_kafka_event_cannot_take_the_auth_type_from_a_parameter() -> None:
    """Why the mappings are plain AWS::Lambda::EventSourceMapping resources.

    SAM's `SelfManagedKafka` event checks the authentication type while it
    transforms, so a `Ref` to a parameter (needed for BASIC_AUTH / SCRAM to be a
    deploy-time choice) is refused. Should SAM accept it one day, this fails and
    the mappings can become events of IngestFunction.
    """
    from samtranslator.model.exceptions import InvalidDocumentException
    from samtranslator.translator.transform import transform as sam_transform

    template = {
        "Transform": "AWS::Serverless-2016-10-31",
        "Parameters": {"Auth": {"Type": "String", "Default": "BASIC_AUTH"}},
        "Resources": {
            "Fn": {
                "Type": "AWS::Serverless::Function",
                "Properties": {
                    "CodeUri": "s3://bucket/code.zip",
                    "Handler": "app.handler",
                    "Runtime": "python3.13",
                    "Events": {
                        "Orders": {
                            "Type": "SelfManagedKafka",
                            "Properties": {
                                "KafkaBootstrapServers": ["broker:9092"],
                                "Topics": ["orders"],
                                "SourceAccessConfigurations": [
                                    {"Type": {"Ref": "Auth"}, "URI": REQUIRED["KafkaSecretArn"]}
                                ],
                            },
                        }
                    },
                },
            }
        },
    }
    loader = MagicMock()
    loader.load.return_value = {}
    with pytest.raises(InvalidDocumentException, match="SourceAccessConfigurations Type"):
        sam_transform(template, {"Auth": "BASIC_AUTH"}, loader)


def test_skipped_records_can_be_kept_in_a_topic_that_marks_the_divergence() -> None:
    """Provisioned mode with bounded retries and SkippedBatchesTopic: Lambda's Kafka on-failure
    destination keeps the records, and a mapping of that topic hands them to MappingFailuresFunction."""
    bounded = {**REQUIRED, "PollerMode": "PROVISIONED", "KafkaMaximumRetryAttempts": "3"}
    stack = Resolved({**bounded, "SkippedBatchesTopic": "cachesync-skipped"})
    for name in MAPPINGS.values():
        assert stack.props(name)["DestinationConfig"] == {"OnFailure": {"Destination": "kafka://cachesync-skipped"}}
    skipped = stack.props("SkippedBatchesMapping")
    assert skipped["FunctionName"] == ref("MappingFailuresFunction") and skipped["Topics"] == ["cachesync-skipped"]
    assert skipped["StartingPosition"] == "TRIM_HORIZON"
    # without the topic (or on demand) there is no such mapping, and the queue takes the coordinates
    assert "SkippedBatchesMapping" not in Resolved(bounded).resources
    queue = Resolved(bounded).props("OrdersMapping")["DestinationConfig"]
    assert queue == {"OnFailure": {"Destination": {"Fn::GetAtt": ["MappingFailureQueue", "Arn"]}}}


def test_optional_pages_hosting_is_a_private_bucket_behind_cloudfront() -> None:
    pages = ("PagesBucket", "PagesBucketPolicy", "PagesOriginAccessControl", "PagesDistribution")
    off = Resolved(REQUIRED)
    assert not set(pages) & set(off.resources) and "PagesUrl" not in off.outputs
    stack = Resolved({**REQUIRED, "CreatePagesHosting": "true"})
    assert set(pages) <= set(stack.resources) and {"PagesUrl", "PagesBucketName"} <= set(stack.outputs)
    bucket = stack.props("PagesBucket")
    assert bucket["PublicAccessBlockConfiguration"] == dict.fromkeys(  # never public itself
        ("BlockPublicAcls", "BlockPublicPolicy", "IgnorePublicAcls", "RestrictPublicBuckets"), True
    )
    assert bucket["OwnershipControls"]["Rules"] == [{"ObjectOwnership": "BucketOwnerEnforced"}]
    statements = stack.props("PagesBucketPolicy")["PolicyDocument"]["Statement"]
    (read,) = [s for s in statements if s["Effect"] == "Allow"]
    assert read["Principal"] == {"Service": "cloudfront.amazonaws.com"} and read["Action"] == "s3:GetObject"
    assert "PagesDistribution" in json.dumps(read["Condition"]["StringEquals"]["AWS:SourceArn"])  # this one only
    assert any(s["Effect"] == "Deny" and s["Condition"]["Bool"]["aws:SecureTransport"] == "false" for s in statements)
    access = stack.props("PagesOriginAccessControl")["OriginAccessControlConfig"]
    assert (access["OriginAccessControlOriginType"], access["SigningBehavior"]) == ("s3", "always")
    config = stack.props("PagesDistribution")["DistributionConfig"]
    (origin,) = config["Origins"]
    assert origin["OriginAccessControlId"] == get_att("PagesOriginAccessControl", "Id")
    assert config["DefaultCacheBehavior"]["ViewerProtocolPolicy"] == "redirect-to-https"
    assert config["DefaultRootObject"] == "index.html"
    assert (ROOT / "web" / "index.html").is_file() and (ROOT / "web" / "admin.html").is_file()
