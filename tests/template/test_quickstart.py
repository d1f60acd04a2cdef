"""quickstart.yaml: template.yaml with only its first-deploy parameters, the same stack for them.

`sam deploy --guided` asks for every parameter of the template it deploys, so the default
samconfig environment builds quickstart.yaml, which devkit.quickstart writes from template.yaml
with every other parameter fixed at its default. These tests keep it current, small, clean under
the linters, and describing exactly the resources template.yaml describes for the same values.
"""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
from samtranslator.yaml_helper import yaml_parse

from devkit import quickstart
from tests.template.cfn import REQUIRED, ROOT, TEMPLATE, Resolved, expand, load, sam_transform_of, transform

BIN = Path(sys.executable).parent
QUICKSTART = ROOT / "quickstart.yaml"
MOST_PROMPTS = 12  # the budget for a first deploy's parameter prompts

# values of the kept parameters, as a first deployment might answer them
ANSWERS = {
    "required only": dict(REQUIRED),
    "everything answered": {
        **REQUIRED,
        "AdminScope": "shop/ops",
        "StaffScope": "shop/support",
        "OrderOwnerField": "customer.id",
        "OrderOwnerClaim": "email",
        "CorsAllowedOrigins": "https://shop.example.com",
        "CreatePagesHosting": "true",
        "AlarmEmail": "oncall@example.com",
    },
}


@pytest.fixture(autouse=True)
def _region(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")


def quick() -> dict[str, Any]:
    parsed: dict[str, Any] = yaml_parse(QUICKSTART.read_text())
    return parsed


def test_quickstart_is_what_make_quickstart_writes() -> None:
    assert QUICKSTART.read_text() == quickstart.render(TEMPLATE.read_text()), "run make quickstart"


def test_it_keeps_only_the_first_parameter_group() -> None:
    full = load()
    kept = quick()["Parameters"]
    first = full["Metadata"]["AWS::CloudFormation::Interface"]["ParameterGroups"][0]
    assert first["Label"]["default"] == "First deploy"
    assert list(kept) == first["Parameters"]
    assert len(kept) <= MOST_PROMPTS
    assert set(REQUIRED) <= set(kept)  # every parameter without a default is asked
    for name, spec in kept.items():
        assert spec == full["Parameters"][name], name
    groups = quick()["Metadata"]["AWS::CloudFormation::Interface"]["ParameterGroups"]
    assert [p for g in groups for p in g["Parameters"]] == list(kept)


@pytest.mark.parametrize("answers", sorted(ANSWERS))
def test_same_resources_and_outputs_as_template_yaml(answers: str) -> None:
    overrides = ANSWERS[answers]
    full = Resolved(overrides)
    reduced = Resolved(overrides, sam_transform_of(expand(quick()), overrides))

    def comparable(entities: dict[str, Any]) -> dict[str, Any]:
        # quickstart.yaml drops the conditions its fixed values settle; what exists is what counts.
        # SAM names ApiFunction's published version after the function's properties as written
        # (a Ref in one template, its value in the other), so moving a stack between the two
        # publishes a new version: the one logical id that differs.
        text = json.dumps({name: {k: v for k, v in e.items() if k != "Condition"} for name, e in entities.items()})
        result: dict[str, Any] = json.loads(re.sub(r"ApiFunctionVersion[0-9a-f]{10}", "ApiFunctionVersion", text))
        return result

    assert comparable(reduced.resources) == comparable(full.resources)
    assert comparable(reduced.outputs) == comparable(full.outputs)
    assert len(full.resources) > 40  # the whole stack, not an empty comparison


def test_a_parameter_without_default_outside_the_first_group_is_refused() -> None:
    template = copy.deepcopy(load())
    template["Parameters"]["LogLevel"].pop("Default")
    with pytest.raises(quickstart.QuickStartError, match="LogLevel has no default"):
        quickstart.reduce_template(template)


def test_defaults_that_break_a_rule_are_refused() -> None:
    template = copy.deepcopy(yaml_parse(TEMPLATE.read_text()))
    template["Parameters"]["PollerMode"]["Default"] = "PROVISIONED"
    template["Parameters"]["KafkaMaximumRetryAttempts"]["Default"] = "-1"
    template["Parameters"]["SkippedBatchesTopic"]["Default"] = "skipped"
    with pytest.raises(quickstart.QuickStartError, match="SkipSettingsNeedBoundedRetries"):
        quickstart.reduce_template(template)


def test_the_default_environment_builds_it_and_the_others_build_template_yaml() -> None:
    config = tomllib.loads((ROOT / "samconfig.toml").read_text())
    assert config["default"]["build"]["parameters"]["template_file"] == "quickstart.yaml"
    for environment in ("dev", "prod"):
        assert config[environment]["build"]["parameters"]["template_file"] == "template.yaml"
        # their overrides are parameters of the template they build
        overrides = config[environment]["deploy"]["parameters"]["parameter_overrides"].split()
        assert {o.split("=", 1)[0] for o in overrides} <= set(load()["Parameters"])
    overrides = config["default"]["deploy"]["parameters"].get("parameter_overrides", "").split()
    assert {o.split("=", 1)[0] for o in overrides} <= set(quick()["Parameters"])  # SAM drops any other


def test_sam_validate_lint_and_cfn_lint_are_clean() -> None:
    env = {**os.environ, "SAM_CLI_TELEMETRY": "0"}
    command = [str(BIN / "sam"), "validate", "--lint", "--template-file", str(QUICKSTART)]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=180, env=env)
    assert result.returncode == 0 and "is a valid SAM Template" in result.stdout + result.stderr, result.stdout
    result = subprocess.run([str(BIN / "cfn-lint"), str(QUICKSTART)], capture_output=True, text=True, timeout=180)
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout + result.stderr


def test_transform_of_the_full_template_still_takes_every_parameter() -> None:
    # the quick start fixes values; it takes nothing away from template.yaml
    assert len(transform(REQUIRED)["Parameters"]) == len(load()["Parameters"]) > MOST_PROMPTS
