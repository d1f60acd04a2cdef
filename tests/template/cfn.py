"""The template as CloudFormation would see it, without an AWS account.

`transform` runs the SAM translator in-process (as SAM's own translator tests
do: local CodeUri paths swapped for S3 URIs, managed policies from a stub
loader). `resolve` then does what CloudFormation does with parameter values:
fills in defaults, evaluates the Conditions, drops the resources and outputs
whose condition is false, and resolves `Ref` to parameters, `Fn::If`,
`AWS::NoValue`, and `Fn::Join` / `Fn::Split` / `Fn::Sub` / `Fn::Select` over known values.
References to resources and `Fn::GetAtt` stay as they are, so tests can check
what points where.
"""

from __future__ import annotations

import copy
import re
from functools import cache
from pathlib import Path
from typing import Any
from unittest.mock import MagicMock

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = ROOT / "template.yaml"

# the parameters without defaults, as a user must give them
REQUIRED = {
    "KafkaBootstrapServers": "pkc-abc12.us-east-1.aws.confluent.cloud:9092,pkc-x.us-east-1.aws.confluent.cloud:9093",
    "KafkaSecretArn": "arn:aws:secretsmanager:us-east-1:123456789012:secret:cachesync/kafka-AbCdEf",
    "JwtIssuer": "https://cognito-idp.us-east-1.amazonaws.com/us-east-1_AbCdEfGhI",
    "JwtAudience": "3n4b5urk1ft4fl3mg5e62d9ado",
}

_NO_VALUE = object()


@cache
def source_text() -> str:
    return TEMPLATE.read_text()


@cache
def _written_cached() -> dict[str, Any]:
    from samtranslator.yaml_helper import yaml_parse

    result: dict[str, Any] = yaml_parse(source_text())
    return result


@cache
def _parsed_cached() -> dict[str, Any]:
    """The template after AWS::LanguageExtensions, as CloudFormation runs it before SAM's
    transform: each Fn::ForEach expanded into its resources, every other intrinsic kept.

    cfn-lint's expansion (the one it lints) keeps the intrinsics for `Resolved` to evaluate
    per scenario; the SAM CLI's own (for local runs) resolves parameters and conditions
    with one set of values while it expands."""
    return expand(copy.deepcopy(_written_cached()))


def expand(template: dict[str, Any]) -> dict[str, Any]:
    """A parsed template with its Fn::ForEach loops expanded (see `load`)."""
    from cfnlint.template import Template
    from cfnlint.template.transforms._language_extensions import language_extension

    _, expanded = language_extension(Template(str(TEMPLATE), template))
    expanded["Transform"] = [t for t in expanded["Transform"] if t != "AWS::LanguageExtensions"]
    result: dict[str, Any] = expanded
    return result


def written() -> dict[str, Any]:
    """template.yaml as written, Fn::ForEach and all (a fresh copy)."""
    return copy.deepcopy(_written_cached())


def load() -> dict[str, Any]:
    """template.yaml parsed with the CloudFormation short-form tags, language extensions
    expanded (a fresh copy)."""
    return copy.deepcopy(_parsed_cached())


@cache
def _transformed_cached(parameters: tuple[tuple[str, str], ...]) -> dict[str, Any]:
    return sam_transform_of(load(), dict(parameters))


def sam_transform_of(template: dict[str, Any], parameters: dict[str, str]) -> dict[str, Any]:
    """What the SAM transform makes of a parsed template whose Fn::ForEach loops are expanded."""
    from samtranslator.translator.transform import transform as sam_transform

    for resource in template["Resources"].values():
        properties = resource.get("Properties", {})
        for key in ("CodeUri", "ContentUri"):
            if isinstance(properties.get(key), str):
                properties[key] = f"s3://bucket/{properties[key].strip('/')}.zip"
    loader = MagicMock()
    loader.load.return_value = {}  # the template names no managed policies
    # CloudFormation hands the transform the stack's parameter values (strings), and SAM
    # substitutes some of them while transforming (e.g. into the HTTP API definition)
    result: dict[str, Any] = sam_transform(template, dict(parameters), loader)
    return result


def transform(overrides: dict[str, str] | None = None) -> dict[str, Any]:
    """The CloudFormation template the SAM transform produces (a fresh copy)."""
    return copy.deepcopy(_transformed_cached(tuple(sorted((overrides or {}).items()))))


def parameter_values(overrides: dict[str, str]) -> dict[str, Any]:
    """Parameter values as CloudFormation types them: defaults, then the overrides."""
    declared = _parsed_cached()["Parameters"]
    unknown = set(overrides) - set(declared)
    assert not unknown, f"not parameters of the template: {unknown}"
    values: dict[str, Any] = {}
    for name, spec in declared.items():
        raw = overrides.get(name, spec.get("Default"))
        assert raw is not None, f"parameter {name} has no default: the scenario must give it"
        raw = str(raw)
        if spec["Type"] == "CommaDelimitedList" or spec["Type"].startswith("List<"):
            values[name] = [item.strip() for item in raw.split(",")]
        else:
            values[name] = raw
    return values


class Resolved:
    """A transformed template with one set of parameter values applied."""

    def __init__(self, overrides: dict[str, str], template: dict[str, Any] | None = None):
        self.template = transform(overrides) if template is None else template
        self.parameters = parameter_values(overrides)
        self.pseudo = {
            "AWS::Region": "us-east-1",
            "AWS::AccountId": "123456789012",
            "AWS::Partition": "aws",
            "AWS::URLSuffix": "amazonaws.com",
            "AWS::StackName": "cachesync",
        }
        conditions = self.template.get("Conditions", {})
        self.conditions: dict[str, bool] = {}
        for name in conditions:
            self.condition(name)
        self.resources = {
            name: self.value(resource)
            for name, resource in self.template["Resources"].items()
            if self._included(resource)
        }
        self.outputs = {
            name: self.value(output)
            for name, output in self.template.get("Outputs", {}).items()
            if self._included(output)
        }

    def _included(self, entity: dict[str, Any]) -> bool:
        return "Condition" not in entity or self.condition(entity["Condition"])

    def condition(self, name: str) -> bool:
        if name not in self.conditions:
            self.conditions[name] = self._truth(self.template["Conditions"][name])
        return self.conditions[name]

    def _truth(self, node: Any) -> bool:
        ((function, args),) = node.items()
        if function == "Condition":
            return self.condition(args)
        if function == "Fn::Equals":
            left, right = (self.value(arg) for arg in args)
            return bool(left == right)
        if function == "Fn::Not":
            return not self._truth(args[0])
        if function == "Fn::And":
            return all(self._truth(arg) for arg in args)
        if function == "Fn::Or":
            return any(self._truth(arg) for arg in args)
        raise AssertionError(f"condition function {function} not supported here")

    def value(self, node: Any) -> Any:
        """`node` with parameters, conditions and `AWS::NoValue` resolved."""
        result = self._value(node)
        return None if result is _NO_VALUE else result

    def _value(self, node: Any) -> Any:
        if isinstance(node, list):
            items = [self._value(item) for item in node]
            return [item for item in items if item is not _NO_VALUE]
        if not isinstance(node, dict):
            return node
        if len(node) == 1:
            ((key, args),) = node.items()
            if key == "Ref":
                if args == "AWS::NoValue":
                    return _NO_VALUE
                if args in self.parameters:
                    return self.parameters[args]
                if args in self.pseudo:
                    return self.pseudo[args]
                return node  # a resource: keep the reference
            if key == "Fn::If":
                name, when_true, when_false = args
                return self._value(when_true if self.condition(name) else when_false)
            if key == "Fn::Join":
                separator, items = args[0], self._value(args[1])
                if isinstance(items, list) and all(isinstance(item, str) for item in items):
                    return separator.join(items)
                return {key: [separator, items]}
            if key == "Fn::Select":
                index, items = self._value(args[0]), self._value(args[1])
                if isinstance(items, list) and isinstance(index, (int, str)) and str(index).isdigit():
                    return items[int(index)]
                return {key: [index, items]}
            if key == "Fn::Sub":
                return self._sub(args)
            if key == "Fn::Split":
                separator, text = args[0], self._value(args[1])
                return text.split(separator) if isinstance(text, str) else {key: [separator, text]}
            if key == "Fn::FindInMap":
                path = [self._value(arg) for arg in args]
                if all(isinstance(part, str) for part in path):
                    mapping, top, second = path
                    return self.template["Mappings"][mapping][top][second]
                return {key: path}
        resolved = {key: self._value(value) for key, value in node.items()}
        return {key: value for key, value in resolved.items() if value is not _NO_VALUE}

    def _sub(self, args: Any) -> Any:
        text, variables = (args, {}) if isinstance(args, str) else (args[0], self._value(args[1]))

        def replace(match: re.Match[str]) -> str:
            name = match.group(1)
            for source in (variables, self.parameters, self.pseudo):
                if name in source and isinstance(source[name], str):
                    return str(source[name])
            return match.group(0)  # a resource or attribute: left for CloudFormation

        result = re.sub(r"\$\{([^}!]+)\}", replace, text)
        return result if "${" not in result else {"Fn::Sub": result}

    # --- conveniences ----------------------------------------------------------------
    def of_type(self, resource_type: str) -> dict[str, dict[str, Any]]:
        return {name: r for name, r in self.resources.items() if r["Type"] == resource_type}

    def props(self, name: str) -> dict[str, Any]:
        properties: dict[str, Any] = self.resources[name].get("Properties", {})
        return properties


def ref(name: str) -> dict[str, str]:
    return {"Ref": name}


def get_att(name: str, attribute: str) -> dict[str, list[str]]:
    return {"Fn::GetAtt": [name, attribute]}
