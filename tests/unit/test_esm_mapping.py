"""The local event source mapping reads the template's mappings as CloudFormation would create them."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

from devkit.esm.mapping import TemplateError, read_mappings
from devkit.sam import ROOT
from devkit.servers import free_port


def test_the_templates_mappings_on_demand() -> None:
    mappings = {m.logical_id: m for m in read_mappings({"KafkaBootstrapServers": "a:9092,b:9092"})}
    assert set(mappings) == {"OrdersMapping", "InventoryMapping", "ProductsMapping"}
    orders = mappings["OrdersMapping"]
    assert orders.function == "IngestFunction" and orders.topics == ("orders",)
    assert orders.bootstrap_servers == ("a:9092", "b:9092")
    assert orders.consumer_group == "cachesync-orders"
    assert (orders.starting_position, orders.batch_size, orders.window_seconds) == ("TRIM_HORIZON", 500, 0)
    assert orders.auth_type == "BASIC_AUTH" and orders.sasl_mechanism == "PLAIN"
    # on demand: no provisioned-mode error controls, so a failing batch is retried until it succeeds
    assert not orders.provisioned and orders.on_failure is None and orders.retry_limit == -1
    assert not orders.bisect_on_error and not orders.report_item_failures
    assert orders.minimum_pollers == 1  # no ProvisionedPollerConfig: the local mapping runs one poller


def test_the_templates_mappings_in_provisioned_mode_with_parameters() -> None:
    parameters = {
        "KafkaBootstrapServers": "a:9092",
        "PollerMode": "PROVISIONED",
        "KafkaConsumerGroupId": "shop",
        "InventoryTopic": "stock",
        "KafkaBatchSize": "42",
        "KafkaAuthMechanism": "SASL_SCRAM_512_AUTH",
        "MinimumPollers": "2",
        "MaximumPollers": "5",
    }
    inventory = next(m for m in read_mappings(parameters) if m.logical_id == "InventoryMapping")
    assert inventory.topics == ("stock",) and inventory.consumer_group == "shop-inventory"
    assert inventory.batch_size == 42 and inventory.sasl_mechanism == "SCRAM-SHA-512"
    assert inventory.provisioned and inventory.bisect_on_error
    assert (inventory.minimum_pollers, inventory.maximum_pollers) == (2, 5)
    # the defaults retry until a batch succeeds: no destination, which would cap them at 10
    assert inventory.maximum_retry_attempts == -1 and inventory.on_failure is None and inventory.retry_limit == -1
    # bounded retries: the template's destination is a queue only the cloud has, named, written to a
    # local folder instead
    bounded = {**parameters, "KafkaMaximumRetryAttempts": "4"}
    inventory = next(m for m in read_mappings(bounded) if m.logical_id == "InventoryMapping")
    assert inventory.on_failure == "MappingFailureQueue.Arn" and inventory.retry_limit == 4
    # as in Lambda, a mapping that asked for -1 but has a destination gets 10 (the template avoids it)
    assert dataclasses.replace(inventory, maximum_retry_attempts=-1).retry_limit == 10


def test_a_mapping_lambda_would_refuse_is_refused(tmp_path: Path) -> None:
    template = tmp_path / "template.yaml"
    template.write_text(
        """
Transform: AWS::Serverless-2016-10-31
Resources:
  Fn:
    Type: AWS::Serverless::Function
    Properties: {Runtime: python3.13, Handler: app.handler, CodeUri: .}
  Queue:
    Type: AWS::Lambda::EventSourceMapping
    Properties:
      FunctionName: !Ref Fn
      Topics: [orders]
      SelfManagedEventSource: {Endpoints: {KafkaBootstrapServers: ["a:9092"]}}
      SelfManagedKafkaEventSourceConfig: {ConsumerGroupId: g, ConsumptionMode: Queue}
      StartingPosition: TRIM_HORIZON
"""
    )
    with pytest.raises(TemplateError, match="ConsumptionMode 'Queue' is not ordered per partition"):
        read_mappings(template=template)
    template.write_text(template.read_text().replace(", ConsumptionMode: Queue", "").replace("TRIM_HORIZON", "NOW"))
    with pytest.raises(TemplateError, match="StartingPosition must be one of"):
        read_mappings(template=template)
    pollers = "      ProvisionedPollerConfig: {MinimumPollers: 3, MaximumPollers: 2}\n"
    template.write_text(template.read_text().replace("NOW", "LATEST") + pollers)
    with pytest.raises(TemplateError, match=r"MaximumPollers \(2\) is below MinimumPollers"):
        read_mappings(template=template)


def test_the_command_says_when_the_broker_cannot_be_reached() -> None:
    command = [sys.executable, "-m", "devkit.esm", "--bootstrap", f"127.0.0.1:{free_port()}"]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=60, env=_env())
    assert done.returncode == 2
    assert "cannot reach Kafka at 127.0.0.1:" in done.stderr and "Traceback" not in done.stderr


def _env() -> dict[str, str]:
    import os

    from devkit import servers

    # a Redis URL that is never used: the broker check comes first
    return {**os.environ, "REDIS_URL": f"redis://127.0.0.1:{servers.free_port()}/0"}


def test_the_templates_schema_registry_options_reach_the_local_mappings() -> None:
    parameters = {
        "KafkaBootstrapServers": "a:9092",
        "PollerMode": "PROVISIONED",
        "SchemaRegistryUri": "https://psrc-abc12.us-east-2.aws.confluent.cloud",
        "SchemaRegistryEventRecordFormat": "SOURCE",
        "SchemaRegistryValidatedAttributes": "KEY_AND_VALUE",
    }
    mappings = read_mappings(parameters)
    assert {m.logical_id for m in mappings} == {"OrdersMapping", "InventoryMapping", "ProductsMapping"}
    for mapping in mappings:
        registry = mapping.schema_registry
        assert registry is not None, mapping.logical_id
        assert (registry.uri, registry.event_record_format, registry.attributes) == (
            "https://psrc-abc12.us-east-2.aws.confluent.cloud",
            "SOURCE",
            ("KEY", "VALUE"),
        )
    without = read_mappings({**parameters, "SchemaRegistryUri": ""})
    assert [m.schema_registry for m in without] == [None, None, None]
    # on demand, Lambda refuses a registry (the template's Rule says so before it gets that far)
    with pytest.raises(TemplateError, match="SchemaRegistryConfig in provisioned mode only"):
        read_mappings({**parameters, "PollerMode": "ON_DEMAND"})
