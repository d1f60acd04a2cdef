"""Writes quickstart.yaml: template.yaml with only its first-deploy parameters.

    python -m devkit.quickstart          # rewrite quickstart.yaml (make quickstart)
    python -m devkit.quickstart --check  # exit 1 when quickstart.yaml is out of date

`sam deploy --guided` prompts for every parameter of the template it deploys, whatever
samconfig.toml or --parameter-overrides say (those only become the prompts' defaults). So the
default environment builds quickstart.yaml: the same template, with the parameters of
template.yaml's first parameter group (the ones a first deployment needs to answer) kept, and
every other parameter fixed at its default. For the same values of the kept parameters, both
templates describe the same resources with the same logical ids, so a stack moves between them
in place. Everything else stays settable by deploying template.yaml (docs/deploy.md).

What fixing a parameter means here: each `Ref` to it becomes its default (a list for a
CommaDelimitedList), each `${Name}` in an `Fn::Sub` the default's text, and a `Ref` built per
Fn::ForEach item (`Ref: !Sub "${Topic}Topic"`) a lookup in a mapping of the defaults. Rules
that the defaults decide are dropped (a rule the defaults would break is an error here); the
rest keep their remaining parameters.
"""

from __future__ import annotations

import argparse
import copy
import re
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import yaml

from devkit.sam import ROOT, TEMPLATE

QUICKSTART = ROOT / "quickstart.yaml"
HEADER = (
    "# Generated from template.yaml by `make quickstart` (python -m devkit.quickstart): do not edit.\n"
    "# The first-deploy parameters of template.yaml (its first parameter group); every other parameter\n"
    "# is fixed at its default. `sam deploy --guided` asks only these; deploy template.yaml to set the\n"
    '# others (docs/deploy.md, "What the quick start leaves out").\n'
)
_SUB_NAME = re.compile(r"\$\{([A-Za-z0-9_]+)\}")


class QuickStartError(Exception):
    """template.yaml cannot be reduced as it stands (the message says why)."""


def first_deploy_parameters(template: Mapping[str, Any]) -> list[str]:
    groups = template["Metadata"]["AWS::CloudFormation::Interface"]["ParameterGroups"]
    names: list[str] = list(groups[0]["Parameters"])
    unknown = [n for n in names if n not in template["Parameters"]]
    if unknown:
        raise QuickStartError(f"the first parameter group names no parameter of the template: {unknown}")
    return names


def fixed_values(template: Mapping[str, Any], kept: Sequence[str]) -> dict[str, Any]:
    """The value each parameter that is not kept takes: its default, typed as a Ref would give it."""
    values: dict[str, Any] = {}
    for name, spec in template["Parameters"].items():
        if name in kept:
            continue
        if "Default" not in spec:
            raise QuickStartError(f"parameter {name} has no default: put it in the first parameter group")
        text = str(spec["Default"])
        is_list = spec["Type"] == "CommaDelimitedList" or spec["Type"].startswith("List<")
        values[name] = [item.strip() for item in text.split(",")] if is_list else text
    return values


class _Reducer:
    def __init__(self, fixed: Mapping[str, Any]):
        self.fixed = fixed
        self.per_item: dict[str, dict[str, str]] = {}  # suffix -> {item: default}

    def node(self, value: Any) -> Any:
        if isinstance(value, list):
            return [self.node(item) for item in value]
        if not isinstance(value, dict):
            return value
        if len(value) == 1:
            ((key, args),) = value.items()
            if key == "Ref" and isinstance(args, str) and args in self.fixed:
                return copy.deepcopy(self.fixed[args])
            if key == "Ref" and isinstance(args, dict):
                return self._ref_per_item(args)
            if key == "Fn::Sub":
                return {key: self._sub(args)}
        return {key: self.node(item) for key, item in value.items()}

    def _sub(self, args: Any) -> Any:
        if isinstance(args, str):
            return self._sub_text(args, set())
        text, variables = args
        return [self._sub_text(text, set(variables)), self.node(variables)]

    def _sub_text(self, text: str, local: set[str]) -> str:
        def replace(match: re.Match[str]) -> str:
            name = match.group(1)
            fixed = self.fixed.get(name)
            if name in local or not isinstance(fixed, str):
                return match.group(0)
            return fixed

        return _SUB_NAME.sub(replace, text)

    def _ref_per_item(self, args: dict[str, Any]) -> Any:
        """`Ref: !Sub "${Item}Suffix"` inside an Fn::ForEach: a mapping of the fixed values by item."""
        text = args.get("Fn::Sub") if len(args) == 1 else None
        found = re.fullmatch(r"\$\{([A-Za-z0-9]+)\}([A-Za-z0-9]+)", text) if isinstance(text, str) else None
        if found is None:
            raise QuickStartError(f"a Ref this generator cannot follow: {args}")
        identifier, suffix = found.groups()
        names = [n for n in self.fixed if n.endswith(suffix) and n != suffix]
        if not names:
            return {"Ref": args}  # the parameters it names are kept
        self.per_item[suffix] = {n[: -len(suffix)]: str(self.fixed[n]) for n in names}
        return {"Fn::FindInMap": [f"Fixed{suffix}", {"Ref": identifier}, "Value"]}


# --- Rules: what the fixed values decide ---------------------------------------------------
_UNKNOWN = object()


def _evaluate(node: Any) -> Any:
    """The value of a rule expression made of literals, or _UNKNOWN while a Ref remains."""
    if isinstance(node, list):
        items = [_evaluate(item) for item in node]
        return _UNKNOWN if any(item is _UNKNOWN for item in items) else items
    if not isinstance(node, dict):
        return node
    ((function, args),) = node.items()
    if function == "Ref":
        return _UNKNOWN
    values = [_evaluate(arg) for arg in args]
    if function == "Fn::And" and any(v is False for v in values):
        return False
    if function == "Fn::Or" and any(v is True for v in values):
        return True
    if any(v is _UNKNOWN for v in values):
        return _UNKNOWN
    if function == "Fn::Equals":
        return values[0] == values[1]
    if function == "Fn::Not":
        return not values[0]
    if function == "Fn::And":
        return all(values)
    if function == "Fn::Or":
        return any(values)
    if function == "Fn::Contains":
        return values[1] in values[0]
    raise QuickStartError(f"a rule function this generator cannot evaluate: {function}")


def _rules(rules: Mapping[str, Any], reducer: _Reducer) -> dict[str, Any]:
    kept: dict[str, Any] = {}
    for name, rule in rules.items():
        rule = reducer.node(rule)
        if "RuleCondition" in rule and _evaluate(rule["RuleCondition"]) is False:
            continue  # the fixed values never meet its condition
        assertions = []
        for assertion in rule["Assertions"]:
            holds = _evaluate(assertion["Assert"])
            if holds is False and _evaluate(rule.get("RuleCondition", True)) is True:
                raise QuickStartError(f"the defaults break rule {name}: {assertion.get('AssertDescription')}")
            if holds is not True:
                assertions.append(assertion)
        if assertions:
            kept[name] = {**rule, "Assertions": assertions}
    return kept


# --- Conditions: what the fixed values decide ----------------------------------------------
def _literal(node: Any) -> Any:
    """The value of a condition argument made of literals (Fn::Join over them included), or _UNKNOWN."""
    if isinstance(node, list):
        items = [_literal(item) for item in node]
        return _UNKNOWN if any(item is _UNKNOWN for item in items) else items
    if not isinstance(node, dict):
        return node
    if set(node) == {"Fn::Join"}:
        separator, items = node["Fn::Join"]
        values = _literal(items)
        return _UNKNOWN if values is _UNKNOWN else separator.join(values)
    return _UNKNOWN


class _Conditions:
    """The template's conditions with the fixed values in: each one decided (True or False), the
    same as another (an alias), or an expression over the kept parameters."""

    def __init__(self, definitions: Mapping[str, Any]):
        self.definitions = definitions
        self.decided: dict[str, Any] = {}

    def of(self, name: str) -> Any:
        """True, False, or the (possibly other) condition's expression."""
        if name not in self.decided:
            self.decided[name] = self.simplify(self.definitions[name])
        return self.decided[name]

    def name(self, name: str) -> Any:
        """True, False, or the name to use for `name` (itself, or the one it is the same as)."""
        value = self.of(name)
        if isinstance(value, bool):
            return value
        if isinstance(value, dict) and set(value) == {"Condition"}:
            return self.name(value["Condition"])
        return name

    def simplify(self, expression: Any) -> Any:
        ((function, args),) = expression.items()
        if function == "Condition":
            named = self.name(args)
            return named if isinstance(named, bool) else {"Condition": named}
        if function == "Fn::Equals":
            left, right = (_literal(arg) for arg in args)
            if left is _UNKNOWN or right is _UNKNOWN:
                return expression
            return left == right
        if function == "Fn::Not":
            inner = self.simplify(args[0])
            return (not inner) if isinstance(inner, bool) else {function: [inner]}
        if function in ("Fn::And", "Fn::Or"):
            deciding = function == "Fn::Or"  # the value that decides the whole
            parts = []
            for arg in args:
                part = self.simplify(arg)
                if part is deciding:
                    return deciding
                if part is not (not deciding):
                    parts.append(part)
            if not parts:
                return not deciding
            return parts[0] if len(parts) == 1 else {function: parts}
        raise QuickStartError(f"a condition function this generator cannot simplify: {function}")

    def remaining(self) -> dict[str, Any]:
        result = {}
        for name in self.definitions:
            value = self.of(name)
            if isinstance(value, bool) or self.name(name) != name:
                continue
            # a definition must be a function, not a bare reference to another condition
            result[name] = value if set(value) != {"Condition"} else {"Fn::And": [value, value]}
        return result


def _prune(node: Any, conditions: _Conditions, known: Mapping[str, bool] | None = None) -> Any:
    """`node` with every Fn::If the fixed values decide replaced by its branch; `known`: the
    conditions the enclosing Fn::If branches (or the resource's own Condition) have settled."""
    known = known or {}
    if isinstance(node, list):
        return [_prune(item, conditions, known) for item in node]
    if not isinstance(node, dict):
        return node
    if set(node) == {"Fn::If"}:
        name, when_true, when_false = node["Fn::If"]
        decided = conditions.name(name)
        if isinstance(decided, str):
            decided = known.get(decided, decided)
        if isinstance(decided, bool):
            return _prune(when_true if decided else when_false, conditions, known)
        return {
            "Fn::If": [
                decided,
                _prune(when_true, conditions, {**known, decided: True}),
                _prune(when_false, conditions, {**known, decided: False}),
            ]
        }
    return {key: _prune(value, conditions, known) for key, value in node.items()}


def _entities(entities: Mapping[str, Any], conditions: _Conditions) -> dict[str, Any]:
    """Resources or outputs: those whose condition the fixed values make false left out."""
    result: dict[str, Any] = {}
    for name, entity in entities.items():
        if name.startswith("Fn::ForEach::"):
            identifier, collection, body = entity
            result[name] = [identifier, collection, _entities(body, conditions)]
            continue
        decided = conditions.name(entity["Condition"]) if "Condition" in entity else True
        if decided is False:
            continue
        entity = {k: v for k, v in entity.items() if k != "Condition"}
        if decided is True:
            result[name] = _prune(entity, conditions)
        else:
            result[name] = {"Condition": decided, **_prune(entity, conditions, {decided: True})}
    return result


def reduce_template(template: Mapping[str, Any]) -> dict[str, Any]:
    """template.yaml (parsed, intrinsics in their long form) with only its first-deploy parameters."""
    kept = first_deploy_parameters(template)
    reducer = _Reducer(fixed_values(template, kept))
    conditions = _Conditions(reducer.node(template.get("Conditions", {})))
    result: dict[str, Any] = {}
    for section, body in template.items():
        if section == "Parameters":
            # in the group's order, which is the order `sam deploy --guided` asks them in
            result[section] = {n: copy.deepcopy(body[n]) for n in kept}
        elif section == "Rules":
            rules = _rules(body, reducer)
            if rules:
                result[section] = rules
        elif section == "Metadata":
            result[section] = _metadata(body, kept)
        elif section == "Description":
            result[section] = f"{body.strip()} Quick start: only the first-deploy parameters (template.yaml has all).\n"
        elif section == "Conditions":
            result[section] = _prune(conditions.remaining(), conditions)
        elif section in ("Resources", "Outputs"):
            result[section] = _entities(reducer.node(body), conditions)
        else:
            result[section] = _prune(reducer.node(body), conditions)
    if reducer.per_item:
        mappings = result.setdefault("Mappings", {})
        for suffix, values in sorted(reducer.per_item.items()):
            mappings[f"Fixed{suffix}"] = {item: {"Value": value} for item, value in values.items()}
    return result


def _metadata(metadata: Mapping[str, Any], kept: Sequence[str]) -> dict[str, Any]:
    result = copy.deepcopy(dict(metadata))
    interface = result["AWS::CloudFormation::Interface"]
    groups = []
    for group in interface["ParameterGroups"]:
        names = [n for n in group["Parameters"] if n in kept]
        if names:
            groups.append({**group, "Parameters": names})
    interface["ParameterGroups"] = groups
    return result


# --- YAML out ------------------------------------------------------------------------------
class _Dumper(yaml.SafeDumper):  # type: ignore[misc]  # PyYAML ships no type hints here
    pass


def _string(dumper: yaml.SafeDumper, text: str) -> yaml.Node:
    # the template's folded descriptions stay folded, its literal blocks (the dashboard) literal
    style = "|" if "\n" in text.rstrip("\n") else ">" if text.endswith("\n") else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", text, style=style)


_Dumper.add_representer(str, _string)


def _plain(node: Any) -> Any:
    """Plain dicts and lists throughout (a parser may hand back OrderedDicts), for the safe dumper."""
    if isinstance(node, dict):
        return {key: _plain(value) for key, value in node.items()}
    if isinstance(node, list):
        return [_plain(item) for item in node]
    return node


def render(template_text: str) -> str:
    from samtranslator.yaml_helper import yaml_parse

    reduced = _plain(reduce_template(yaml_parse(template_text)))
    body: str = yaml.dump(reduced, Dumper=_Dumper, sort_keys=False, width=120, allow_unicode=True)
    return HEADER + body


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--check", action="store_true", help="exit 1 when quickstart.yaml is out of date")
    args = parser.parse_args(argv)
    try:
        text = render(TEMPLATE.read_text())
    except QuickStartError as error:
        print(f"quickstart: {error}", file=sys.stderr)
        return 2
    current = QUICKSTART.read_text() if QUICKSTART.exists() else ""
    if args.check:
        if current != text:
            print(f"{QUICKSTART.name} is out of date: run make quickstart", file=sys.stderr)
            return 1
        return 0
    if current != text:
        QUICKSTART.write_text(text)
        print(f"wrote {QUICKSTART.relative_to(ROOT)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
