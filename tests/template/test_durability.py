"""What docs/deploy.md says about ElastiCache durability in CloudFormation, checked against
the resource schemas cfn-lint carries (CloudFormation's own), and its example linted.

The template has no durability parameter because the only cache it creates is Serverless,
whose resource has no such property; node-based replication groups do. These tests fail
when that stops being true, or when the documented example stops being valid.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.template.cfn import ROOT, load

BIN = Path(sys.executable).parent
SECTION = "### Durability: acknowledged means replicated"


def _schema(resource_type: str) -> dict[str, Any]:
    from cfnlint.schema import PROVIDER_SCHEMA_MANAGER

    schema: dict[str, Any] = PROVIDER_SCHEMA_MANAGER.get_resource_schema("us-east-1", resource_type).schema
    return schema


def test_replication_groups_take_synchronous_durability_and_serverless_caches_do_not() -> None:
    durability = _schema("AWS::ElastiCache::ReplicationGroup")["properties"]["Durability"]
    allowed = {v.lower() for v in durability.get("enum", durability.get("enumCaseInsensitive", []))}
    assert {"sync", "async", "disabled"} <= allowed
    serverless = _schema("AWS::ElastiCache::ServerlessCache")["properties"]
    assert not [name for name in serverless if "durab" in name.lower()], "Serverless takes durability now: expose it"


def test_the_template_creates_only_a_serverless_cache() -> None:
    caches = {
        resource["Type"]
        for resource in load()["Resources"].values()
        if resource["Type"].startswith("AWS::ElastiCache::") and not resource["Type"].endswith(("User", "UserGroup"))
    }
    assert caches == {"AWS::ElastiCache::ServerlessCache"}, "a node-based cache in the template needs Durability"


def test_the_documented_replication_group_lints_clean(tmp_path: Path) -> None:
    page = (ROOT / "docs" / "deploy.md").read_text()
    section = page[page.index(SECTION) :]
    example = re.search(r"```yaml\n(.*?)```", section, re.DOTALL)
    assert example, "the durability section shows a replication group"
    text = example.group(1)
    assert re.search(r"^\s+Durability: sync\b", text, re.MULTILINE)
    template = tmp_path / "durable-cache.yaml"
    template.write_text('AWSTemplateFormatVersion: "2010-09-09"\n' + text)
    result = subprocess.run([str(BIN / "cfn-lint"), str(template)], capture_output=True, text=True, timeout=180)
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout + result.stderr
    # and a wrong value is caught, so the lint really checks the property
    template.write_text(template.read_text().replace("Durability: sync", "Durability: always"))
    wrong = subprocess.run([str(BIN / "cfn-lint"), str(template)], capture_output=True, text=True, timeout=180)
    assert wrong.returncode != 0 and "always" in wrong.stdout, wrong.stdout
