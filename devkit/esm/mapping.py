"""The event source mappings of a template, as `AWS::Lambda::EventSourceMapping` resources say.

The SAM CLI's providers read the template (parameters, their defaults and the
language extensions); its intrinsic resolver does Ref and Sub. Fn::If with
AWS::NoValue, which that resolver does not handle, is evaluated here, so a
mapping reads exactly as CloudFormation would create it for the parameters.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from devkit.sam import TEMPLATE, local_stacks

MAPPING_TYPE = "AWS::Lambda::EventSourceMapping"
STARTING_POSITIONS = ("TRIM_HORIZON", "LATEST", "AT_TIMESTAMP")
# Lambda's SASL types for self-managed Kafka and the librdkafka mechanism each one is
SASL_MECHANISMS = {
    "BASIC_AUTH": "PLAIN",
    "SASL_SCRAM_256_AUTH": "SCRAM-SHA-256",
    "SASL_SCRAM_512_AUTH": "SCRAM-SHA-512",
}
DEFAULT_BATCH_SIZE = 100
DEFAULT_WINDOW_SECONDS = 0.5  # Kafka's default window, which the API cannot set back once changed
RETRIES_WITH_DESTINATION = 10  # "infinite retries and an on-failure destination" become 10
_NO_VALUE = object()


class TemplateError(ValueError):
    """A mapping in the template that Lambda would refuse."""


@dataclass(frozen=True)
class SchemaRegistry:
    """A mapping's SchemaRegistryConfig: which attributes Lambda validates against the
    registry, and whether it hands the function JSON or the source bytes."""

    uri: str
    event_record_format: str = "JSON"  # JSON | SOURCE
    attributes: tuple[str, ...] = ("VALUE",)  # KEY and/or VALUE


@dataclass(frozen=True)
class MappingConfig:
    logical_id: str
    function: str  # the logical id of the function it invokes
    topics: tuple[str, ...]
    bootstrap_servers: tuple[str, ...]
    consumer_group: str
    starting_position: str = "TRIM_HORIZON"
    starting_timestamp: float | None = None  # AT_TIMESTAMP: Unix seconds
    batch_size: int = DEFAULT_BATCH_SIZE
    window_seconds: float = DEFAULT_WINDOW_SECONDS
    enabled: bool = True
    provisioned: bool = False
    minimum_pollers: int = 1  # ProvisionedPollerConfig, provisioned mode only
    maximum_pollers: int = 200
    maximum_retry_attempts: int = -1  # -1: until it succeeds
    maximum_record_age_seconds: int = -1  # -1: no limit
    bisect_on_error: bool = False
    report_item_failures: bool = False
    # a destination ARN, kafka://<topic>, file://<folder>, or the template's own resource
    # ("MappingFailureQueue.Arn"), which exists only in the cloud and is written to a local folder
    on_failure: str | None = None
    auth_type: str | None = None  # BASIC_AUTH | SASL_SCRAM_256_AUTH | SASL_SCRAM_512_AUTH
    secret_arn: str | None = None
    schema_registry: SchemaRegistry | None = None

    @property
    def retry_limit(self) -> int:
        """Retries after the first attempt; -1 retries forever."""
        if self.maximum_retry_attempts == -1 and self.on_failure:
            return RETRIES_WITH_DESTINATION
        return self.maximum_retry_attempts

    @property
    def sasl_mechanism(self) -> str | None:
        return SASL_MECHANISMS.get(self.auth_type or "")

    def with_bootstrap(self, servers: str) -> MappingConfig:
        return replace(self, bootstrap_servers=tuple(s.strip() for s in servers.split(",") if s.strip()))


def read_mappings(
    parameters: Mapping[str, str] | None = None, template: Path = TEMPLATE, function: str | None = None
) -> list[MappingConfig]:
    """Every Kafka event source mapping of the template (those of `function` only, when given)."""
    resources, conditions, resolve = _resolved_template(dict(parameters or {}), template)
    mappings = []
    for logical_id, resource in resources.items():
        if resource.get("Type") != MAPPING_TYPE or not conditions.get(resource.get("Condition", ""), True):
            continue  # not a mapping, or one the parameters leave out
        properties = _evaluate(resource.get("Properties", {}), conditions, resolve)
        if "SelfManagedEventSource" not in properties and "SelfManagedKafkaEventSourceConfig" not in properties:
            continue  # not a Kafka mapping (SQS, Kinesis, ...)
        config = _mapping(logical_id, properties)
        if function is None or config.function == function:
            mappings.append(config)
    return mappings


def read_queue_subscriptions(parameters: Mapping[str, str] | None = None, template: Path = TEMPLATE) -> dict[str, str]:
    """The template's SQS event sources, by queue: `{"<Queue>.Arn": "<function logical id>"}`.

    An on-failure destination that is one of these queues reaches its function locally as it
    would in the cloud (MappingFailureQueue -> MappingFailuresFunction)."""
    resources, conditions, resolve = _resolved_template(dict(parameters or {}), template)
    subscriptions = {}
    for logical_id, resource in resources.items():
        if not conditions.get(resource.get("Condition", ""), True):
            continue
        properties = _evaluate(resource.get("Properties", {}), conditions, resolve)
        if resource.get("Type") == MAPPING_TYPE:  # a plain mapping
            sources = [(properties.get("EventSourceArn"), properties.get("FunctionName"))]
        elif resource.get("Type") == "AWS::Serverless::Function":  # a SAM function's SQS events
            events = (properties.get("Events") or {}).values()
            sources = [((e.get("Properties") or {}).get("Queue"), logical_id) for e in events if e.get("Type") == "SQS"]
        else:
            continue
        for source, function in sources:
            if isinstance(source, str) and source.endswith(".Arn") and isinstance(function, str):
                subscriptions[source] = function
    return subscriptions


def read_resource(
    logical_id: str, parameters: Mapping[str, str] | None = None, template: Path = TEMPLATE
) -> dict[str, Any] | None:
    """One resource's properties as written, its parameters and conditions resolved; None when the
    template has no such resource or its condition leaves it out (the local gateway's HttpApi)."""
    resources, conditions, resolve = _resolved_template(dict(parameters or {}), template)
    resource = resources.get(logical_id)
    if resource is None or not conditions.get(resource.get("Condition", ""), True):
        return None
    properties: dict[str, Any] = _evaluate(resource.get("Properties", {}), conditions, resolve)
    return properties


def _resolved_template(
    parameters: dict[str, str], template: Path
) -> tuple[dict[str, Any], dict[str, bool], Callable[[Any], Any]]:
    from samcli.lib.intrinsic_resolver.intrinsic_property_resolver import IntrinsicResolver
    from samcli.lib.intrinsic_resolver.intrinsics_symbol_table import IntrinsicsSymbolTable
    from samcli.lib.providers.sam_base_provider import SamBaseProvider

    stacks = local_stacks(template, parameters)
    raw = stacks[0].template_dict
    for name, value in parameters.items():
        # the resolver falls back to a parameter's default when the value given is empty ("")
        if isinstance(raw.get("Parameters", {}).get(name), dict):
            raw["Parameters"][name] = {**raw["Parameters"][name], "Default": value}
    values = SamBaseProvider._get_parameter_values(raw, parameters)
    resolver = IntrinsicResolver(
        template=raw, symbol_resolver=IntrinsicsSymbolTable(logical_id_translator=values, template=raw)
    )
    conditions = {}
    for name, expression in (raw.get("Conditions") or {}).items():
        try:
            result = resolver.intrinsic_property_resolver(expression, True)
        except Exception:  # a condition on something only the cloud knows
            result = None
        if isinstance(result, bool):
            conditions[name] = result

    def resolve(value: Any) -> Any:
        if isinstance(value, dict) and "Fn::GetAtt" in value:  # exists only once deployed: named, not resolved
            return ".".join(value["Fn::GetAtt"]) if isinstance(value["Fn::GetAtt"], list) else value["Fn::GetAtt"]
        try:
            return resolver.intrinsic_property_resolver(value, True)
        except Exception:  # GetAtt of a resource that exists only once deployed: left as it is
            return value

    # the resources as written, each value resolved by `_evaluate` (SAM's own pass would turn
    # `!GetAtt Queue.Arn` into a function ARN and give up on Fn::If with AWS::NoValue)
    resources: dict[str, Any] = raw.get("Resources", {})
    return resources, conditions, resolve


def _evaluate(value: Any, conditions: dict[str, bool], resolve: Callable[[Any], Any]) -> Any:
    """Fn::If by the evaluated conditions, AWS::NoValue removing the property it stands for;
    the other intrinsics (Ref, Sub) by the SAM CLI's resolver."""
    if isinstance(value, dict):
        if set(value) == {"Fn::If"}:
            name, when_true, when_false = value["Fn::If"]
            if name not in conditions:
                raise TemplateError(f"condition {name!r} cannot be evaluated locally")
            return _evaluate(when_true if conditions[name] else when_false, conditions, resolve)
        if value == {"Ref": "AWS::NoValue"}:
            return _NO_VALUE
        if len(value) == 1 and next(iter(value)).startswith(("Fn::", "Ref")):
            return resolve(value)
        evaluated = {k: _evaluate(v, conditions, resolve) for k, v in value.items()}
        return {k: v for k, v in evaluated.items() if v is not _NO_VALUE}
    if isinstance(value, list):
        return [v for v in (_evaluate(item, conditions, resolve) for item in value) if v is not _NO_VALUE]
    return value


def _mapping(logical_id: str, p: dict[str, Any]) -> MappingConfig:
    def whole(
        name: str, default: int, low: int, high: int, also: tuple[int, ...] = (), source: dict[str, Any] | None = None
    ) -> int:
        raw = (p if source is None else source).get(name, default)
        try:
            number = int(raw)
        except (TypeError, ValueError):
            raise TemplateError(f"{logical_id}: {name} must be a whole number, got {raw!r}") from None
        if not (low <= number <= high or number in also):
            raise TemplateError(f"{logical_id}: {name} must be {low} to {high}, got {number}")
        return number

    function = p.get("FunctionName")
    if not isinstance(function, str):
        raise TemplateError(f"{logical_id}: FunctionName must name a function of the template, got {function!r}")
    topics = p.get("Topics") or []
    if len(topics) != 1 or not isinstance(topics[0], str):
        raise TemplateError(f"{logical_id}: Topics must hold exactly one topic name, got {topics!r}")
    endpoints = (p.get("SelfManagedEventSource") or {}).get("Endpoints") or {}
    servers = endpoints.get("KafkaBootstrapServers") or endpoints.get("KAFKA_BOOTSTRAP_SERVERS") or []
    position = p.get("StartingPosition", "TRIM_HORIZON")
    if position not in STARTING_POSITIONS:
        raise TemplateError(f"{logical_id}: StartingPosition must be one of {', '.join(STARTING_POSITIONS)}")
    timestamp = p.get("StartingPositionTimestamp")
    if position == "AT_TIMESTAMP" and timestamp is None:
        raise TemplateError(f"{logical_id}: AT_TIMESTAMP needs StartingPositionTimestamp")
    kafka = p.get("SelfManagedKafkaEventSourceConfig") or {}
    mode = kafka.get("ConsumptionMode", "Stream")
    if mode != "Stream":
        raise TemplateError(f"{logical_id}: ConsumptionMode {mode!r} is not ordered per partition; only Stream is")
    auth = next((c for c in p.get("SourceAccessConfigurations") or [] if c.get("Type") in SASL_MECHANISMS), None)
    window = p.get("MaximumBatchingWindowInSeconds")
    destination = ((p.get("DestinationConfig") or {}).get("OnFailure") or {}).get("Destination")
    provisioned = "ProvisionedPollerConfig" in p
    pollers = p.get("ProvisionedPollerConfig") or {}
    registry = kafka.get("SchemaRegistryConfig")
    if registry and not provisioned:
        raise TemplateError(f"{logical_id}: Lambda takes a SchemaRegistryConfig in provisioned mode only")
    if not isinstance(pollers, dict):
        raise TemplateError(f"{logical_id}: ProvisionedPollerConfig must be an object, got {pollers!r}")
    minimum_pollers = whole("MinimumPollers", 1, 1, 200, source=pollers)
    maximum_pollers = whole("MaximumPollers", 200, 1, 2000, source=pollers)
    if maximum_pollers < minimum_pollers:
        raise TemplateError(f"{logical_id}: MaximumPollers ({maximum_pollers}) is below MinimumPollers")
    return MappingConfig(
        logical_id=logical_id,
        function=function,
        topics=(topics[0],),
        bootstrap_servers=tuple(str(s) for s in servers),
        # without one, Lambda names the group after the mapping's UUID; the logical id stands in for it
        consumer_group=str(kafka.get("ConsumerGroupId") or logical_id),
        starting_position=position,
        starting_timestamp=float(timestamp) if timestamp is not None else None,
        batch_size=whole("BatchSize", DEFAULT_BATCH_SIZE, 1, 10_000),
        window_seconds=DEFAULT_WINDOW_SECONDS if window is None else whole("MaximumBatchingWindowInSeconds", 0, 0, 300),
        enabled=str(p.get("Enabled", True)).lower() != "false",
        provisioned=provisioned,
        minimum_pollers=minimum_pollers,
        maximum_pollers=maximum_pollers,
        maximum_retry_attempts=whole("MaximumRetryAttempts", -1, 0, 10_000, also=(-1,)),
        maximum_record_age_seconds=whole("MaximumRecordAgeInSeconds", -1, 60, 604_800, also=(-1,)),
        bisect_on_error=str(p.get("BisectBatchOnFunctionError", False)).lower() == "true",
        report_item_failures="ReportBatchItemFailures" in (p.get("FunctionResponseTypes") or []),
        on_failure=destination if isinstance(destination, str) else None,
        auth_type=auth.get("Type") if auth else None,
        secret_arn=auth.get("URI") if auth and isinstance(auth.get("URI"), str) else None,
        schema_registry=_schema_registry(logical_id, registry) if registry else None,
    )


def _schema_registry(logical_id: str, registry: dict[str, Any]) -> SchemaRegistry:
    record_format = registry.get("EventRecordFormat", "JSON")
    if record_format not in ("JSON", "SOURCE"):
        raise TemplateError(f"{logical_id}: EventRecordFormat must be JSON or SOURCE, got {record_format!r}")
    attributes = tuple(str(c.get("Attribute")) for c in registry.get("SchemaValidationConfigs") or [])
    if not attributes or set(attributes) - {"KEY", "VALUE"}:
        raise TemplateError(f"{logical_id}: SchemaValidationConfigs must name KEY and/or VALUE, got {attributes!r}")
    return SchemaRegistry(str(registry.get("SchemaRegistryURI", "")), record_format, attributes)
