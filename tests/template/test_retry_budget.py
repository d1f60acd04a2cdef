"""No deployment pairs retries without bound with an on-failure destination.

Lambda's Kafka event source mappings cap "infinite" retries (-1) at 10 when the mapping has
an on-failure destination, and then skip the batch (AWS Lambda Developer Guide, "Using a Kafka
topic as an on-failure destination" and "Configuring error handling controls for Kafka event
sources"). A skipped batch leaves the cache diverged until it is rebuilt, so a mapping that is
meant to retry until it succeeds must have no destination. Each samconfig environment and each
configuration the template's Rules accept is resolved through the template's conditions and
checked mapping by mapping.
"""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from tests.template.cfn import REQUIRED, Resolved, load
from tests.template.test_template import _region as _region  # autouse: the translator's region
from tests.template.test_template import _samconfig_overrides, broken_rules

REGISTRY = "https://psrc-abc12.us-east-2.aws.confluent.cloud"


def _kafka_mappings(stack: Resolved) -> dict[str, dict[str, Any]]:
    """The mappings that read a Kafka topic of the source cluster, by name, with their properties."""
    return {
        name: resource["Properties"]
        for name, resource in stack.of_type("AWS::Lambda::EventSourceMapping").items()
        if "SelfManagedEventSource" in resource["Properties"]
    }


def _retries(mapping: dict[str, Any]) -> int:
    # on demand the property is absent, and Lambda retries until the batch succeeds (-1)
    return int(mapping.get("MaximumRetryAttempts", -1))


def _destination(mapping: dict[str, Any]) -> Any:
    return mapping.get("DestinationConfig", {}).get("OnFailure", {}).get("Destination")


def capped_retries(stack: Resolved) -> list[str]:
    """The mappings Lambda would give 10 retries and then skip the batch, though they ask for -1."""
    return [name for name, m in _kafka_mappings(stack).items() if _retries(m) == -1 and _destination(m) is not None]


def untracked_skips(stack: Resolved) -> list[str]:
    """The mappings that may give up on records (bounded retries or record age) with nowhere
    to send them: a skip no one would see."""
    return [
        name
        for name, m in _kafka_mappings(stack).items()
        if (_retries(m) >= 0 or int(m.get("MaximumRecordAgeInSeconds", -1)) >= 0) and _destination(m) is None
    ]


@pytest.mark.parametrize("env", sorted(_samconfig_overrides()))
def test_no_samconfig_environment_caps_unbounded_retries(env: str) -> None:
    overrides = {**REQUIRED, **_samconfig_overrides()[env]}
    assert broken_rules(overrides) == [], f"samconfig {env} would not deploy"
    stack = Resolved(overrides)
    assert _kafka_mappings(stack), "the template has its topic mappings"
    assert capped_retries(stack) == [], f"samconfig {env}: retries -1 with an on-failure destination become 10"
    assert untracked_skips(stack) == []


def test_every_environment_is_checked() -> None:
    assert {"default", "dev", "prod"} <= set(_samconfig_overrides())


def test_the_defaults_retry_until_a_batch_succeeds_in_either_poller_mode() -> None:
    parameters = load()["Parameters"]
    assert str(parameters["KafkaMaximumRetryAttempts"]["Default"]) == "-1"
    assert str(parameters["KafkaMaximumRecordAgeInSeconds"]["Default"]) == "-1"
    for mode in ("ON_DEMAND", "PROVISIONED"):
        stack = Resolved({**REQUIRED, "PollerMode": mode})
        mappings = _kafka_mappings(stack)
        assert mappings and all(_retries(m) == -1 for m in mappings.values()), mode
        assert capped_retries(stack) == [], mode
        assert "MappingFailureQueue" not in stack.resources, f"{mode}: a queue for skips that cannot happen"


# Every combination of the settings that decide whether a batch may be skipped and where it goes.
GRID = [
    dict(zip(("PollerMode", "KafkaMaximumRetryAttempts", "KafkaMaximumRecordAgeInSeconds", "SkippedBatchesTopic",
              "SchemaRegistryUri"), values, strict=True))
    for values in itertools.product(
        ("ON_DEMAND", "PROVISIONED"), ("-1", "0", "5"), ("-1", "3600"), ("", "cachesync-skipped"), ("", REGISTRY)
    )
]  # fmt: skip


def test_no_configuration_the_rules_accept_caps_unbounded_retries() -> None:
    accepted = 0
    for settings in GRID:
        overrides = {**REQUIRED, **settings}
        if broken_rules(overrides):
            continue
        accepted += 1
        stack = Resolved(overrides)
        assert capped_retries(stack) == [], settings
        assert untracked_skips(stack) == [], settings
        bounded = settings["PollerMode"] == "PROVISIONED" and settings["KafkaMaximumRetryAttempts"] != "-1"
        # the queue, its alarm and the function that marks divergences exist exactly where skips can happen
        for name in ("MappingFailureQueue", "MappingFailureQueueAlarm", "MappingFailuresFunction"):
            assert (name in stack.resources) == bounded, (name, settings)
    # the Rules leave real choices on both sides: never skip, and skip after a bound you chose
    assert accepted >= 8


@pytest.mark.parametrize(
    ("settings", "complaint"),
    [
        ({"KafkaMaximumRecordAgeInSeconds": "3600"}, "KafkaMaximumRecordAgeInSeconds needs"),
        ({"SkippedBatchesTopic": "cachesync-skipped"}, "SkippedBatchesTopic needs"),
        ({"SchemaRegistryUri": REGISTRY}, "SchemaRegistryUri needs"),
    ],
)
def test_settings_that_only_matter_when_batches_may_be_skipped_need_bounded_retries(
    settings: dict[str, str], complaint: str
) -> None:
    provisioned = {**REQUIRED, "PollerMode": "PROVISIONED", **settings}
    assert any(complaint in failure for failure in broken_rules(provisioned)), broken_rules(provisioned)
    assert not any(complaint in f for f in broken_rules({**provisioned, "KafkaMaximumRetryAttempts": "3"}))


@pytest.mark.parametrize("record_format", ["JSON", "SOURCE"])
def test_the_local_registry_run_uses_settings_the_rules_accept(record_format: str) -> None:
    from devkit.localrun import registry_parameters

    overrides = {**REQUIRED, **registry_parameters(record_format)}
    assert broken_rules(overrides) == []
    assert capped_retries(Resolved(overrides)) == [] and untracked_skips(Resolved(overrides)) == []
