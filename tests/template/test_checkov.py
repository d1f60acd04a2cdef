"""Security scan with checkov: no failed check, every skip justified.

Both the SAM template as written and the CloudFormation the SAM transform makes
of it are scanned (the second sees the generated stage, permissions and API).

checkov pins an older boto3 than aws-sam-cli, so it runs from its own venv
(`make checkov-venv`, created here on first use).
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.template.cfn import REQUIRED, ROOT, TEMPLATE, transform

pytestmark = pytest.mark.slow

CHECKOV = ROOT / ".venv/checkov/bin/checkov"


@pytest.fixture(scope="module", params=["template", "quickstart", "transformed", "with-pages"])
def report(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    if not CHECKOV.exists():
        made = subprocess.run(
            ["make", "--no-print-directory", "checkov-venv"], cwd=ROOT, capture_output=True, text=True, timeout=900
        )
        assert made.returncode == 0, made.stdout[-2000:] + made.stderr[-2000:]
    target = ROOT / "quickstart.yaml" if request.param == "quickstart" else TEMPLATE
    if request.param in ("transformed", "with-pages"):
        os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
        target = tmp_path_factory.mktemp("checkov") / f"{request.param}.json"
        document = transform(REQUIRED)
        if request.param == "with-pages":  # checkov takes conditions from the parameters' defaults
            document["Parameters"]["CreatePagesHosting"]["Default"] = "true"
        target.write_text(json.dumps(document, indent=1))
    result = subprocess.run(
        [str(CHECKOV), "--skip-download", "--framework", "cloudformation", "-f", str(target), "-o", "json"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "BC_SKIP_MAPPING": "TRUE"},
    )
    assert result.stdout.strip(), result.stderr[-2000:]
    document = json.loads(result.stdout)
    reports = document if isinstance(document, list) else [document]
    (cloudformation,) = [r for r in reports if r.get("check_type") == "cloudformation"]
    cloudformation["scanned"] = target.name
    return cloudformation  # type: ignore[no-any-return]


def test_no_failed_checks(report: dict[str, Any]) -> None:
    failed = [(c["check_id"], c["resource"]) for c in report["results"]["failed_checks"]]
    assert failed == []
    assert report["summary"]["passed"] >= 30  # the scan really looked at the resources
    if report["scanned"] == "with-pages.json":  # and at the optional pages hosting
        looked_at = {c["resource"] for c in report["results"]["passed_checks"] + report["results"]["skipped_checks"]}
        assert {"AWS::S3::Bucket.PagesBucket", "AWS::CloudFront::Distribution.PagesDistribution"} <= looked_at


def test_every_skip_is_justified(report: dict[str, Any]) -> None:
    skipped = report["results"]["skipped_checks"]
    assert skipped, "the template documents its skips inline"
    for check in skipped:
        comment = (check.get("check_result") or {}).get("suppress_comment", "")
        assert len(comment) >= 40, f"{check['check_id']} on {check['resource']} needs a real justification"


def test_scan_covers_the_template_file(report: dict[str, Any]) -> None:
    files = {Path(c["file_path"]).name for c in report["results"]["passed_checks"]}
    assert files == {report["scanned"]}
